"""The development server under requests built to cost it: every limit answers with a client error, in bounded
memory and time (a tiny generic SavedModel served in-process on 127.0.0.1; no training)."""

from __future__ import annotations

import http.client
import json
import os
import queue
import select
import shutil
import socket
import threading
import time
import tracemalloc

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

import serving_toy as toy
from serving.dev_server import batching, versions
from serving.dev_server import config as serving_config
from serving.dev_server.handlers import ModelServer
from serving.dev_server.rest_frontend import make_rest_server, start_rest_server


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("toy") / "toy"
    toy.write_toy_export(base)
    return base


@pytest.fixture(scope="module")
def server(toy_base):
    """The server with a 1 MiB REST body limit and a 1 s read timeout."""
    running = toy.start_toy_server(toy_base, max_body_mb=1, read_timeout_s=1.0)
    yield running
    running.close()


@pytest.fixture(scope="module")
def stub(server):
    return server.stub()


def _request(inputs: dict[str, tf.Tensor], signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value)
    return request


def _grpc_error(stub, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    return info.value.code(), info.value.details()


def _post(server_or_port, body, path: str = "/v1/models/toy:predict") -> tuple[int, dict]:
    """(status, JSON reply) of a POST of `body` (bytes, or JSON-encoded) to the REST port."""
    port = getattr(server_or_port, "rest_port", server_or_port)
    return toy.post(port, body if isinstance(body, bytes) else json.dumps(body).encode(), path, timeout=30)


def _peak_mb_while(work) -> float:
    """Peak traced Python/numpy memory (MB) above the start while `work()` runs (server threads included)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------------------
# gRPC TensorProtos: declared shape and value count checked before anything is allocated (issue 18, item 3).


def test_grpc_tensor_declaring_a_huge_shape_is_refused_before_it_is_materialised(server, stub):
    one_value = tf.make_tensor_proto(0.5, shape=[2_000_000, toy.WIDTH])  # ~40 bytes declaring 32 MB
    assert one_value.ByteSize() < 64
    peak = _peak_mb_while(lambda: pytest.raises(grpc.RpcError, stub.Predict, _request({"x": one_value}), timeout=30))
    assert peak < 8, f"{peak:.0f} MB allocated for a {one_value.ByteSize()}-byte tensor"
    code, message = _grpc_error(stub, _request({"x": one_value}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Task size 2000000 is larger than maximum input batch size {toy.CAP}" in message
    seeds = tf.make_tensor_proto(np.int64(7), shape=[3_000_000])
    peak = _peak_mb_while(lambda: pytest.raises(grpc.RpcError, stub.Predict, _request({"seeds": seeds}, "seeds"),
                                                timeout=30))
    assert peak < 8, f"{peak:.0f} MB allocated for seeds [3000000] with one value"


def test_grpc_tensor_whose_values_do_not_fill_its_shape_is_refused(stub):
    broadcast = tf.make_tensor_proto(0.5, shape=[2, toy.WIDTH])  # one float_val for 8 elements
    code, message = _grpc_error(stub, _request({"x": broadcast}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor parsing error: x: 1 values in float_val for shape [2, 4] (8 elements)" in message
    short = tf.make_tensor_proto(np.zeros((2, toy.WIDTH), np.float32))
    short.tensor_content = short.tensor_content[:-4]  # 28 bytes for 8 float32
    code, message = _grpc_error(stub, _request({"x": short}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "tensor_content has 28 bytes" in message
    negative = tf.make_tensor_proto(np.zeros((0, toy.WIDTH), np.float32))
    negative.tensor_shape.dim[0].size = -3
    code, message = _grpc_error(stub, _request({"x": negative}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sizes >= 0" in message
    exact = tf.make_tensor_proto(np.arange(8, dtype=np.float32).reshape(2, toy.WIDTH))
    response = stub.Predict(_request({"x": exact}), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["double"]), 2 * tf.make_ndarray(exact))


def test_grpc_unknown_dtype_enum_is_invalid_argument_not_internal(stub):
    proto = tf.make_tensor_proto(np.zeros((1, toy.WIDTH), np.float32))
    proto.dtype = 9999
    code, message = _grpc_error(stub, _request({"x": proto}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert "unknown dtype enum 9999" in message


# ---------------------------------------------------------------------------------------------------------
# REST decoding: linear, bounded by the batch cap, TF Serving's type rules (items 4 and 8).


def test_rest_rows_of_distinct_keys_cost_linear_memory_and_get_400(server, toy_base):
    rows = [{f"key{i}": 1.0} for i in range(4000)]  # 4000 inputs of one row each, if regrouped by key
    core = ModelServer([versions.ServedModel("toy", str(toy_base), max_batch_size=0)])  # no cap: only the keys
    core.poll_all()
    uncapped, port = start_rest_server(core, toy.HOST, 0, 1, 30.0)
    try:
        result = {}
        peak = _peak_mb_while(lambda: result.update(reply=_post(port, {"instances": rows})))
    finally:
        uncapped.shutdown()
        uncapped.server_close()
    status, body = result["reply"]
    assert status == 400, body
    assert "Failed to process element: 0 of 'instances' list" in body["error"]
    assert "keys must be equal to: x" in body["error"]
    assert peak < 16, f"{peak:.0f} MB for a {len(json.dumps(rows)) // 1000} kB body"
    status, body = _post(server, {"instances": [[0.0] * toy.WIDTH] * (toy.CAP + 1)})  # capped server
    assert (status, body["error"]) == (400, f"Task size {toy.CAP + 1} is larger than maximum input batch size "
                                            f"{toy.CAP}")


@pytest.mark.parametrize("body, message", [
    ({"signature_name": 5, "instances": [[0.0] * 4]}, "'signature_name' key must be a string value"),
    ({"signature_name": "sample", "inputs": {"count": 2**31, "seed": 1}}, "out of range for type int32"),
    ({"signature_name": "sample", "inputs": {"count": 3.7, "seed": 1}},
     "JSON Value: 3.7 Type: Number is not of expected type: int32"),
    ({"signature_name": "sample", "inputs": {"count": "5", "seed": 1}},
     'JSON Value: "5" Type: String is not of expected type: int32'),
    ({"signature_name": "sample", "inputs": {"count": True, "seed": 1}},
     "JSON Value: true Type: True is not of expected type: int32"),
    ({"signature_name": "seeds", "instances": [2**63]}, "out of range for type int64"),
    ({"instances": [[1e400] * 4]}, None),  # parsed as inf, like TF Serving: a correct 200
    (b"[" * 100_000 + b"]" * 100_000, "JSON Parse error"),
    (b"\xff\xfe", "JSON Parse error"),
    (b"", "JSON Parse error: The document is empty"),
    (b"[1, 2]", "Is not object"),
])
def test_rest_client_errors_are_400_never_500_and_nothing_is_coerced(server, body, message):
    status, reply = _post(server, body)
    if message is None:
        assert status == 200 and reply["predictions"][0]["double"] == [float("inf")] * 4
        return
    assert status == 400, reply
    assert message in reply["error"]


def test_rest_version_beyond_int64_is_400(server):
    status, reply = _post(server, {"instances": [[0.0] * 4]}, path=f"/v1/models/toy/versions/{2**64}:predict")
    assert (status, reply["error"]) == (400, f"Failed to convert version: {2**64} to numeric.")


# ---------------------------------------------------------------------------------------------------------
# REST framing: body limit, Content-Length, trailing bytes, timeouts, backlog (items 5, 6, 7, 8).


def _status_line(reply: bytes) -> bytes:
    return reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("headers, status", [
    (b"Content-Length: 1000000000000\r\n", b"413"),  # 10^12: refused before reading a byte
    (b"Content-Length: 99999999999999999999999999\r\n", b"413"),
    (b"Content-Length: 1048577\r\n", b"413"),  # one byte over the 1 MiB limit
    (b"Content-Length: 1048577\r\nExpect: 100-continue\r\n", b"413"),  # instead of 100 Continue
    (b"Content-Length: abc\r\n", b"400"),
    (b"Content-Length: -5\r\n", b"400"),
    (b"Content-Length: 2\r\nContent-Length: 2\r\n", b"400"),
    (b"Transfer-Encoding: chunked\r\n", b"411"),
])
def test_rest_bad_or_oversized_content_length_gets_a_reply_and_a_close(server, headers, status):
    reply, closed = toy.raw_http(server.rest_port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n" + headers +
                                 b"\r\n")
    assert _status_line(reply).split(b" ")[1] == status, reply[:300]
    assert b'{"error": ' in reply and closed
    assert reply.count(b"HTTP/1.1 ") == 1


def test_rest_bytes_after_the_declared_body_are_not_parsed_as_a_second_request(server):
    body = json.dumps({"instances": [[1.0] * toy.WIDTH]}).encode()
    smuggled = b"GET /v1/models/toy HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, closed = toy.raw_http(server.rest_port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body + smuggled, timeout=5)
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # only the POST was answered
    assert _status_line(reply) == b"HTTP/1.1 200 OK" and b"predictions" in reply
    assert closed
    # Without trailing bytes the connection stays open for the next request (keep-alive still works).
    connection = http.client.HTTPConnection(toy.HOST, server.rest_port, timeout=10)
    try:
        sockets = []
        for _ in range(2):
            connection.request("POST", "/v1/models/toy:predict", body)
            reply = connection.getresponse()
            assert reply.status == 200 and b"predictions" in reply.read()
            sockets.append(connection.sock)
        assert sockets[0] is sockets[1] is not None  # the same connection served both
    finally:
        connection.close()


def test_slow_and_idle_rest_connections_are_closed_after_the_read_timeout(server):
    """20 raw connections (10 idle, 10 sending a byte every 0.2 s) all closed within 10 s by a 1 s timeout."""
    idle = [socket.create_connection((toy.HOST, server.rest_port), timeout=10) for _ in range(10)]
    slow = [socket.create_connection((toy.HOST, server.rest_port), timeout=10) for _ in range(10)]
    request = b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b" " * 100
    open_sockets, sent, deadline = set(idle + slow), 0, time.monotonic() + 10
    try:
        status, _ = _post(server, {"instances": [[0.0] * toy.WIDTH]})  # served meanwhile
        assert status == 200
        while open_sockets and time.monotonic() < deadline:
            for sock in slow:
                if sock in open_sockets and sent < len(request):
                    try:
                        sock.send(request[sent:sent + 1])
                    except OSError:
                        pass
            sent += 1
            readable, _, _ = select.select(list(open_sockets), [], [], 0.2)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    open_sockets.discard(sock)  # the server closed it
        assert not open_sockets, f"{len(open_sockets)} of 20 slow or idle connections still open after 10 s"
    finally:
        for sock in idle + slow:
            sock.close()


def test_rest_listen_backlog_takes_a_burst_of_connections(toy_base):
    """100 connections while nothing accepts: all complete at once (a backlog of 5 left 94 waiting for SYN retries)."""
    core = ModelServer([versions.ServedModel("toy", str(toy_base), toy.CAP)])
    listening = make_rest_server(core, toy.HOST, 0)  # bound and listening, never serving: only the backlog holds
    port = listening.server_address[1]
    sockets = []
    try:
        for _ in range(100):
            sock = socket.socket()
            sock.settimeout(5)
            sock.connect((toy.HOST, port))  # blocks (then times out) once the accept queue is full
            sockets.append(sock)
    except TimeoutError:
        pytest.fail(f"connection {len(sockets) + 1} of 100 did not complete: listen backlog too small")
    finally:
        for sock in sockets:
            sock.close()
        listening.server_close()


# ---------------------------------------------------------------------------------------------------------
# Batching: stop() racing with run() (item 9).


def test_stop_between_the_stopped_check_and_the_queueing_cannot_strand_a_request(monkeypatch):
    """Deterministic interleaving: stop() runs exactly when run() has created its task (old code: after its check
    of `stopped`, before queueing it, so the task landed behind the end marker and waited forever)."""
    params = serving_config.BatchingParameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1)
    batcher = batching.SignatureBatcher(lambda inputs: {"y": inputs["x"] * 2}, params, "race")
    real_task = batching._Task

    def task_then_stop(*args, **kwargs):
        batcher.stop()
        return real_task(*args, **kwargs)

    monkeypatch.setattr(batching, "_Task", task_then_stop)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=batcher.run({"x": np.array([3])})), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the request raced with stop() and never returned"
    assert result["out"]["y"].tolist() == [6]


def test_requests_queued_before_stop_all_finish(monkeypatch):
    queued, release = threading.Semaphore(0), threading.Event()

    class CountingQueue(queue.Queue):
        def put(self, item, *args, **kwargs):
            super().put(item, *args, **kwargs)
            if isinstance(item, batching._Task):
                queued.release()

    def slow_double(inputs):
        release.wait(timeout=30)
        return {"y": inputs["x"] * 2}

    monkeypatch.setattr(batching.queue, "Queue", CountingQueue)
    params = serving_config.BatchingParameters(max_batch_size=2, batch_timeout_micros=0, num_batch_threads=1)
    batcher = batching.SignatureBatcher(slow_double, params, "drain")
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.run({"x": np.array([i])})),
                                daemon=True) for i in range(5)]
    for t in threads:
        t.start()
    for _ in range(5):
        assert queued.acquire(timeout=30)  # every request is queued (the first batch blocks in slow_double)
    batcher.stop()
    release.set()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == list(range(5))
    assert all(results[i]["y"].tolist() == [2 * i] for i in range(5))


# ---------------------------------------------------------------------------------------------------------
# Versions copied into the base path non-atomically; TF Serving's retry interval (item 10).


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count_loads(monkeypatch) -> list[int]:
    loads = []
    real = versions.load_version

    def counting(name, version, path, batching_params=None):
        loads.append(version)
        return real(name, version, path, batching_params)

    monkeypatch.setattr(versions, "load_version", counting)
    return loads


def _poll(model) -> None:
    model.poll(lambda served, request: None)


def test_version_copied_non_atomically_is_served_once_the_copy_is_complete(toy_base, tmp_path, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(toy_base / "1", base / "1")
    model = versions.ServedModel("toy", str(base), toy.CAP, clock=_Clock())
    _poll(model)
    assert model.current.version == 1
    partial = base / "2"  # `cp -r` in progress: everything but saved_model.pb so far
    shutil.copytree(toy_base / "1", partial, ignore=shutil.ignore_patterns("saved_model.pb"))
    for _ in range(8):  # more polls than TF Serving's retries while the copy is "running"
        _poll(model)
    assert model.current.version == 1
    newest, status = model.statuses()[0]
    assert newest == 2 and status.state == versions.State.END and status.error_message  # the failure is reported
    shutil.copy2(toy_base / "1" / "saved_model.pb", partial / "saved_model.pb")  # the copy finishes
    _poll(model)  # sees the change; waits one poll for the files to settle
    _poll(model)
    assert model.current is not None and model.current.version == 2, model.statuses()
    assert model.statuses()[0][1].state == versions.State.AVAILABLE


def test_failed_load_is_retried_at_tf_serving_interval_then_given_up(toy_base, tmp_path, monkeypatch):
    broken = tmp_path / "base" / "3"
    os.makedirs(broken / "variables")
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    clock = _Clock()
    model = versions.ServedModel("toy", str(tmp_path / "base"), toy.CAP, max_load_retries=2,
                                 load_retry_interval_s=60.0, clock=clock)
    loads = _count_loads(monkeypatch)
    _poll(model)
    assert loads == [3]
    clock.now += 59  # polls inside the interval do not retry
    _poll(model)
    _poll(model)
    assert loads == [3]
    clock.now += 1
    _poll(model)
    assert loads == [3, 3]  # retry 1
    clock.now += 60
    _poll(model)
    assert loads == [3, 3, 3]  # retry 2
    clock.now += 600
    _poll(model)
    assert loads == [3, 3, 3]  # max_load_retries spent
    assert versions.DEFAULT_MAX_LOAD_RETRIES == 5 and versions.DEFAULT_LOAD_RETRY_INTERVAL_S == 60.0  # TF Serving's
