"""The configuration files shared with tensorflow_model_server: models.config and the batching parameters file."""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto) as the development server uses them."""

    max_batch_size: int = 1000  # TF Serving's defaults
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 1000000
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def validate(self) -> BatchingParameters:
        """Raise ValueError on values TF Serving would refuse too; returns self."""
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ValueError(f"max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1: {self}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes {sizes} must increase and end with max_batch_size "
                             f"{self.max_batch_size} (TF Serving's rule)")
        return self


_INT_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
# Fields of TF Serving's BatchingParameters that the development server accepts but does not implement.
_IGNORED_FIELDS = ("thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size",
                   "batch_padding_policy")
_FIELD = re.compile(r"\s*(\w+)\s*(?:\{\s*value\s*:\s*([^\s}]+)\s*\}|:\s*([^\s{}]+))")


def parse_batching_parameters(text: str, source: str = "batching parameters") -> BatchingParameters:
    """A text-format BatchingParameters (`max_batch_size { value: 64 }`, `allowed_batch_sizes: 8`, ...)."""
    text = re.sub(r"#[^\n]*", "", text)
    values: dict[str, object] = {}
    sizes: list[int] = []
    pos = 0
    while text[pos:].strip():
        match = _FIELD.match(text, pos)
        if not match:
            raise ValueError(f"{source}: cannot parse {text[pos:].strip()[:40]!r} (expected `name {{ value: N }}` "
                             "or `name: N`)")
        name, value = match.group(1), (match.group(2) or match.group(3)).strip('"')
        pos = match.end()
        try:
            if name in _INT_FIELDS:
                values[name] = int(value)
            elif name == "allowed_batch_sizes":
                sizes.append(int(value))
            elif name == "pad_variable_length_inputs":
                values[name] = {"true": True, "false": False}[value.lower()]
            elif name in _IGNORED_FIELDS:
                logging.warning("%s: %s is not implemented by the development server (ignored).", source, name)
            else:
                raise ValueError(f"{source}: unknown field {name!r} (not a TF Serving BatchingParameters field "
                                 "the development server knows)")
        except (KeyError, ValueError) as e:
            if isinstance(e, ValueError) and str(e).startswith(source):
                raise
            raise ValueError(f"{source}: bad value {value!r} for {name}") from None
    return BatchingParameters(**values, allowed_batch_sizes=tuple(sizes)).validate()


def read_batching_parameters(path: str) -> BatchingParameters:
    """The batching parameters file that tensorflow_model_server reads with --batching_parameters_file."""
    with open(path) as f:
        return parse_batching_parameters(f.read(), path)


def read_max_batch_size(path: str) -> int:
    """max_batch_size of a TF Serving batching parameters file."""
    return read_batching_parameters(path).max_batch_size


def read_model_config(path: str) -> list[tuple[str, str]]:
    """(name, base_path) of each model in a TF Serving models.config; relative paths are relative to the file."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    models = []
    for model in config.model_config_list.config:
        policy = model.model_version_policy.WhichOneof("policy_choice")
        if policy not in (None, "latest") or (policy == "latest" and model.model_version_policy.latest.num_versions
                                              not in (0, 1)):
            logging.warning("Model %s: version policy %s is not supported here; serving the latest version.",
                            model.name, policy)
        base = model.base_path if os.path.isabs(model.base_path) else os.path.join(os.path.dirname(path),
                                                                                   model.base_path)
        models.append((model.name, base))
    if not models:
        raise ValueError(f"{path} lists no model in model_config_list")
    return models
