"""The gRPC front end: TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import grpc
from absl import logging
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.dev_server.errors import ServingError
from serving.dev_server.handlers import ModelServer

DEFAULT_MAX_MESSAGE_MB = 256  # gRPC's 4 MiB default is too small for image batches


def _grpc_call(method: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Wrap a ModelServer method: ServingError -> the gRPC status; anything else -> INTERNAL."""

    def handler(request, context: grpc.ServicerContext):
        try:
            return method(request)
        except ServingError as e:
            context.abort(e.code, e.message)
        except Exception as e:  # a server bug must not look like a client error
            logging.exception("Internal error")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    return handler


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (Classify/Regress/MultiInference stay UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.Predict = _grpc_call(core.predict)
        self.GetModelMetadata = _grpc_call(core.get_model_metadata)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.GetModelStatus = _grpc_call(core.get_model_status)


def grpc_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Channel/server options: message limits for image batches; no silent port sharing."""
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0)]


def start_grpc_server(core: ModelServer, host: str, port: int, threads: int, max_message_mb: int
                      ) -> tuple[grpc.Server, int]:
    """Start the gRPC server; returns it and the bound port (useful with port 0)."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads),
                         options=grpc_options(max_message_mb))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port} (in use?); pick another --port")
    server.start()
    return server, bound
