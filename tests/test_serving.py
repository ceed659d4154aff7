"""End to end: tiny training run -> export -> serving.local_server (subprocess, loopback) -> client.

One server process is shared by the whole module (TensorFlow takes seconds to import). Tests that change what is
on disk (new version, broken version) come last, in file order.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2

from dcgan_tf import checkpointing, export
from dcgan_tf.config import Config
from dcgan_tf.images import read_png, to_uint8
from dcgan_tf.gan import build_gan
from dcgan_tf.train import train
from serving import client, dev_server
from serving.dev_server import batching
from serving.dev_server import config as serving_config
from serving.dev_server.errors import ServingError
from serving_toy import free_port, subprocess_env

REPO = Path(__file__).resolve().parents[1]
NZ = 16
STEPS = 12
CAP = 32  # the server's --max_batch_size
HOST = "127.0.0.1"


@dataclass
class Run:
    """The trained tiny run and a reference generator identical to the exported one."""

    config: Config
    gan: object
    export_base: Path
    reference: object  # inference copy with the export's re-estimated BatchNorm statistics

    def expected(self, z: np.ndarray) -> np.ndarray:
        """The uint8 images the export must serve for z."""
        return to_uint8(self.reference(z, training=False).numpy())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """Train a tiny synthetic DCGAN for a few steps with --export_dir set (train() exports at the end)."""
    root = tmp_path_factory.mktemp("serving")
    config = Config(dataset="synthetic", image_size=16, channels=1, nz=NZ, ngf=8, ndf=8, batch_size=16,
                    train_steps=STEPS, model_dir=str(root / "run"), export_dir=str(root / "exports"), verbose=0)
    gan = train(config)
    config = checkpointing.read_run_config(config.model_dir)  # the resolved config the export used
    assert sorted(os.listdir(config.export_dir)) == [str(STEPS)]
    reference = export.inference_copy(gan.output_generator, config)  # G's EMA, as exported
    export.reestimate_batchnorm(reference, config, export.DEFAULT_BN_SAMPLES)
    return Run(config, gan, Path(config.export_dir), reference)


@dataclass
class Server:
    """The local server subprocess."""

    process: subprocess.Popen
    grpc_port: int
    rest_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """serving.local_server on free loopback ports, polling every 0.2 s, batch cap CAP."""
    root = tmp_path_factory.mktemp("server")
    ready, log = root / "ready.json", root / "server.log"
    command = [sys.executable, "-m", "serving.local_server", f"--model_base_path={run.export_base}",
               "--model_name=dcgan", "--port=0", f"--rest_port={free_port()}", f"--max_batch_size={CAP}",
               "--file_system_poll_wait_seconds=0.2", f"--ready_file={ready}", "--grpc_threads=8"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=log_file,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"local server did not start (rc={process.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    ports = json.loads(ready.read_text())
    yield Server(process, ports["grpc_port"], ports["rest_port"], log)
    process.terminate()  # graceful stop; TensorFlow's interpreter teardown can take seconds, so don't wait long
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def channel(server):
    ch = client.make_channel(server.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return client.prediction_service_pb2_grpc.PredictionServiceStub(channel)


def random_z(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, (n, NZ)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Serving the exported version.


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_client_images_equal_in_process_generator(run, stub):
    z = random_z(10)
    images = client.generate(stub, z)
    assert images.dtype == np.uint8 and images.shape == (10, 16, 16, 1)
    np.testing.assert_array_equal(images, run.expected(z))
    floats = client.generate(stub, z, output="images_float", batch_size=4)  # three requests
    np.testing.assert_allclose(floats, run.reference(z, training=False).numpy(), atol=1e-6)
    outputs, version = client.predict(stub, {"z": z[:2]}, version=STEPS)  # naming the served version
    assert version == STEPS and set(outputs) == {"images", "images_float"}


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_metadata_lists_both_signatures(stub):
    metadata = client.get_metadata(stub)
    assert (metadata["model"], metadata["version"]) == ("dcgan", STEPS)
    signatures = metadata["signature_def"]
    assert {"serving_default", "sample"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["inputs"]["z"]["dtype"] == "DT_FLOAT"
    assert [int(d["size"]) for d in default["inputs"]["z"]["tensor_shape"]["dim"]] == [-1, NZ]
    assert default["outputs"]["images"]["dtype"] == "DT_UINT8"
    assert set(signatures["sample"]["inputs"]) == {"num_images", "seed"}
    assert set(signatures["sample"]["outputs"]) == {"images", "images_float", "z"}
    assert signatures["sample_seeds"]["inputs"]["seeds"]["dtype"] == "DT_INT64"


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_sample_signature_is_reproducible(run, stub):
    images, z = client.sample(stub, 5, seed=7)
    again, _ = client.sample(stub, 5, seed=7)
    np.testing.assert_array_equal(z, run.gan.sample_z(5, 7).numpy())
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(images, run.expected(z))


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_sample_seeds_gives_one_image_per_seed(run, stub):
    seeds = np.array([7, 3, 7], np.int64)
    outputs, _ = client.predict(stub, {"seeds": seeds}, signature="sample_seeds")
    z = np.concatenate([run.gan.sample_z(1, int(s)).numpy() for s in seeds])
    np.testing.assert_array_equal(outputs["z"], z)
    np.testing.assert_array_equal(outputs["images"], run.expected(z))
    images, _ = client.sample(stub, 1, seed=7)  # sample_seeds([s]) == sample(num_images=1, seed=s)
    np.testing.assert_array_equal(outputs["images"][:1], images)
    images, seed_z = client.sample_seeds(stub, [3])
    np.testing.assert_array_equal(seed_z, z[1:2])
    np.testing.assert_array_equal(images, outputs["images"][1:2])


def _predict(inputs: dict, model: str = "dcgan", signature: str = "", version: int | None = None,
             output_filter: tuple = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _sample_inputs(num_images: int) -> dict:
    return {"num_images": np.array(num_images, np.int32), "seed": np.array(0, np.int64)}


NAN_Z = np.full((2, NZ), np.nan, np.float32)
BAD_REQUESTS = {
    "renamed input": ("Predict", _predict({"latent": random_z(2)}), "INVALID_ARGUMENT",
                      "Signature input alias: z(feed name: serving_default_z:0) not found in request"),
    "extra input": ("Predict", _predict({"z": random_z(2), "w": random_z(2)}), "INVALID_ARGUMENT",
                    "input size does not match signature: 2!=1 len({w,z}) != len({z}). Sent extra: {w}. "
                    "Missing but required: {}."),
    "missing input": ("Predict", _predict({}), "INVALID_ARGUMENT", "input size does not match signature: 0!=1"),
    "wrong shape": ("Predict", _predict({"z": np.zeros((2, NZ + 1), np.float32)}), "INVALID_ARGUMENT",
                    f"input 'z' has shape [2, {NZ + 1}], the signature needs [-1, {NZ}]"),
    "wrong rank": ("Predict", _predict({"z": np.zeros((NZ,), np.float32)}), "INVALID_ARGUMENT",
                   f"input 'z' has shape [{NZ}]"),
    "wrong dtype": ("Predict", _predict({"z": random_z(2).astype(np.float64)}), "INVALID_ARGUMENT",
                    "Expects arg[0] to be float but double is provided"),
    "non-finite z": ("Predict", _predict({"z": NAN_Z}), "INVALID_ARGUMENT", "z must be finite"),
    "batch over cap": ("Predict", _predict({"z": random_z(CAP + 1)}), "INVALID_ARGUMENT",
                       f"Task size {CAP + 1} is larger than maximum input batch size {CAP}"),
    "num_images over cap": ("Predict", _predict(_sample_inputs(CAP + 1), signature="sample"), "INVALID_ARGUMENT",
                            f"Task size {CAP + 1} is larger than maximum input batch size {CAP}"),
    "negative num_images": ("Predict", _predict(_sample_inputs(-1), signature="sample"), "INVALID_ARGUMENT",
                            "num_images must be >= 0"),
    "unknown output": ("Predict", _predict({"z": random_z(1)}, output_filter=("nope",)), "INVALID_ARGUMENT",
                       "output tensor alias not found in signature: nope Outputs expected to be in the set "
                       "{images,images_float}."),
    "unknown model": ("Predict", _predict({"z": random_z(1)}, model="nope"), "NOT_FOUND",
                      "Servable not found for request: Latest(nope)"),
    "unknown version": ("Predict", _predict({"z": random_z(1)}, version=999), "NOT_FOUND",
                        "Servable not found for request: Specific(dcgan, 999)"),
    "unknown signature": ("Predict", _predict({"z": random_z(1)}, signature="nope"), "FAILED_PRECONDITION",
                          'Serving signature key "nope" not found.'),
    "metadata without field": ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "dcgan"}), "INVALID_ARGUMENT",
        "GetModelMetadataRequest must specify at least one metadata_field"),
    "metadata unknown model": ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "nope"}, metadata_field=["signature_def"]), "NOT_FOUND",
        "Servable not found for request: Latest(nope)"),
    "status unknown model": ("GetModelStatus", get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "nope"}), "NOT_FOUND", "Could not find any versions of model nope"),
    "status unknown version": ("GetModelStatus", get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "dcgan", "version": {"value": 999}}), "NOT_FOUND",
        "Could not find version 999 of model dcgan"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_request_gets_tf_serving_error_and_server_keeps_answering(kind, run, channel, stub):
    method, request, code, message = BAD_REQUESTS[kind]
    service = model_service_pb2_grpc.ModelServiceStub(channel) if method == "GetModelStatus" else stub
    with pytest.raises(grpc.RpcError) as info:
        getattr(service, method)(request, timeout=30)
    assert info.value.code() == getattr(grpc.StatusCode, code), info.value.details()
    assert message in info.value.details()
    z = random_z(3, seed=5)
    np.testing.assert_array_equal(client.generate(stub, z), run.expected(z))  # still answers, correctly


def _http(server: Server, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON) of a REST call to the local server."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{HOST}:{server.rest_port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_rest_api(run, server):
    status, body = _http(server, "/v1/models/dcgan")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": str(STEPS), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}

    status, body = _http(server, "/v1/models/dcgan/metadata")
    assert status == 200 and body["model_spec"]["version"] == str(STEPS)
    assert {"serving_default", "sample"} <= set(body["metadata"]["signature_def"]["signature_def"])

    z = random_z(3, seed=9)
    status, body = _http(server, "/v1/models/dcgan:predict", {"instances": z.tolist()})
    assert status == 200 and len(body["predictions"]) == 3
    np.testing.assert_array_equal(np.array([p["images"] for p in body["predictions"]]), run.expected(z))

    status, body = _http(server, f"/v1/models/dcgan/versions/{STEPS}:predict",
                         {"signature_name": "sample", "inputs": {"num_images": 2, "seed": 7}})
    assert status == 200
    np.testing.assert_allclose(np.array(body["outputs"]["z"]), run.gan.sample_z(2, 7).numpy(), atol=1e-7)

    # The documented sample_seeds request: one instance per seed.
    status, body = _http(server, "/v1/models/dcgan:predict", {"signature_name": "sample_seeds", "instances": [7, 3]})
    assert status == 200 and len(body["predictions"]) == 2
    seed_z = np.concatenate([run.gan.sample_z(1, 7).numpy(), run.gan.sample_z(1, 3).numpy()])
    np.testing.assert_allclose(np.array([p["z"] for p in body["predictions"]]), seed_z, atol=1e-7)
    np.testing.assert_array_equal(np.array([p["images"] for p in body["predictions"]]), run.expected(seed_z))

    status, body = _http(server, "/v1/models/dcgan:predict", {"inputs": {"z": [[0.5] * (NZ + 1)]}})
    assert status == 400 and "input 'z' has shape [1, 17]" in body["error"]
    status, body = _http(server, "/v1/models/nope:predict", {"instances": z.tolist()})
    assert status == 404 and body["error"] == "Servable not found for request: Latest(nope)"
    status, body = _http(server, "/v1/models/dcgan:predict", {"signature_name": "nope", "instances": []})
    assert status == 400 and "nope" in body["error"]
    status, body = _http(server, "/v1/models/dcgan:predict", {"z": 1})
    assert status == 400 and body["error"] == "Missing 'inputs' or 'instances' key"


@pytest.mark.slow
def test_client_cli_and_server_help(run, server, stub, tmp_path):
    png, npy = tmp_path / "samples.png", tmp_path / "samples.npy"
    cli = subprocess.Popen([sys.executable, "-m", "serving.client", f"--server={server.address}",
                            "--num_images=4", "--seed=3", f"--output={png}", f"--npy_output={npy}"],
                           cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    helped = subprocess.Popen([sys.executable, "-m", "serving.local_server", "--help"], cwd=REPO,
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, err = cli.communicate(timeout=180)
    help_text, _ = helped.communicate(timeout=180)
    assert cli.returncode == 0, err[-3000:]
    assert json.loads(out)["num_images"] == 4
    expected, _ = client.sample(stub, 4, seed=3)
    np.testing.assert_array_equal(np.load(npy), expected)
    assert read_png(str(png)).shape == (2 * 18 + 2, 2 * 18 + 2, 1)  # 2x2 grid, 2-pixel padding
    assert helped.returncode in (0, 1) and "Traceback" not in help_text  # absl exits 1 after --help
    for flag in ("--model_base_path", "--model_name", "--port", "--rest_port", "--max_batch_size"):
        assert flag in help_text


# ---------------------------------------------------------------------------------------------------------
# Request batching (in-process server: --enable_batching).


@pytest.fixture(scope="module")
def batching_server(run):
    """The local server core with batching on (max 8 rows, 300 ms timeout), gRPC on a free loopback port."""
    params = dev_server.BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=2)
    core = dev_server.ModelServer([dev_server.ServedModel("dcgan", str(run.export_base), batching=params)])
    core.poll_all()
    server, port = dev_server.start_grpc_server(core, HOST, 0, threads=12, max_message_mb=64)
    channel = client.make_channel(f"{HOST}:{port}")
    yield core, client.prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    server.stop(grace=None)


@pytest.mark.slow  # needs the trained run
def test_batching_merges_concurrent_requests_and_answers_each_its_own(run, batching_server):
    core, stub = batching_server
    served = core.models["dcgan"].current
    before = served.batching_stats()["sample_seeds"]  # the warm-up's run
    results, errors = {}, []

    def ask(i: int) -> None:
        try:
            outputs, _ = client.predict(stub, {"seeds": np.array([100 + i], np.int64)}, signature="sample_seeds",
                                        timeout=60, retries=0)
            results[i] = outputs
        except grpc.RpcError as e:
            errors.append(e.details())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, outputs in results.items():  # each request gets its own seed's image, as if alone
        z = run.gan.sample_z(1, 100 + i).numpy()
        np.testing.assert_array_equal(outputs["z"], z)
        np.testing.assert_array_equal(outputs["images"], run.expected(z))
    after = served.batching_stats()["sample_seeds"]
    runs, rows = after["runs"] - before["runs"], after["rows"] - before["rows"]
    assert rows == 8 and runs < 8, (runs, rows)  # merged into fewer session runs


@pytest.mark.slow  # needs the trained run
def test_batching_refuses_scalar_inputs_and_oversized_requests_like_tf_serving(batching_server):
    _, stub = batching_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_predict(_sample_inputs(2), signature="sample"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Batching session Run() input tensors must have at least one dimension" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_predict({"z": random_z(9)}), timeout=30)
    assert "Task size 9 is larger than maximum input batch size 8" in info.value.details()


# ---------------------------------------------------------------------------------------------------------
# New versions (these change the export folder: keep them last).


def _status(channel) -> dict[int, tuple[str, str]]:
    """{version: (state name, error message)} from GetModelStatus."""
    return {int(s["version"]): (s["state"], s["status"]["error_message"]) for s in client.get_status(channel)}


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_new_version_is_picked_up_without_failed_requests(run, server, channel, stub):
    new_gan = build_gan(run.config)  # fresh weights: its images differ from the served ones
    z = random_z(4, seed=21)
    expected_new = to_uint8(new_gan.generator(z, training=False).numpy())
    assert not np.array_equal(expected_new, run.expected(z))
    versions_seen, failures, counts = [], [], [0] * 4
    stop = threading.Event()
    new_seen = threading.Event()
    deadline = time.monotonic() + 120  # bounded in time and count, loopback only

    def hammer(i: int) -> None:
        while not stop.is_set() and counts[i] < 400 and time.monotonic() < deadline:
            try:
                outputs, version = client.predict(stub, {"z": z}, outputs=["images"], timeout=30, retries=0)
            except grpc.RpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
                continue
            counts[i] += 1
            versions_seen.append(version)
            reference = expected_new if version == STEPS + 1 else run.expected(z)
            if not np.array_equal(outputs["images"], reference):
                failures.append(f"version {version} served wrong images")
            if version == STEPS + 1:
                new_seen.set()

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while sum(counts) < 8 and time.monotonic() < deadline and not failures:
        time.sleep(0.05)
    path = export.export_generator(new_gan.generator, run.config, str(run.export_base), bn_samples=0)
    assert os.path.basename(path) == str(STEPS + 1)  # a bare generator gets the next version
    new_seen.wait(timeout=max(0.0, deadline - time.monotonic()))
    after = sum(counts)
    while sum(counts) < after + 8 and time.monotonic() < deadline:  # keep going a little after the swap
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [], failures[:5]
    assert new_seen.is_set(), f"version {STEPS + 1} never served; log:\n{server.log_tail()}"
    assert versions_seen[0] == STEPS and versions_seen[-1] == STEPS + 1
    assert set(versions_seen) == {STEPS, STEPS + 1}
    status = _status(channel)
    assert status[STEPS + 1][0] == "AVAILABLE" and status[STEPS][0] == "END"


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_broken_new_version_keeps_the_old_one_serving(run, channel, stub):
    broken = run.export_base / str(STEPS + 2)
    os.makedirs(broken / "variables")
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    deadline = time.monotonic() + 60
    while STEPS + 2 not in _status(channel) or _status(channel)[STEPS + 2][0] != "END":
        assert time.monotonic() < deadline, _status(channel)
        time.sleep(0.1)
    state, error = _status(channel)[STEPS + 2]
    assert error  # the load error is reported
    assert _status(channel)[STEPS + 1][0] == "AVAILABLE"
    _, version = client.predict(stub, {"z": random_z(1)})
    assert version == STEPS + 1


def _wait_for_end(channel, version: int) -> str:
    """Wait until `version` failed to load; returns its error message."""
    deadline = time.monotonic() + 90
    while version not in _status(channel) or _status(channel)[version][0] != "END":
        assert time.monotonic() < deadline, _status(channel)
        time.sleep(0.1)
    return _status(channel)[version][1]


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_version_failing_warmup_is_not_served(run, channel, stub):
    from tensorflow_serving.apis import prediction_log_pb2

    version = STEPS + 3
    tmp = run.export_base / f".tmp-{version}"
    shutil.copytree(run.export_base / str(STEPS), tmp)
    request = _predict({"z": np.zeros((1, NZ + 1), np.float32)})  # a warm-up record the signature refuses
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(tmp / export.WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())
    os.rename(tmp, run.export_base / str(version))
    error = _wait_for_end(channel, version)
    assert error.startswith(f"INVALID_ARGUMENT: input 'z' has shape [1, {NZ + 1}]"), error
    _, served = client.predict(stub, {"z": random_z(1)})
    assert served == STEPS + 1  # the previous version stays


class _ModuleServable(tf.Module):
    """How the export was written before keras.export.ExportArchive (a tf.Module holding the Keras model)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.serve = tf.function(lambda z: {"images_float": generator(z, training=False)},
                                 input_signature=[tf.TensorSpec([None, NZ], tf.float32, name="z")])


@pytest.mark.slow  # needs the trained run and the server subprocess
def test_export_that_tf_serving_cannot_run_fails_to_load_here_too(run, channel, stub):
    version = STEPS + 4
    tmp = run.export_base / f".tmp-{version}"
    module = _ModuleServable(export.inference_copy(run.gan.generator, run.config))
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    assert tf.saved_model.load(str(tmp)).signatures["serving_default"](z=random_z(1))  # the TF2 loader runs it
    shutil.copytree(run.export_base / str(STEPS) / "assets.extra", tmp / "assets.extra")
    os.rename(tmp, run.export_base / str(version))
    error = _wait_for_end(channel, version)
    assert error.startswith("FAILED_PRECONDITION: Could not find variable"), error  # as in TF Serving
    _, served = client.predict(stub, {"z": random_z(1)})
    assert served == STEPS + 1


# ---------------------------------------------------------------------------------------------------------
# No server needed.


def test_models_config_and_batching_parameters_parse():
    assert dev_server.read_model_config(str(REPO / "serving" / "models.config")) == [("dcgan", "/models/dcgan")]
    params = dev_server.read_batching_parameters(str(REPO / "serving" / "batching_parameters.txt"))
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads) == (64, 2000, 4)
    assert dev_server.read_max_batch_size(str(REPO / "serving" / "batching_parameters.txt")) == 64
    parsed = serving_config.parse_batching_parameters(
        "max_batch_size { value: 16 }  # comment\nallowed_batch_sizes: 4\nallowed_batch_sizes: 16\n"
        "pad_variable_length_inputs: true")
    assert (parsed.max_batch_size, parsed.allowed_batch_sizes, parsed.pad_variable_length_inputs) == (16, (4, 16), True)
    with pytest.raises(ValueError, match="unknown field 'max_batch'"):
        serving_config.parse_batching_parameters("max_batch { value: 3 }")
    with pytest.raises(ValueError, match="must increase and end with max_batch_size"):
        serving_config.parse_batching_parameters("max_batch_size { value: 16 } allowed_batch_sizes: 8")


def test_batcher_merges_up_to_max_batch_size_pads_and_splits():
    calls = []

    def double(inputs):
        calls.append(len(inputs["x"]))
        time.sleep(0.05)
        return {"y": inputs["x"] * 2}

    params = serving_config.BatchingParameters(max_batch_size=4, batch_timeout_micros=100_000, num_batch_threads=1,
                                               allowed_batch_sizes=(2, 4))
    batcher = batching.SignatureBatcher(double, params, "test")
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.run({"x": np.array([i, i])})))
               for i in range(3)]  # 3 requests of 2 rows: one batch of 4, then one of 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == [2, 4], calls
    for i in range(3):
        np.testing.assert_array_equal(results[i]["y"], [2 * i, 2 * i])
    assert batcher.run({"x": np.array([5])})["y"].tolist() == [10]  # a lone request: padded to 2, cut back to 1
    assert calls[-1] == 2
    with pytest.raises(ServingError, match="at least one dimension"):
        batcher.run({"x": np.array(3)})
    with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size 4"):
        batcher.run({"x": np.arange(5)})
    batcher.stop()
    assert batcher.run({"x": np.array([1])})["y"].tolist() == [2]  # after stop: runs alone, never fails


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection refused"


def test_client_retries_only_while_unavailable():
    calls = []

    def flaky(request, timeout):
        calls.append(timeout)
        if len(calls) < 3:
            raise _Unavailable()
        return "ok"

    assert client.call_with_retry(flaky, None, timeout=5, retries=3, backoff=0.01) == "ok"
    assert calls == [5, 5, 5]
    calls.clear()
    with pytest.raises(grpc.RpcError):
        client.call_with_retry(flaky, None, timeout=5, retries=1, backoff=0.01)
    assert len(calls) == 2


@pytest.mark.slow  # exports and serves a tiny generator several times in-process
def test_bench_sample_measures_every_path_without_errors():
    from dcgan_tf import bench

    config = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=NZ, batch_size=8, train_steps=1)
    params = str(REPO / "serving" / "batching_parameters.txt")
    results = bench.bench_sample(config, grpc=True, repeats=3, batch=8, windows=1, clients=2, client_requests=3,
                                 batching_parameters_file=params)
    by_path = {r["path"]: r for r in results}
    assert set(by_path) == {"in_process", "saved_model", "session_loader", "grpc_local_server",
                            "grpc_concurrent_unbatched", "grpc_concurrent_batched"}
    for path in ("grpc_concurrent_unbatched", "grpc_concurrent_batched"):
        assert (by_path[path]["requests"], by_path[path]["errors"]) == (6, 0), by_path[path]
    assert by_path["grpc_concurrent_batched"]["batching"]["max_batch_size"] == 64
    assert by_path["grpc_concurrent_batched"]["rows_per_batched_run"] >= 1
    assert all(r["img_per_s"] > 0 for r in results)


# ---------------------------------------------------------------------------------------------------------
# Layout: the development server is generic, in its own sub-package, and outside training's imports.

DEV_SERVER = REPO / "serving" / "dev_server"


def _python_files(folder) -> list[str]:
    """The .py files under `folder`."""
    return sorted(os.path.join(root, name) for root, _, files in os.walk(folder) for name in files
                  if name.endswith(".py"))


def _imports(path: str) -> set[str]:
    """Every module `path` imports, at any depth of its source (`from a import b` counts as a and a.b)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_development_server_knows_nothing_of_dcgan():
    named = {}
    for path in _python_files(DEV_SERVER):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        hits = sorted({m.group(0) for m in re.finditer(r"(?i)dcgan|num_images|\"serving_default\"|PITFALLS", text)})
        if hits:
            named[os.path.relpath(path, REPO)] = hits
        assert not any(m.startswith("dcgan_tf") for m in _imports(path)), f"{path} imports the training package"
    assert not named, f"DCGAN (or other outside) names in the generic server: {named}"
    top = sorted(os.listdir(os.path.join(REPO, "serving")))
    for kept in ("client.py", "models.config", "batching_parameters.txt", "docker-compose.yml", "run_tf_serving.sh",
                 "local_server.py", "dev_server"):
        assert kept in top, kept
    assert not [name for name in top if name.endswith(".py") and name not in ("__init__.py", "client.py",
                                                                              "local_server.py")], top


def test_only_the_benchmark_imports_the_development_server_from_dcgan_tf():
    importers = sorted(os.path.relpath(path, REPO) for path in _python_files(os.path.join(REPO, "dcgan_tf"))
                       if any(m == "serving.dev_server" or m.startswith("serving.dev_server.")
                              for m in _imports(path)))
    assert importers in ([], ["dcgan_tf/bench.py"]), importers


@pytest.mark.slow  # two subprocesses that import TensorFlow
def test_local_server_launcher_and_generic_module_share_the_flags():
    """`python -m serving.local_server` (the README's command) and `python -m serving.dev_server` both start; the
    launcher only changes defaults (the model name and the batch-size input)."""
    env = subprocess_env()
    helps = {}
    for module in ("serving.local_server", "serving.dev_server"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        helps[module] = done.stdout + done.stderr
    for flag in ("--model_base_path", "--rest_max_body_mb", "--rest_read_timeout_seconds", "--max_num_load_retries",
                 "--load_retry_interval_micros", "--batch_size_inputs"):
        assert flag in helps["serving.local_server"] and flag in helps["serving.dev_server"], flag
    assert "default: 'dcgan'" in helps["serving.local_server"] and "default: 'default'" in helps["serving.dev_server"]
    assert "default: 'num_images'" in helps["serving.local_server"]
