"""Request errors with TF Serving's status codes: what every front end turns into a gRPC status or HTTP reply."""

from __future__ import annotations

import grpc
import tensorflow as tf


class ServingError(Exception):
    """A request error with a gRPC status code and TF Serving's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    """INVALID_ARGUMENT."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def grpc_code(error: tf.errors.OpError) -> grpc.StatusCode:
    """The gRPC code with the same number as a TF error code (TF and gRPC share the numbering)."""
    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code
    return grpc.StatusCode.UNKNOWN


def clean_op_message(error: tf.errors.OpError) -> str:
    """The message of a TF runtime error without the Python-side "Graph execution error" preamble."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [line for line in error.message.splitlines() if line.strip() and not line.startswith(skip)]
    return "\n".join(lines) or error.message


def from_op_error(error: tf.errors.OpError) -> ServingError:
    """A graph's runtime error (e.g. an in-graph assertion) as the status TF Serving answers with."""
    return ServingError(grpc_code(error), clean_op_message(error))
