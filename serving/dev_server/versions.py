"""Version management as TF Serving does it: load a version with the session-based loader, warm it up, swap it in.

A version is loaded like TF Serving's C++ `LoadSavedModel`: the `serve` MetaGraph is imported into a fresh graph
and a `tf.compat.v1.Session`, its saver restores the variables, its init op runs, and every request runs a
signature by the SignatureDef's tensor names (`Session.run(outputs[k].name, {inputs[k].name: value})`). So an
export that TF Serving cannot run fails here too. `assets.extra/tf_serving_warmup_requests` is replayed before a
version is served; a version that fails to load or to warm up is not served and the previous one stays
(TF Serving's availability-preserving policy).
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
import threading
import time
from typing import Callable

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from serving.dev_server.batching import SignatureBatcher
from serving.dev_server.config import BatchingParameters
from serving.dev_server.errors import ServingError, from_op_error

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
# TF Serving's defaults for --max_num_load_retries (retries after the first failure) and
# --load_retry_interval_micros (between retries): tensorflow_serving/model_servers/server.h (Options) and
# main.cc, also core/basic_manager.h; the retry loop is util/retrier.cc (tensorflow/serving at 9d981c5).
DEFAULT_MAX_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_S = 60.0
_MAX_FINGERPRINT_FILES = 10_000  # a version folder is a SavedModel: a few files, rarely more than a hundred
State = get_model_status_pb2.ModelVersionStatus.State
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass
class LoadedVersion:
    """A version loaded for serving: its session, its signature defs and (with batching) one batcher per signature."""

    name: str
    version: int
    path: str
    session: tf.compat.v1.Session
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    batching: BatchingParameters | None = None
    _batchers: dict[str, SignatureBatcher] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _unloaded: bool = False

    def run(self, signature_name: str, inputs: Arrays) -> Arrays:
        """All outputs of a signature for the inputs (merged with concurrent requests when batching is on)."""
        batcher = self._batcher(signature_name) if self.batching is not None else None
        if batcher is None:
            return self.run_session(signature_name, inputs)
        return batcher.run(inputs)

    def run_session(self, signature_name: str, inputs: Arrays) -> Arrays:
        """One Session.run by the SignatureDef's tensor names, as TF Serving runs a request."""
        signature = self.signature_defs[signature_name]
        fetches = {alias: info.name for alias, info in signature.outputs.items()}
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        try:
            return self.session.run(fetches, feeds)
        except tf.errors.OpError as e:
            raise from_op_error(e) from None

    def _batcher(self, signature_name: str) -> SignatureBatcher | None:
        """The signature's batcher, started on first use (None once unloaded: then requests run alone)."""
        with self._lock:
            if self._unloaded:
                return None
            if signature_name not in self._batchers:
                self._batchers[signature_name] = SignatureBatcher(
                    lambda inputs: self.run_session(signature_name, inputs), self.batching,
                    f"{self.name}-{self.version}-{signature_name}")
            return self._batchers[signature_name]

    def batching_stats(self) -> dict[str, dict[str, int]]:
        """Per batched signature: merged runs and request rows so far (empty without batching)."""
        with self._lock:
            return {name: batcher.stats() for name, batcher in self._batchers.items()}

    def unload(self) -> None:
        """Stop the batchers (queued requests still finish); the session closes when the last request lets go."""
        with self._lock:
            self._unloaded = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()


def load_version(name: str, version: int, path: str, batching: BatchingParameters | None = None) -> LoadedVersion:
    """Load one version folder with the session-based loader (raises on a missing or broken SavedModel)."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    tf_logger = tf.get_logger()
    level = tf_logger.level
    # TF marks this loader deprecated (for TF2 Python users); it is the loader TF Serving runs, so no notice.
    tf_logger.setLevel(py_logging.ERROR)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], path)
    except BaseException:
        session.close()
        raise
    finally:
        tf_logger.setLevel(level)
    graph.finalize()  # like a served graph: nothing may add ops to it any more
    return LoadedVersion(name, version, path, session, dict(meta_graph.signature_def), batching)


def warm_up(served: LoadedVersion, run_predict: Callable[[LoadedVersion, object], object]) -> int:
    """Replay the version's TF Serving warm-up requests (Predict only) with `run_predict`; returns how many ran."""
    path = os.path.join(served.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: only predict_log warmup records are supported, got "
                             f"{log.WhichOneof('log_type')}")
        run_predict(served, log.predict_log.request)
        count += 1
    return count


@dataclasses.dataclass
class VersionStatus:
    """A version's state as GetModelStatus reports it."""

    state: int
    error_code: int = 0
    error_message: str = ""


def folder_fingerprint(path: str) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of the files under `path`: it changes while a copy is still writing them."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError:  # removed while we walked: the folder is still changing
                continue
            entries.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
            if len(entries) >= _MAX_FINGERPRINT_FILES:
                return tuple(sorted(entries))
    return tuple(sorted(entries))


@dataclasses.dataclass
class _Failure:
    """A version that failed to load: when, how often it was retried, and its files at the last attempt."""

    at: float
    retries: int
    fingerprint: tuple
    seen: tuple  # the files at the latest poll (a retry after a change waits until they stop changing)


class ServedModel:
    """One model name: its base path, the served version and the states of all versions seen.

    A version that fails to load is retried like TF Serving does (`max_load_retries` times,
    `load_retry_interval_s` apart) and, beyond TF Serving, again whenever its files changed and then stayed
    unchanged for one poll: a version copied into the base path non-atomically fails while the copy runs and is
    served once it is complete, without a restart.
    """

    def __init__(self, name: str, base_path: str, max_batch_size: int = 0,
                 batching: BatchingParameters | None = None, max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
                 load_retry_interval_s: float = DEFAULT_LOAD_RETRY_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, batch_size_inputs: tuple[str, ...] = ()):
        self.name = name
        self.base_path = os.path.abspath(base_path)
        self.batching = batching
        # With batching, the batching parameters' max_batch_size is the cap (as in TF Serving).
        self.max_batch_size = batching.max_batch_size if batching is not None else max_batch_size
        self.batch_size_inputs = tuple(batch_size_inputs)  # scalar inputs whose value the cap holds too
        self.max_load_retries = max_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._current: LoadedVersion | None = None
        self._statuses: dict[int, VersionStatus] = {}
        self._failures: dict[int, _Failure] = {}
        self._warned_empty = False

    @property
    def current(self) -> LoadedVersion | None:
        """The version now served (None before the first load)."""
        with self._lock:
            return self._current

    def versions_on_disk(self) -> list[int]:
        """Integer version folders under the base path (temporary/non-numeric names are ignored)."""
        try:
            names = os.listdir(self.base_path)
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(self.base_path, n)))

    def poll(self, run_predict: Callable[[LoadedVersion, object], object]) -> None:
        """Serve the latest version on disk if it is not served yet (load, warm up with run_predict, swap)."""
        with self._load_lock:  # one load at a time per model
            versions = self.versions_on_disk()
            if not versions:
                if not self._warned_empty:
                    logging.warning("No versions of servable %s found under base path %s", self.name,
                                    self.base_path)
                    self._warned_empty = True
                return
            self._warned_empty = False
            target = versions[-1]
            current = self.current
            if current is not None and current.version == target:
                return
            failure = self._failures.get(target)
            if failure is not None and not self._retry_now(target, failure):
                return
            self._load_and_swap(target, run_predict)

    def _retry_now(self, version: int, failure: _Failure) -> bool:
        """Whether a version that failed should be loaded again at this poll."""
        files = folder_fingerprint(os.path.join(self.base_path, str(version)))
        changed, settled = files != failure.fingerprint, files == failure.seen
        failure.seen = files
        if changed:  # a new attempt once the files stopped changing, with a fresh count of retries
            if settled:
                failure.retries = 0
                logging.info("Version %d of %s changed on disk since it failed to load: loading it again.",
                             version, self.name)
            return settled
        if failure.retries >= self.max_load_retries or self._clock() - failure.at < self.load_retry_interval_s:
            return False
        failure.retries += 1
        logging.info("Retrying the load of version %d of %s (retry %d of %d).", version, self.name,
                     failure.retries, self.max_load_retries)
        return True

    def _load_and_swap(self, version: int, run_predict: Callable[[LoadedVersion, object], object]) -> None:
        """Load `version`; on success make it the served one, on failure keep serving the old one."""
        path = os.path.join(self.base_path, str(version))
        files = folder_fingerprint(path)
        self._set_status(version, VersionStatus(State.LOADING))
        start = time.monotonic()
        loaded = None
        try:
            loaded = load_version(self.name, version, path, self.batching)
            warmups = warm_up(loaded, run_predict)
        except Exception as e:  # any failure to load or warm up must leave the served version alone
            if loaded is not None:
                loaded.unload()
            if isinstance(e, ServingError):  # a warm-up request failed: its status, as TF Serving reports it
                code, message = e.code.value[0], f"{e.code.name}: {e.message}"
            else:
                code, message = getattr(e, "error_code", grpc.StatusCode.UNKNOWN.value[0]), f"{type(e).__name__}: {e}"
            # GetModelStatus shows END with the error after each failed attempt (TF Serving shows LOADING until
            # its retries are spent): a client polling the status sees every failure as it happens.
            self._set_status(version, VersionStatus(State.END, code, message))
            previous = self._failures.get(version)
            retries = previous.retries if previous is not None and previous.fingerprint == files else 0
            self._failures[version] = _Failure(self._clock(), retries, files, files)
            old = self.current
            logging.error("Loading version %d of %s from %s failed (%d of %d retries used): %s. %s", version, self.name,
                          path, retries, self.max_load_retries, e,
                          f"Still serving version {old.version}." if old else "No version is served.")
            return
        self._failures.pop(version, None)
        with self._lock:
            old, self._current = self._current, loaded
            self._statuses[version] = VersionStatus(State.AVAILABLE)
            if old is not None:
                self._statuses[old.version] = VersionStatus(State.END)
        if old is not None:
            old.unload()  # requests already running on it finish; new ones go to the new version
        logging.info("Serving version %d of %s (loaded in %.2f s, %d warmup requests)%s.", version, self.name,
                     time.monotonic() - start, warmups, f"; unloaded version {old.version}" if old else "")

    def _set_status(self, version: int, status: VersionStatus) -> None:
        """Record a version's state."""
        with self._lock:
            self._statuses[version] = status

    def statuses(self) -> list[tuple[int, VersionStatus]]:
        """All versions seen, newest first (TF Serving's order)."""
        with self._lock:
            return sorted(self._statuses.items(), reverse=True)
