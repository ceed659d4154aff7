"""A local server speaking TensorFlow Serving's protocol, for development, tests and machines without TF Serving.

    python -m serving.local_server --model_base_path=exports/dcgan --model_name=dcgan --port=8500 [--rest_port=8501]
    python -m serving.local_server ... --enable_batching --batching_parameters_file=serving/batching_parameters.txt

It serves versions the way tensorflow_model_server does, in the same layout:

  * serving/versions.py: version management. `<base_path>/<integer>/` folders are versions (other names are
    ignored) and the latest is served; the base path is polled (`--file_system_poll_wait_seconds`); a version is
    loaded with TF Serving's session-based loader (tf.compat.v1 Session + saved_model loader, signatures run by
    their SignatureDef tensor names) and its `assets.extra/tf_serving_warmup_requests` are replayed before it
    replaces the served one; if it fails to load or warm up, the old version keeps serving.
  * serving/predict.py and serving/handlers.py: request handling with TF Serving's checks, status codes
    (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT) and messages; serving/batching.py: `--enable_batching`.
  * serving/grpc_frontend.py (PredictionService Predict and GetModelMetadata, ModelService GetModelStatus) and
    serving/rest_frontend.py (`GET /v1/models/NAME[/versions/N][/metadata]`, `POST ...:predict`).
  * serving/config.py: models.config and the batching parameters file, as tensorflow_model_server reads them.

Differences from tensorflow_model_server, all deliberate: it binds 127.0.0.1 unless `--host` says otherwise;
without batching, requests over `--max_batch_size` are refused with TF Serving's batching error and a scalar int
input named `num_images` counts as the batch size (so the DCGAN `sample` signature is capped too); a wrong input
shape is reported before the graph runs. See docs/serving.md.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import json
import os
import signal
import sys
import threading

from absl import app, flags, logging

from dcgan_tf import startup
from dcgan_tf.files import atomic_write
from serving.config import BatchingParameters, read_batching_parameters, read_max_batch_size, read_model_config
from serving.errors import ServingError
from serving.grpc_frontend import DEFAULT_MAX_MESSAGE_MB, grpc_options, start_grpc_server
from serving.handlers import ModelServer
from serving.rest_frontend import DEFAULT_MAX_BODY_MB, DEFAULT_READ_TIMEOUT_S, start_rest_server
from serving.versions import DEFAULT_LOAD_RETRY_INTERVAL_S, DEFAULT_MAX_LOAD_RETRIES, LoadedVersion, ServedModel, \
    load_version

# The names other modules and older callers import from here.
__all__ = ["BatchingParameters", "LoadedVersion", "ModelServer", "ServedModel", "ServingError", "grpc_options",
           "load_version", "read_batching_parameters", "read_max_batch_size", "read_model_config",
           "start_grpc_server", "start_rest_server"]

# ---------------------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The server's flags (names follow tensorflow_model_server where it has the same option)."""
    flags.DEFINE_string("model_name", "dcgan", "Name clients use in ModelSpec.name.")
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
    flags.DEFINE_integer("max_batch_size", 1024, "Without batching: largest batch (or num_images) accepted; 0 = no "
                         "cap.")
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


def _write_ready_file(path: str, payload: dict[str, int]) -> None:
    """Atomically write the ready file."""
    with atomic_write(path) as f:
        json.dump(payload, f)


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
                                    load_retry_interval_s=FLAGS.load_retry_interval_micros / 1e6)
                        for name, base in specs], as_content=FLAGS.enable_serialization_as_tensor_content)
    startup.log_devices()
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
        _write_ready_file(FLAGS.ready_file, {"grpc_port": grpc_port, "rest_port": rest_port, "pid": os.getpid()})
    while not stop.wait(FLAGS.file_system_poll_wait_seconds):
        core.poll_all()
    logging.info("Shutting down.")
    if rest_server is not None:
        rest_server.shutdown()
    grpc_server.stop(grace=2).wait()


if __name__ == "__main__":
    define_flags()
    app.run(main)
