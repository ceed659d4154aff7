"""A quiet start for the command-line tools: TensorFlow's start-up chatter hidden, real problems still shown.

What a CPU-only machine prints on `import tensorflow` and the first device query (TF 2.21), and why:
- `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`: Abseil's C++ logging,
  which TensorFlow never initialises, announces itself (once per shared library that logs: twice).
- `I... port.cc] oneDNN custom operations are on...`, `I... cudart_stub.cc] Could not find cuda drivers...`,
  `I... cpu_feature_guard.cc] This TensorFlow binary is optimized...`: informational, once per library.
- `E... cuda_platform.cc] failed call to cuInit: ... UNKNOWN ERROR (303)`: the CUDA build of TensorFlow probing
  for a GPU on a machine without the NVIDIA driver. Reads like a failure, is none.
Because Abseil prints everything before its initialisation, `TF_CPP_MIN_LOG_LEVEL` no longer hides any of them.
So `quiet_start()` captures the C-level stderr while TensorFlow loads and probes its devices, then replays what
matters: with `TF_CPP_MIN_LOG_LEVEL` unset, every warning or error except the cuInit failure on a machine with
no NVIDIA driver; with it set to N, every line of level >= N (0 info, 1 warning, 2 error, 3 fatal), unfiltered.
Python warnings raised meanwhile are re-issued unchanged.

Call it first in a CLI's `__main__` (before anything imports TensorFlow): `startup.quiet_start()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from typing import Iterator

# Abseil / TensorFlow C++ log prefix: severity, MMDD, time (before absl init "00:00:<epoch>.us"), thread, file:line]
RECORD = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ ([\w.+-]+):\d+\]")
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def has_nvidia_driver() -> bool:
    """True if the NVIDIA kernel driver is loaded (then a cuInit failure is a real problem)."""
    return os.path.exists(NVIDIA_DRIVER)


def split_records(text: str) -> list[tuple[int | None, str, str]]:
    """(level, source file, text) per C++ log record; continuation lines stay with their record.

    Lines that are neither a record nor a continuation (anything before the first record) get level None.
    """
    records: list[tuple[int | None, str, str]] = []
    for line in text.splitlines(keepends=True):
        match = RECORD.match(line)
        if match:
            records.append((LEVELS[match.group(1)], match.group(2), line))
        elif line.startswith(ABSL_BANNER):
            records.append((0, "absl", line))  # about logging's set-up, not about the run: info
        elif records and records[-1][0] is not None and line.strip():
            level, source, previous = records[-1]
            records[-1] = (level, source, previous + line)
        else:
            records.append((None, "", line))
    return records


def is_expected_noise(level: int | None, source: str, text: str, driver: bool) -> bool:
    """The start-up lines of a healthy CPU-only machine: info records, and cuInit failing without a driver."""
    if level is None:
        return False
    if level == 0:
        return True
    return source == "cuda_platform.cc" and "failed call to cuInit" in text and not driver


def filter_startup_log(text: str, min_level: str | None, driver: bool) -> str:
    """What to show of the captured start-up stderr (see the module docstring for the policy)."""
    shown = []
    for level, source, record in split_records(text):
        if min_level is not None and min_level.strip().isdigit():
            keep = level is None or level >= int(min_level)
        else:
            keep = not is_expected_noise(level, source, record, driver)
        if keep:
            shown.append(record)
    return "".join(shown)


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (C and Python writes alike) to a temporary file; yields [captured text]."""
    result: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield result
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            result.append(capture.read().decode("utf-8", errors="replace"))


def quiet_start() -> None:
    """Import TensorFlow and probe its devices with the start-up chatter filtered; real warnings still print.

    Must run before anything else imports TensorFlow (afterwards it only probes the devices, uncaptured
    chatter having already printed). Safe to call twice.
    """
    min_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    with warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("default")
        try:
            with captured_stderr() as captured:
                import tensorflow as tf

                tf.config.list_physical_devices()  # the device probe (cuInit) happens here, still captured
        except BaseException:
            sys.stderr.write("".join(captured))  # a failing import: show everything it said
            raise
    sys.stderr.write(filter_startup_log("".join(captured), min_level, has_nvidia_driver()))
    sys.stderr.flush()
    for w in python_warnings:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    quiet_tensorflow_python_logger(tf.get_logger(), min_level)
    if min_level is None:
        hide_checkpoint_chatter()


def quiet_tensorflow_python_logger(logger, min_level: str | None) -> None:
    """One copy of each TensorFlow Python log line, in absl's format; its info chatter only when asked.

    TensorFlow gives its "tensorflow" logger a handler of its own when it is imported before absl installs
    one, so every line printed twice ("INFO:tensorflow:..." and absl's). Its info lines are implementation
    detail (each MirroredStrategy reduction, "Assets written"); the device line this package logs replaces them.
    """
    import logging as python_logging

    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    if min_level is None:
        logger.setLevel(python_logging.WARNING)


def is_not_checkpoint_chatter(record) -> bool:
    """logging filter: False for TensorFlow's 'Sharding callback duration' info line, logged at every save."""
    return not (record.levelno <= 20 and str(record.msg).startswith("Sharding callback duration"))


def hide_checkpoint_chatter() -> None:
    """Drop TensorFlow's per-checkpoint info line (functional_saver.py, absl logging) from the log."""
    from absl import logging

    logger = logging.get_absl_logger()
    if is_not_checkpoint_chatter not in logger.filters:
        logger.addFilter(is_not_checkpoint_chatter)


def short_device_name(name: str) -> str:
    """'/job:localhost/replica:0/task:0/device:CPU:0' -> 'CPU:0'."""
    return name.split("device:")[-1]


def describe_devices() -> str:
    """The visible devices in one phrase, e.g. 'CPU:0, GPU:0 (NVIDIA H200)'."""
    import tensorflow as tf

    parts = []
    for device in tf.config.list_physical_devices():
        name = short_device_name(device.name)
        if device.device_type == "GPU":
            details = tf.config.experimental.get_device_details(device)
            name += f" ({details['device_name']})" if details.get("device_name") else ""
        parts.append(name)
    return ", ".join(parts)


def strategy_devices(strategy) -> list[str]:
    """The devices a tf.distribute strategy computes on (the default strategy: TensorFlow's first GPU, or CPU:0)."""
    import tensorflow as tf

    try:
        return [short_device_name(d) for d in strategy.extended.worker_devices]
    except RuntimeError:  # the default strategy has no device list: ops go to GPU:0 if there is one
        gpus = tf.config.list_logical_devices("GPU")
        return [short_device_name(gpus[0].name) if gpus else "CPU:0"]


def describe_strategy(strategy) -> str:
    """One line for the log: the strategy, its replicas and devices, and what the machine has."""
    return (f"Strategy {type(strategy).__name__.lstrip('_')} with {strategy.num_replicas_in_sync} replica(s) on "
            f"{', '.join(strategy_devices(strategy))} (devices: {describe_devices()}).")


def log_devices() -> None:
    """Log the one line saying which devices a CLI without a distribution strategy runs on."""
    from absl import logging

    logging.info("Running on %s (no tf.distribute strategy: TensorFlow places ops on GPU:0 if there is one).",
                 describe_devices())
