"""The development server's command line (`python -m serving.dev_server`), with tensorflow_model_server's flags.

    python -m serving.dev_server --model_base_path=BASE --model_name=NAME --port=8500 [--rest_port=8501]
    python -m serving.dev_server --model_config_file=models.config --enable_batching \
        --batching_parameters_file=batching_parameters.txt

A launcher (this package's `__main__`, or a project's own with its defaults, e.g. its model name) calls
`define_flags(...)`, `flags.adopt_module_key_flags(cli)` (so that `--help` lists them) and `app.run(cli.main)`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from typing import Sequence

import tensorflow as tf
from absl import app, flags, logging

from serving.dev_server.config import BatchingParameters, read_batching_parameters, read_model_config
from serving.dev_server.grpc_frontend import DEFAULT_MAX_MESSAGE_MB, start_grpc_server
from serving.dev_server.handlers import ModelServer
from serving.dev_server.rest_frontend import DEFAULT_MAX_BODY_MB, DEFAULT_READ_TIMEOUT_S, start_rest_server
from serving.dev_server.versions import DEFAULT_LOAD_RETRY_INTERVAL_S, DEFAULT_MAX_LOAD_RETRIES, ServedModel

FLAGS = flags.FLAGS


def define_flags(model_name: str = "default", batch_size_inputs: Sequence[str] = ()) -> None:
    """The server's flags (names follow tensorflow_model_server where it has the same option; its default model
    name is "default")."""
    flags.DEFINE_string("model_name", model_name, "Name clients use in ModelSpec.name.")
    flags.DEFINE_string("model_base_path", None, "Export base path holding <version>/ SavedModel folders.")
    flags.DEFINE_string("model_config_file", None,
                        "TF Serving models.config (instead of --model_name/--model_base_path).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server to the network.")
    flags.DEFINE_integer("port", 8500, "gRPC port (0 = any free port, see --ready_file).")
    flags.DEFINE_integer("rest_port", 0, "REST port (TF Serving's --rest_api_port); 0 = no REST server.")
    flags.DEFINE_alias("rest_api_port", "rest_port")
    flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "Seconds between polls of the base path for versions.")
    flags.DEFINE_integer("max_num_load_retries", DEFAULT_MAX_LOAD_RETRIES,
                         "Times a version that failed to load is retried (TF Serving's flag and default); a version "
                         "whose files change after failing is loaded again once they stop changing.", lower_bound=0)
    flags.DEFINE_integer("load_retry_interval_micros", int(DEFAULT_LOAD_RETRY_INTERVAL_S * 1e6),
                         "Microseconds between those retries (TF Serving's flag and default, 1 minute).",
                         lower_bound=0)
    flags.DEFINE_integer("max_batch_size", 1024, "Without batching: largest batch accepted (the leading dimension of "
                         "any input, or the value of a --batch_size_inputs input); 0 = no cap.", lower_bound=0)
    flags.DEFINE_list("batch_size_inputs", list(batch_size_inputs),
                      "Names of scalar integer inputs whose value is a number of rows the signature makes (e.g. a "
                      "count of samples): such a value is held to the batch cap like a leading dimension.")
    flags.DEFINE_bool("enable_batching", False, "Merge concurrent requests into batches like TF Serving's flag of "
                      "the same name (parameters from --batching_parameters_file, else TF Serving's defaults).")
    flags.DEFINE_string("batching_parameters_file", None,
                        "TF Serving BatchingParameters text file; without --enable_batching only its max_batch_size "
                        "is used, as the cap.")
    flags.DEFINE_integer("rest_max_body_mb", DEFAULT_MAX_BODY_MB,
                         "Largest REST request body in MiB; a larger Content-Length is answered 413 before the body "
                         "is read.", lower_bound=1)
    flags.DEFINE_float("rest_read_timeout_seconds", DEFAULT_READ_TIMEOUT_S,
                       "Seconds a REST client has to send a whole request (and to take its reply); slower or idle "
                       "connections are closed.", lower_bound=0.001)
    flags.DEFINE_integer("grpc_threads", 8, "gRPC worker threads.")
    flags.DEFINE_integer("max_message_mb", DEFAULT_MAX_MESSAGE_MB, "gRPC message size limit in MiB.")
    flags.DEFINE_bool("enable_serialization_as_tensor_content", False,
                      "Send outputs as packed tensor_content (faster) instead of typed value fields.")
    flags.DEFINE_string("ready_file", None, "Write {\"grpc_port\", \"rest_port\", \"pid\"} here once serving.")


def write_ready_file(path: str, payload: dict[str, int]) -> None:
    """Write the ready file atomically (a watcher never reads a half-written one)."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".ready-", delete=False) as f:
        json.dump(payload, f)
    os.replace(f.name, path)


def main(argv: list[str]) -> None:
    """Start serving and poll for new versions until SIGINT/SIGTERM."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if bool(FLAGS.model_base_path) == bool(FLAGS.model_config_file):
        raise app.UsageError("pass exactly one of --model_base_path (with --model_name) or --model_config_file")
    try:
        batching = read_batching_parameters(FLAGS.batching_parameters_file) if FLAGS.batching_parameters_file \
            else BatchingParameters()
        specs = read_model_config(FLAGS.model_config_file) if FLAGS.model_config_file else \
            [(FLAGS.model_name, FLAGS.model_base_path)]
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    cap = batching.max_batch_size if FLAGS.batching_parameters_file or FLAGS.enable_batching else FLAGS.max_batch_size
    core = ModelServer([ServedModel(name, base, cap, batching if FLAGS.enable_batching else None,
                                    max_load_retries=FLAGS.max_num_load_retries,
                                    load_retry_interval_s=FLAGS.load_retry_interval_micros / 1e6,
                                    batch_size_inputs=tuple(FLAGS.batch_size_inputs))
                        for name, base in specs], as_content=FLAGS.enable_serialization_as_tensor_content)
    logging.info("TensorFlow devices: %s", ", ".join(d.name for d in tf.config.list_logical_devices()))
    core.poll_all()  # like TF Serving: try to load what is there before accepting requests
    try:
        grpc_server, grpc_port = start_grpc_server(core, FLAGS.host, FLAGS.port, FLAGS.grpc_threads,
                                                   FLAGS.max_message_mb)
        rest_server, rest_port = start_rest_server(
            core, FLAGS.host, FLAGS.rest_port, FLAGS.rest_max_body_mb, FLAGS.rest_read_timeout_seconds) \
            if FLAGS.rest_port else (None, 0)
    except OSError as e:
        sys.exit(f"error: {e}")
    logging.info("Serving %s over gRPC on %s:%d%s (max batch %s%s).", ", ".join(core.models), FLAGS.host,
                 grpc_port, f", REST on {FLAGS.host}:{rest_port}" if rest_port else "", cap or "unlimited",
                 f"; batching {batching}" if FLAGS.enable_batching else "")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if FLAGS.ready_file:
        write_ready_file(FLAGS.ready_file, {"grpc_port": grpc_port, "rest_port": rest_port, "pid": os.getpid()})
    while not stop.wait(FLAGS.file_system_poll_wait_seconds):
        core.poll_all()
    logging.info("Shutting down.")
    if rest_server is not None:
        rest_server.shutdown()
    grpc_server.stop(grace=2).wait()
