"""The fastest correct compute path for this machine: what `--mixed_precision=auto` and `--jit_compile=auto` become.

Precision: bfloat16 where the hardware has bfloat16 arithmetic (x86 CPUs with AVX512_BF16 or AMX-BF16, GPUs of
compute capability 8.0 or more), float16 on older GPUs (tensor cores, with loss scaling), float32 otherwise.
bfloat16 on a CPU without those instructions is emulated and slower than float32, hence the hardware check. The
CPU's instructions are those oneDNN may use: `ONEDNN_MAX_CPU_ISA` (or its older name `DNNL_MAX_CPU_ISA`) caps
them, e.g. `AVX2` makes an AMX Xeon compute like an AVX2-only CPU, and then `auto` is float32 there too.

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
import os
from typing import Mapping

import tensorflow as tf
from absl import logging

from dcgan_tf import conv_forms
from dcgan_tf.config import Config, ConfigError, normalise_jit

PRECISIONS = ("auto", "none", "bfloat16", "float16")
# /proc/cpuinfo flags of x86 CPUs whose bfloat16 arithmetic oneDNN uses (dot products / tile matmuls).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's CPU ISA names, lowest first (the values ONEDNN_MAX_CPU_ISA takes; aliases share a rank): oneDNN
# uses no instruction above the cap. https://uxlfoundation.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html
ONEDNN_ISA_RANKS = {
    "SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5, "AVX512_CORE_VNNI": 6,
    "AVX512_CORE_BF16": 7, "AVX10_1_512": 8, "AVX512_CORE_FP16": 8, "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX": 9,
    "AVX10_1_512_AMX_FP16": 10, "AVX512_CORE_AMX_FP16": 10, "ALL": 99, "DEFAULT": 99,
}
# The lowest oneDNN ISA that uses each bfloat16 CPU flag.
BF16_FLAG_ISA = {"avx512_bf16": "AVX512_CORE_BF16", "amx_bf16": "AVX512_CORE_AMX"}
ISA_ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first that is set
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


def onednn_isa_cap(environ: Mapping[str, str]) -> str | None:
    """The ISA cap oneDNN runs under in a process with this environment (upper case), None when uncapped.

    Raises ConfigError for a value oneDNN does not know, which would otherwise be silently ignored.
    """
    for name in ISA_ENV_VARS:
        value = environ.get(name, "").strip().upper()
        if value:
            if value not in ONEDNN_ISA_RANKS:
                raise ConfigError(f"{name}={environ[name]!r} is not a oneDNN CPU ISA; use one of "
                                  f"{', '.join(ONEDNN_ISA_RANKS)}, or unset it")
            return None if ONEDNN_ISA_RANKS[value] == ONEDNN_ISA_RANKS["ALL"] else value
    return None


def usable_cpu_flags(flags: set[str], isa_cap: str | None) -> set[str]:
    """The bfloat16 flags among `flags` whose instructions oneDNN may use under `isa_cap` (None: no cap)."""
    if isa_cap is None:
        return set(flags)
    rank = ONEDNN_ISA_RANKS[isa_cap]
    return {flag for flag in flags if flag not in BF16_FLAG_ISA or ONEDNN_ISA_RANKS[BF16_FLAG_ISA[flag]] <= rank}


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU ((0, 0) when TensorFlow does not report one)."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        capabilities.append(tuple(capability))
    return capabilities


def choose_precision(gpus: list[tuple[int, int]], flags: set[str], isa_cap: str | None = None) -> Choice:
    """What `auto` means on a machine with these GPUs (compute capabilities) and CPU flags, oneDNN capped at
    `isa_cap` (ONEDNN_MAX_CPU_ISA; None: uncapped)."""
    if gpus:
        oldest = min(gpus)
        if oldest >= BF16_GPU_CAPABILITY:
            return Choice("bfloat16", f"GPU compute capability {oldest[0]}.{oldest[1]} >= 8.0 has bfloat16 "
                                      "tensor cores")
        return Choice("float16", f"GPU compute capability {oldest[0]}.{oldest[1]} < 8.0: float16 tensor cores "
                                 "(with loss scaling), no bfloat16")
    present = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    usable = [flag for flag in present if flag in usable_cpu_flags(flags, isa_cap)]
    if usable:
        return Choice("bfloat16", f"CPU has bfloat16 arithmetic ({', '.join(usable)})")
    if present:
        return Choice("none", f"the CPU has {', '.join(present)} but oneDNN is capped at ONEDNN_MAX_CPU_ISA="
                              f"{isa_cap}, below {BF16_FLAG_ISA[present[0]]}: float32 (bfloat16 would be emulated)")
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


def resolve(config: Config, strategy: tf.distribute.Strategy | None = None, saved: Config | None = None,
            environ: Mapping[str, str] | None = None) -> Config:
    """`config` with `resolved` filled: the precision and XLA setting this run uses, and why.

    `saved` is the config of the run being resumed: an `auto` setting keeps the value that run resolved to.
    `environ` (default: this process's) holds the oneDNN ISA cap (ONEDNN_MAX_CPU_ISA).
    Raises ConfigError when an explicit precision would change whether the optimizers use loss scaling, which
    changes what the checkpoint holds.
    """
    saved_resolved = (saved.resolved if saved is not None else {}) or {}
    gpus = gpu_capabilities()
    isa_cap = onednn_isa_cap(os.environ if environ is None else environ)
    precision = _resolve_one(config.mixed_precision, "mixed_precision", saved_resolved,
                             lambda: choose_precision(gpus, cpu_flags(), isa_cap))
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
    resolved.update(resolve_conv_forms(config, precision.value, jit.value == "true", strategy, saved_resolved,
                                       isa_cap))
    return config.replace(resolved=resolved)


def resolve_conv_forms(config: Config, precision: str, xla: bool, strategy: tf.distribute.Strategy | None,
                       saved_resolved: dict, isa_cap: str | None) -> dict:
    """The `resolved` entries for `--conv_kernels`: each paper conv's form, why, and the timings behind it.

    A resumed run keeps its forms (matmul and conv round differently). Several workers would each time their own
    machine and could disagree, so there `auto` is the machine-independent size rule.
    """
    layers = conv_forms.paper_convs(config)
    mode, explicit = conv_forms.parse(config.conv_kernels, layers)  # a bad value is an error even on resume
    saved_forms = Config(resolved=saved_resolved).conv_forms
    if mode == "auto" and saved_forms is not None:
        forms = {**saved_forms, **explicit}
        reason = f"resumed run: kept from its first start ({saved_resolved.get('conv_forms_reason', '')})"
        ms = saved_resolved.get("conv_forms_ms", "")
    elif mode == "auto" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        forms = {**conv_forms.size_rule(layers), **explicit}
        reason, ms = "several workers must compute alike and each would time its own machine: the size rule", ""
    else:
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        forms, reason, ms = conv_forms.choose(config, precision, max(config.batch_size // replicas, 1), xla, isa_cap)
    matmul = [name for name, form in forms.items() if form == "matmul"]
    which = (f"matmul form for {', '.join(matmul)}, oneDNN's conv for the others" if matmul
             else "oneDNN's conv for every layer")
    logging.info("Conv kernels (requested %s): %s (%s)%s.", config.conv_kernels, which, reason,
                 f"; per pass: {ms}" if ms else "")
    return {"conv_forms": conv_forms.spell(forms), "conv_forms_reason": reason, "conv_forms_ms": ms}


def _resolve_one(requested: str, key: str, saved_resolved: dict, choose) -> Choice:
    """An explicit request as given; `auto` as the resumed run resolved it, else as `choose()` says."""
    if requested != "auto":
        return Choice(requested, "requested explicitly")
    if key in saved_resolved:
        value = saved_resolved[key]
        value = normalise_jit(value) if key == "jit_compile" else value
        return Choice(value, f"resumed run: kept from its first start ({saved_resolved.get(key + '_reason', '')})")
    return choose()
