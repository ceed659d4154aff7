"""A development server speaking TensorFlow Serving's protocols, for any SavedModel, on machines without TF Serving.

`python -m serving.dev_server --model_base_path=BASE --model_name=NAME` (flags: `cli.py`). It serves versions the
way tensorflow_model_server does, in the same layout:

  * versions.py: version management. `<base_path>/<integer>/` folders are versions (other names are ignored) and
    the latest is served; the base path is polled; a version is loaded with TF Serving's session-based loader
    (tf.compat.v1 Session + saved_model loader, signatures run by their SignatureDef tensor names) and its
    `assets.extra/tf_serving_warmup_requests` are replayed before it replaces the served one; if it fails to load
    or warm up, the old version keeps serving and the load is retried as TF Serving retries it.
  * predict.py and handlers.py: request handling with TF Serving's checks, status codes (NOT_FOUND,
    FAILED_PRECONDITION, INVALID_ARGUMENT) and messages; tensors.py and json_tensor.py: decoding TensorProtos and
    REST bodies, every declared size checked before anything is allocated; batching.py: `--enable_batching`.
  * grpc_frontend.py (PredictionService Predict and GetModelMetadata, ModelService GetModelStatus) and
    rest_frontend.py (`GET /v1/models/NAME[/versions/N][/metadata]`, `POST ...:predict`), each with its limits.
  * config.py: models.config and the batching parameters file, as tensorflow_model_server reads them.

Differences from tensorflow_model_server, all deliberate: it binds 127.0.0.1 unless `--host` says otherwise;
without batching, requests over `--max_batch_size` are refused with TF Serving's batching message (scalar inputs
named by `--batch_size_inputs` count as a batch size); a wrong input shape is reported before the graph runs; a
TensorProto must carry exactly one value per element. See docs/serving.md.

Embedding it (tests, benchmarks): `ModelServer([ServedModel(name, base_path, max_batch_size)])`, `poll_all()`, then
`start_grpc_server(core, host, port, threads, max_message_mb)` and/or `start_rest_server(core, host, port)`.
"""

from serving.dev_server.config import BatchingParameters, read_batching_parameters, read_max_batch_size, \
    read_model_config
from serving.dev_server.grpc_frontend import start_grpc_server
from serving.dev_server.handlers import ModelServer
from serving.dev_server.rest_frontend import start_rest_server
from serving.dev_server.versions import ServedModel
