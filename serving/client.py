"""gRPC client for the DCGAN generator behind TF Serving (or serving.local_server, which speaks the same protocol).

    python -m serving.client --server=localhost:8500 --model=dcgan --num_images=64 --seed=0 --output=samples.png
    python -m serving.client --server=localhost:8500 --z_file=z.npy --output=from_z.png
    python -m serving.client --server=localhost:8500 --seeds=3,7,11 --output=seeds.png
    python -m serving.client --server=localhost:8500 --metadata

Library use (e.g. from the experiments):

    stub = client.make_stub("localhost:8500")
    images = client.generate(stub, z)               # uint8 [N, S, S, C]
    images, z = client.sample(stub, 16, seed=7)     # server-side z, the same for the same seed
    images, z = client.sample_seeds(stub, [3, 7])   # one image per seed (batchable)

Every call retries with exponential backoff while the server is UNAVAILABLE (starting, restarting, swapping
pods) and gives up after `retries` attempts; other errors are raised at once (they will not go away by retrying).
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import json
import sys
import time
from typing import Any, Callable, TypeVar

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

DEFAULT_MODEL = "dcgan"
DEFAULT_SIGNATURE = "serving_default"
SAMPLE_SIGNATURE = "sample"
SEEDS_SIGNATURE = "sample_seeds"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 5
DEFAULT_MAX_MESSAGE_MB = 256  # gRPC's 4 MiB default is too small for image batches
_Response = TypeVar("_Response")


class ClientError(RuntimeError):
    """A request that failed; the message says what the server answered."""


def channel_options(max_message_mb: int = DEFAULT_MAX_MESSAGE_MB) -> list[tuple[str, int]]:
    """gRPC options raising the message size limits."""
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def make_channel(server: str, max_message_mb: int = DEFAULT_MAX_MESSAGE_MB) -> grpc.Channel:
    """An insecure channel to host:port with large message limits."""
    return grpc.insecure_channel(server, options=channel_options(max_message_mb))


def make_stub(server: str, max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
              ) -> prediction_service_pb2_grpc.PredictionServiceStub:
    """A PredictionService stub for host:port."""
    return prediction_service_pb2_grpc.PredictionServiceStub(make_channel(server, max_message_mb))


def call_with_retry(rpc: Callable[..., _Response], request: Any, timeout: float = DEFAULT_TIMEOUT_S,
                    retries: int = DEFAULT_RETRIES, backoff: float = 0.5) -> _Response:
    """Call a unary RPC; on UNAVAILABLE wait backoff, 2*backoff, ... (max 8 s) and try again, `retries` times."""
    for attempt in range(retries + 1):
        try:
            return rpc(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == retries:
                raise
            delay = min(backoff * 2**attempt, 8.0)
            logging.warning("Server unavailable (%s); retrying in %.1f s (%d/%d).", e.details(), delay,
                            attempt + 1, retries)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _model_spec(request: Any, model: str, signature: str | None, version: int | None) -> None:
    """Fill request.model_spec."""
    request.model_spec.name = model
    if signature is not None:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version


def predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    inputs: dict[str, np.ndarray],
    model: str = DEFAULT_MODEL,
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    outputs: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> tuple[dict[str, np.ndarray], int]:
    """One Predict call: named numpy inputs -> (named numpy outputs, model version that answered)."""
    request = predict_pb2.PredictRequest()
    _model_spec(request, model, signature, version)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(outputs or [])
    response = call_with_retry(stub.Predict, request, timeout, retries)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}, response.model_spec.version.value


def generate(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    z: np.ndarray,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    output: str = "images",
    batch_size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> np.ndarray:
    """Images for z [N, nz] from `serving_default`: uint8 (output="images") or float in [-1, 1] ("images_float").

    `batch_size` splits a large z into several requests (keep it at or under the server's batch cap).
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"z must have shape [N, nz], got {z.shape}")
    step = batch_size or max(len(z), 1)
    starts = range(0, len(z), step) or [0]  # an empty z still asks once, for the [0, S, S, C] shape
    parts = [predict(stub, {"z": z[i:i + step]}, model, DEFAULT_SIGNATURE, version, [output], timeout,
                     retries)[0][output] for i in starts]
    return np.concatenate(parts)


def sample(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    num_images: int,
    seed: int,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, z) from the `sample` signature: the server draws z from the seed (no numpy needed)."""
    inputs = {"num_images": np.array(num_images, np.int32), "seed": np.array(seed, np.int64)}
    outputs, _ = predict(stub, inputs, model, SAMPLE_SIGNATURE, version, ["images", "z"], timeout, retries)
    return outputs["images"], outputs["z"]


def sample_seeds(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    seeds: list[int] | np.ndarray,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, z) from `sample_seeds`: one image per seed, batchable by TF Serving's --enable_batching."""
    outputs, _ = predict(stub, {"seeds": np.asarray(seeds, np.int64).reshape([-1])}, model, SEEDS_SIGNATURE,
                         version, ["images", "z"], timeout, retries)
    return outputs["images"], outputs["z"]


def rest_predict(
    base_url: str,
    inputs: dict[str, np.ndarray],
    model: str = DEFAULT_MODEL,
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, np.ndarray]:
    """One Predict over TF Serving's REST API (`http://host:port`, columnar "inputs"): named numpy outputs.

    A JSON array loses its dtype, so outputs come back as numpy's reading of the numbers (uint8 images as
    integers, floats as float64 holding the float32 values exactly); errors become a ClientError with the
    server's message.
    """
    import urllib.error
    import urllib.request

    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + ":predict"
    body = json.dumps({"signature_name": signature,
                       "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}).encode()
    request = urllib.request.Request(base_url.rstrip("/") + path, data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            outputs = json.load(reply)["outputs"]
    except urllib.error.HTTPError as e:
        try:
            message = json.load(e).get("error", "")
        except ValueError:
            message = ""
        raise ClientError(f"{base_url} answered HTTP {e.code}: {message or e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ClientError(f"cannot reach {base_url} ({getattr(e, 'reason', e)}): is the server running with "
                          "--rest_port?") from None
    if not isinstance(outputs, dict):  # a single-output signature answers with the bare value
        outputs = {"output": outputs}
    return {k: np.asarray(v) for k, v in outputs.items()}


def get_metadata(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str = DEFAULT_MODEL,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """{"model", "version", "signature_def": {name: SignatureDef as a dict}} from GetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    _model_spec(request, model, None, version)
    response = call_with_retry(stub.GetModelMetadata, request, timeout, retries)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return {"model": response.model_spec.name, "version": response.model_spec.version.value,
            "signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)[
                "signature_def"]}


def get_status(channel: grpc.Channel, model: str = DEFAULT_MODEL, version: int | None = None,
               timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES) -> list[dict[str, Any]]:
    """ModelService.GetModelStatus as [{"version", "state", "status"}], newest first."""
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(request, model, None, version)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = call_with_retry(stub.GetModelStatus, request, timeout, retries)
    return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)["model_version_status"]


# ---------------------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The client's flags."""
    flags.DEFINE_string("server", "localhost:8500", "gRPC address of TF Serving or serving.local_server.")
    flags.DEFINE_string("model", DEFAULT_MODEL, "Model name.")
    flags.DEFINE_integer("version", None, "Model version (default: the latest served).")
    flags.DEFINE_string("signature", None, "'sample' (default: z drawn by the server from --seed), "
                        "'serving_default' (default with --z_file) or 'sample_seeds' (default with --seeds).")
    flags.DEFINE_integer("num_images", 64, "Images to draw with the sample signature.")
    flags.DEFINE_integer("seed", 0, "Seed of the server-side z (sample signature).")
    flags.DEFINE_list("seeds", None, "Seeds for the sample_seeds signature, one image each (e.g. 3,7,7).")
    flags.DEFINE_string("z_file", None, ".npy file with z [N, nz] float32 for serving_default.")
    flags.DEFINE_string("output", "samples.png", "PNG grid to write.")
    flags.DEFINE_string("npy_output", None, "Also save the uint8 images [N, S, S, C] here (.npy).")
    flags.DEFINE_integer("batch_size", 0, "Split --z_file into requests of this many z (0 = one request).")
    flags.DEFINE_bool("metadata", False, "Print the model's signatures as JSON and exit.")
    flags.DEFINE_float("timeout", DEFAULT_TIMEOUT_S, "Seconds per request.")
    flags.DEFINE_integer("retries", DEFAULT_RETRIES, "Retries with exponential backoff while UNAVAILABLE.")


def _run(*, server: str, model: str, version: int | None, signature: str | None, num_images: int, seed: int,
         seeds: list[str] | None, z_file: str | None, output: str, npy_output: str | None, batch_size: int,
         metadata: bool, timeout: float, retries: int) -> dict[str, Any]:
    """Do what the command line asks (each argument is the flag of that name); returns the JSON summary to print."""
    from dcgan_tf.images import make_grid, write_png

    stub = make_stub(server)
    if metadata:
        return get_metadata(stub, model, version, timeout, retries)
    signature = signature or (DEFAULT_SIGNATURE if z_file else SEEDS_SIGNATURE if seeds else SAMPLE_SIGNATURE)
    if signature == DEFAULT_SIGNATURE:
        if not z_file:
            raise app.UsageError("--signature=serving_default needs --z_file=z.npy (float32 [N, nz]); or use "
                                 "--signature=sample with --num_images and --seed")
        images = generate(stub, np.load(z_file), model, version, "images", batch_size or None, timeout, retries)
    elif signature == SAMPLE_SIGNATURE:
        images, _ = sample(stub, num_images, seed, model, version, timeout, retries)
    elif signature == SEEDS_SIGNATURE:
        if not seeds:
            raise app.UsageError("--signature=sample_seeds needs --seeds=S1,S2,... (one image per seed)")
        try:
            seed_values = [int(s) for s in seeds]
        except ValueError:
            raise app.UsageError(f"--seeds={','.join(seeds)}: seeds must be integers") from None
        images, _ = sample_seeds(stub, seed_values, model, version, timeout, retries)
    else:
        raise app.UsageError(f"--signature={signature!r}: use 'sample', 'sample_seeds' or 'serving_default'")
    write_png(output, make_grid(images))
    if npy_output:
        np.save(npy_output, images)
    return {"output": output, "num_images": int(len(images)), "signature": signature,
            "image_shape": list(images.shape[1:])}


def main(argv: list[str]) -> None:
    """CLI entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        summary = _run(server=FLAGS.server, model=FLAGS.model, version=FLAGS.version, signature=FLAGS.signature,
                       num_images=FLAGS.num_images, seed=FLAGS.seed, seeds=FLAGS.seeds, z_file=FLAGS.z_file,
                       output=FLAGS.output, npy_output=FLAGS.npy_output, batch_size=FLAGS.batch_size,
                       metadata=FLAGS.metadata, timeout=FLAGS.timeout, retries=FLAGS.retries)
        print(json.dumps(summary, indent=2))
    except grpc.RpcError as e:
        sys.exit(f"error: {FLAGS.server} answered {e.code().name}: {e.details()}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
