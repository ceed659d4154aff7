"""A tiny SavedModel (no DCGAN, no training) and an in-process development server for the serving limit tests.

Its signatures mirror the shapes of the DCGAN export (a batch of float rows, a scalar count with a seed, a batch of
int64 seeds) plus a string input, and each output has a closed form, so any answer can be checked exactly.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from serving import client
from serving.dev_server.grpc_frontend import start_grpc_server
from serving.dev_server.handlers import ModelServer
from serving.dev_server.rest_frontend import start_rest_server
from serving.dev_server.versions import ServedModel

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
WIDTH = 4  # the row width of `serving_default` and of every output
MAX_ROWS = 64  # the graph's own bound on `sample`'s count
CAP = 8  # the server's --max_batch_size in these tests
DEFAULT = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


class _Toy(tf.Module):
    """Closed-form signatures over a batch dimension."""

    @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="x")])
    def double(self, x):
        # One float32 addition per row: the same correctly rounded result in TensorFlow and numpy (a sum of more
        # terms may be reordered, and differ).
        return {"double": 2.0 * x, "pair": x[:, 0] + x[:, 1]}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="count"), tf.TensorSpec([], tf.int64, name="seed")])
    def sample(self, count, seed):
        check = tf.debugging.assert_less_equal(count, MAX_ROWS, message=f"count must be <= {MAX_ROWS}")
        with tf.control_dependencies([check]):
            return {"rows": tf.fill(tf.stack([count, WIDTH]), tf.cast(seed, tf.float32))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seeds")])
    def seeds(self, seeds):
        return {"rows": tf.tile(tf.cast(seeds, tf.float32)[:, None], [1, WIDTH])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def text(self, text):
        return {"length": tf.strings.length(text)}


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that imports this repository."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def write_toy_export(base: Path, version: int = 1) -> Path:
    """Save the toy SavedModel as `base/<version>/` (written elsewhere, then renamed into place)."""
    module = _Toy()
    tmp = base / f".tmp-{version}"
    tf.saved_model.save(module, str(tmp), signatures={DEFAULT: module.double, "sample": module.sample,
                                                      "seeds": module.seeds, "text": module.text})
    os.makedirs(base, exist_ok=True)
    os.rename(tmp, base / str(version))
    return base / str(version)


def expected_outputs(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What each toy signature must answer for the inputs."""
    if signature == DEFAULT:
        x = inputs["x"].astype(np.float32)
        return {"double": 2 * x, "pair": x[:, 0] + x[:, 1]}
    if signature == "sample":
        return {"rows": np.full((int(inputs["count"]), WIDTH), np.float32(inputs["seed"]), np.float32)}
    if signature == "seeds":
        return {"rows": np.repeat(inputs["seeds"].astype(np.float32)[:, None], WIDTH, axis=1)}
    return {"length": np.array([len(s) for s in inputs["text"]], np.int32)}


@dataclass
class ToyServer:
    """The development server over the toy export, in this process, on loopback ports."""

    core: ModelServer
    grpc_server: object
    grpc_port: int
    rest_server: object
    rest_port: int

    def stub(self):
        """A PredictionService stub for the gRPC port."""
        return client.prediction_service_pb2_grpc.PredictionServiceStub(client.make_channel(
            f"{HOST}:{self.grpc_port}"))

    def close(self) -> None:
        self.rest_server.shutdown()
        self.rest_server.server_close()
        self.grpc_server.stop(grace=None)


def start_toy_server(base: Path, max_body_mb: int = 1, read_timeout_s: float = 30.0) -> ToyServer:
    """Serve `base` as model "toy" (batch cap CAP) over gRPC and REST on free loopback ports."""
    core = ModelServer([ServedModel("toy", str(base), CAP)])
    core.poll_all()
    assert core.models["toy"].current is not None, "the toy export did not load"
    grpc_server, grpc_port = start_grpc_server(core, HOST, 0, threads=4, max_message_mb=16)
    rest_server, rest_port = start_rest_server(core, HOST, 0, max_body_mb, read_timeout_s)
    return ToyServer(core, grpc_server, grpc_port, rest_server, rest_port)


def post(port: int, data: bytes, path: str = "/v1/models/toy:predict", timeout: float = 60.0) -> tuple[int, dict]:
    """(status, JSON reply) of a POST of `data` to the REST port."""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def raw_http(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send raw bytes to the REST port; (what came back, whether the server closed the connection within timeout)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks, closed = [], True
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            closed = False
        return b"".join(chunks), closed
