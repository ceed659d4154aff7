"""Request batching like tensorflow_model_server's `--enable_batching` (BatchingSession + BasicBatchScheduler).

Concurrent requests on one signature are merged into one session run of up to `max_batch_size` rows: a batch is
closed when it is full, or when `batch_timeout_micros` have passed since its first request and a batch thread is
free (while every thread is busy the open batch keeps filling, as in TF Serving). The merged inputs are
concatenated along the leading dimension, padded up to the next `allowed_batch_sizes` entry by repeating the first
row, run once, and the outputs are split back. As in TF Serving, every input must have a leading batch dimension
(scalar inputs fail with its message), a request over `max_batch_size` is refused, and a runtime error of the
merged run (e.g. an assertion in the graph on one request's input) fails every request of that batch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Callable

import grpc
import numpy as np
from absl import logging

from serving.dev_server.config import BatchingParameters
from serving.dev_server.errors import ServingError, invalid

Arrays = dict[str, np.ndarray]
_POLL_S = 0.002  # how often a timed-out open batch checks for a free thread


@dataclasses.dataclass
class _Task:
    """One request waiting for its slice of a batch."""

    inputs: Arrays
    size: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: BaseException | None = None


def task_size(inputs: Arrays, max_batch_size: int) -> int:
    """The request's batch size, with TF Serving's errors for inputs that cannot be batched."""
    if any(np.ndim(a) == 0 for a in inputs.values()):
        raise invalid("Batching session Run() input tensors must have at least one dimension")
    sizes = {int(np.shape(a)[0]) for a in inputs.values()}
    if len(sizes) != 1:
        raise invalid("Batching session Run() calls must have the same 0th-dimension size for all input tensors; "
                      f"got {sorted(sizes)}")
    size = sizes.pop()
    if size > max_batch_size:
        raise invalid(f"Task size {size} is larger than maximum input batch size {max_batch_size}")
    return size


def _padded_size(size: int, allowed: tuple[int, ...]) -> int:
    """The smallest allowed batch size >= size (size itself when none are configured)."""
    return next((a for a in allowed if a >= size), size)


class SignatureBatcher:
    """Merges concurrent runs of one signature; `run(inputs)` blocks until the request's rows are computed."""

    def __init__(self, run_batch: Callable[[Arrays], Arrays], params: BatchingParameters, name: str):
        self._run_batch = run_batch
        self._params = params
        self._name = name
        self._incoming: queue.Queue[_Task | None] = queue.Queue()
        self._batches: queue.Queue[list[_Task] | None] = queue.Queue()
        self._idle = threading.Semaphore(params.num_batch_threads)
        self._pending = 0  # rows waiting in _incoming, bounded by max_enqueued_batches * max_batch_size
        self._lock = threading.Lock()
        self._stopped = False
        self._runs = 0  # merged runs and the rows they computed (for measurements)
        self._rows = 0
        self._threads = [threading.Thread(target=self._collect, name=f"batch-collect-{name}", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True)
                          for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, inputs: Arrays) -> Arrays:
        """Queue the request, wait for its batch, return its own rows of the outputs."""
        task = _Task(inputs, task_size(inputs, self._params.max_batch_size))
        # The stopped check and the put happen under the lock stop() takes to queue its end marker, so a task is
        # either queued before the marker (and the collector, which drains the queue up to it, runs it) or sees
        # the batcher stopped: no task can land behind the marker and wait forever.
        with self._lock:
            stopped = self._stopped
            if not stopped:
                if self._pending + task.size > self._params.max_enqueued_batches * self._params.max_batch_size:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                self._pending += task.size
                self._incoming.put(task)  # unbounded queue: never blocks while holding the lock
        if stopped:  # a request that raced with the unload of its version: run it alone, do not fail it
            return self._run_batch(inputs)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def stats(self) -> dict[str, int]:
        """{"runs": merged session runs so far, "rows": request rows they computed}."""
        with self._lock:
            return {"runs": self._runs, "rows": self._rows}

    def stop(self) -> None:
        """Finish the queued requests, then end the threads (called when the version is unloaded)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._incoming.put(None)  # under the lock: after every task run() queued, before none

    def _next_batch(self, first: _Task) -> tuple[list[_Task], _Task | None, bool]:
        """(batch, the task that did not fit, stop seen) for the batch opened by `first`; holds a free thread."""
        batch, size, carry, stop = [first], first.size, None, False
        deadline = time.monotonic() + self._params.batch_timeout_micros / 1e6
        have_thread = False
        while size < self._params.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self._idle.acquire(blocking=False):
                have_thread = True
                break
            try:
                task = self._incoming.get(timeout=remaining if remaining > 0 else _POLL_S)
            except queue.Empty:
                continue
            if task is None:
                stop = True
                break
            if size + task.size > self._params.max_batch_size:
                carry = task
                break
            batch.append(task)
            size += task.size
        if not have_thread:
            self._idle.acquire()
        return batch, carry, stop

    def _collect(self) -> None:
        """Form batches from the incoming requests and hand them to the batch threads."""
        carry, stop = None, False
        while not stop or carry is not None:
            first = carry if carry is not None else self._incoming.get()
            if first is None:
                break
            batch, carry, stop = self._next_batch(first)
            with self._lock:
                self._pending -= sum(t.size for t in batch)
            self._batches.put(batch)
        for _ in range(self._params.num_batch_threads):
            self._batches.put(None)

    def _work(self) -> None:
        """Run batches until stopped."""
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            try:
                self._process(batch)
            finally:
                self._idle.release()

    def _process(self, batch: list[_Task]) -> None:
        """One merged run; every task gets its rows or the run's error."""
        try:
            size = sum(t.size for t in batch)
            padded = _padded_size(size, self._params.allowed_batch_sizes)
            inputs = {}
            for key in batch[0].inputs:
                merged = np.concatenate([t.inputs[key] for t in batch])
                if padded > size:
                    merged = np.concatenate([merged, np.repeat(merged[:1], padded - size, axis=0)])
                inputs[key] = merged
            outputs = self._run_batch(inputs)
            with self._lock:
                self._runs += 1
                self._rows += size
            for key, value in outputs.items():
                if np.ndim(value) == 0 or np.shape(value)[0] != padded:
                    raise ServingError(grpc.StatusCode.INTERNAL,
                                       f"Batched output tensor {key} has shape {list(np.shape(value))}: its 0th "
                                       f"dimension does not equal the batch size {padded}")
            start = 0
            for task in batch:
                task.outputs = {k: v[start:start + task.size] for k, v in outputs.items()}
                start += task.size
        except BaseException as e:  # the merged run's error is every request's error
            if not isinstance(e, ServingError):
                logging.debug("Batch of %d requests on %s failed: %s", len(batch), self._name, e)
            for task in batch:
                task.error = e
        finally:
            for task in batch:
                task.done.set()
