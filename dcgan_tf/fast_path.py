"""The fastest correct compute path for this machine: what `--mixed_precision=auto` and `--jit_compile=auto` become.

Precision: bfloat16 where the hardware has bfloat16 arithmetic (x86 CPUs with AVX512_BF16 or AMX-BF16, GPUs of
compute capability 8.0 or more), float16 on older GPUs (tensor cores, with loss scaling), float32 otherwise.
bfloat16 on a CPU without those instructions is emulated and slower than float32, hence the hardware check.

XLA: on only where it was measured faster (docs/performance.md). On the 2-core CPUs measured, the XLA step was
slower than TensorFlow's own oneDNN kernels in every precision, so `auto` leaves it off on CPUs; GPUs were not
measured, so `auto` leaves it off there too (`--jit_compile=true` turns it on). It is never on under a
MirroredStrategy over logical CPU devices, where it fails: XLA cannot read one CPU device's variables from another
("Trying to access resource ... on CPU:1 from CPU:0").

A run records the requested and the resolved values (and why) in config.json; a resumed `auto` run keeps what
it resolved to the first time, so its numerics (XLA draws a different noise stream) and its checkpoint's
structure (float16 adds a loss-scale optimizer) do not change when it moves to another machine.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
from absl import logging

from dcgan_tf.config import Config, ConfigError, normalise_jit

PRECISIONS = ("auto", "none", "bfloat16", "float16")
# /proc/cpuinfo flags of x86 CPUs whose bfloat16 arithmetic oneDNN uses (dot products / tile matmuls).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# GPUs of this compute capability or more (Ampere on) have bfloat16 tensor cores.
BF16_GPU_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class Choice:
    """A resolved setting and the reason for it, as logged and written to config.json."""

    value: str
    reason: str


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU ((0, 0) when TensorFlow does not report one)."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        capabilities.append(tuple(capability))
    return capabilities


def choose_precision(gpus: list[tuple[int, int]], flags: set[str]) -> Choice:
    """What `auto` means on a machine with these GPUs (compute capabilities) and CPU flags."""
    if gpus:
        oldest = min(gpus)
        if oldest >= BF16_GPU_CAPABILITY:
            return Choice("bfloat16", f"GPU compute capability {oldest[0]}.{oldest[1]} >= 8.0 has bfloat16 "
                                      "tensor cores")
        return Choice("float16", f"GPU compute capability {oldest[0]}.{oldest[1]} < 8.0: float16 tensor cores "
                                 "(with loss scaling), no bfloat16")
    present = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if present:
        return Choice("bfloat16", f"CPU has bfloat16 arithmetic ({', '.join(present)})")
    return Choice("none", f"no GPU and the CPU has no bfloat16 arithmetic ({' / '.join(BF16_CPU_FLAGS)}): "
                          "float32 (bfloat16 would be emulated and slower)")


def choose_jit(gpus: list[tuple[int, int]], mirrored_over_cpus: bool) -> Choice:
    """What `auto` means for XLA: off unless measured faster (nowhere yet, see the module docstring)."""
    if mirrored_over_cpus:
        return Choice("false", "XLA fails under a MirroredStrategy over logical CPU devices (it cannot read one "
                               "device's variables from another)")
    if gpus:
        return Choice("false", "XLA not measured on GPUs: off (--jit_compile=true turns it on)")
    return Choice("false", "XLA measured slower than the plain step on CPUs (docs/performance.md)")


def is_mirrored_over_cpus(strategy: tf.distribute.Strategy | None) -> bool:
    """A strategy with several replicas on logical CPU devices (where XLA fails: see the module docstring)."""
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return False
    devices = getattr(strategy.extended, "worker_devices", ())
    return all("CPU" in device.upper() for device in devices)


def resolve(config: Config, strategy: tf.distribute.Strategy | None = None, saved: Config | None = None) -> Config:
    """`config` with `resolved` filled: the precision and XLA setting this run uses, and why.

    `saved` is the config of the run being resumed: an `auto` setting keeps the value that run resolved to.
    Raises ConfigError when an explicit precision would change whether the optimizers use loss scaling, which
    changes what the checkpoint holds.
    """
    saved_resolved = (saved.resolved if saved is not None else {}) or {}
    gpus = gpu_capabilities()
    precision = _resolve_one(config.mixed_precision, "mixed_precision", saved_resolved,
                             lambda: choose_precision(gpus, cpu_flags()))
    jit = _resolve_one(normalise_jit(config.jit_compile), "jit_compile", saved_resolved,
                       lambda: choose_jit(gpus, is_mirrored_over_cpus(strategy)))
    if jit.value == "true" and is_mirrored_over_cpus(strategy):
        raise ConfigError("--jit_compile=true fails under a MirroredStrategy over logical CPU devices (XLA "
                          "cannot read one device's variables from another); use --jit_compile=auto or false, or "
                          "--cpu_replicas=0")
    before = saved_resolved.get("mixed_precision")
    if before and (before == "float16") != (precision.value == "float16"):
        raise ConfigError(
            f"cannot resume {config.model_dir} in {precision.value}: it was trained in {before}, and float16 "
            f"trains with a loss-scale optimizer whose state is in the checkpoint. Resume with "
            f"--mixed_precision={before} (or auto), or start a new --model_dir")
    resolved = {"mixed_precision": precision.value, "mixed_precision_reason": precision.reason,
                "jit_compile": jit.value == "true", "jit_compile_reason": jit.reason}
    logging.info("Precision: %s (requested %s: %s). XLA: %s (requested %s: %s).", precision.value,
                 config.mixed_precision, precision.reason, "on" if jit.value == "true" else "off",
                 normalise_jit(config.jit_compile), jit.reason)
    return config.replace(resolved=resolved)


def _resolve_one(requested: str, key: str, saved_resolved: dict, choose) -> Choice:
    """An explicit request as given; `auto` as the resumed run resolved it, else as `choose()` says."""
    if requested != "auto":
        return Choice(requested, "requested explicitly")
    if key in saved_resolved:
        value = saved_resolved[key]
        value = normalise_jit(value) if key == "jit_compile" else value
        return Choice(value, f"resumed run: kept from its first start ({saved_resolved.get(key + '_reason', '')})")
    return choose()
