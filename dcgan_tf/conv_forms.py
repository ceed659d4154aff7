"""Which form computes each of the paper's 4x4 stride-2 convolutions: oneDNN's conv kernels or the matmul form.

kernels.py can compute a paper conv (and its two gradients) either with TensorFlow's own conv ops (oneDNN on CPUs)
or as matmuls over space-to-depth patches (`conv_by_matmul` / `deconv_by_matmul`). Which is faster depends on
the layer's shape, the precision and the CPU: on an AMX Xeon the matmul form wins on 4x4 maps, on an AVX2 CPU the
balance is elsewhere, so no fixed size threshold is right everywhere. `--conv_kernels=auto` times both forms of
each layer at the run's shapes, precision and per-replica batch once (as cuDNN's benchmark mode does), keeps the
faster, and caches the timings per machine, ISA cap and shape (`--kernel_cache_dir`), so a second run on the same
machine makes the same choice without timing. fast_path.resolve records the choice in the run's config.json
`resolved` record; a resumed run computes exactly as it started.

Values of `--conv_kernels`: `auto`; `onednn` or `matmul` for every layer; `size` (machine-independent: the matmul
form where the small side is at most kernels.MATMUL_CONV_MAX_SIZE); or `LAYER=FORM,...` (the others auto).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

import keras
import tensorflow as tf
from absl import logging

from dcgan_tf import files, kernels, models
from dcgan_tf.config import Config, ConfigError

FORMS = ("onednn", "matmul")
MODES = ("auto", "onednn", "matmul", "size")
CACHE_FILE = "conv_forms.json"
REPEATS = 3  # timed passes per form and layer, interleaved; the median counts


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One paper conv of G or D: its layer name, kind, input size and channels."""

    name: str
    kind: str  # "conv" (D: size -> size/2) or "deconv" (G: size -> 2 size)
    in_size: int
    c_in: int
    c_out: int

    @property
    def small(self) -> int:
        """The small side (D's output, G's input), which kernels.uses_matmul_conv reads."""
        return self.in_size // 2 if self.kind == "conv" else self.in_size

    @property
    def shapes(self) -> tuple[list[int], list[int], list[int]]:
        """(input, kernel, output) shapes per example (batch dimension left out)."""
        small, large = self.small, 2 * self.small
        if self.kind == "conv":
            return [large, large, self.c_in], [4, 4, self.c_in, self.c_out], [small, small, self.c_out]
        return [small, small, self.c_in], [4, 4, self.c_out, self.c_in], [large, large, self.c_out]

    def describe(self) -> str:
        """E.g. 'conv 32x32->16x16 64->128'."""
        small, large = self.small, 2 * self.small
        sizes = f"{large}x{large}->{small}x{small}" if self.kind == "conv" else f"{small}x{small}->{large}x{large}"
        return f"{self.kind} {sizes} {self.c_in}->{self.c_out}"


def paper_convs(config: Config) -> list[ConvLayer]:
    """Every 4x4 stride-2 conv of D (conv0...) and transposed conv of G (deconv1..., to_image), in build order."""
    channels = config.channels or 3
    d_widths, g_widths = models.discriminator_widths(config), models.generator_widths(config)
    convs = [ConvLayer(f"conv{i}", "conv", config.image_size // 2**i, c_in, c_out)
             for i, (c_in, c_out) in enumerate(zip([channels, *d_widths[:-1]], d_widths))]
    names = [f"deconv{i}" for i in range(1, len(g_widths))] + ["to_image"]
    deconvs = [ConvLayer(name, "deconv", 4 * 2**i, c_in, c_out)
               for i, (name, c_in, c_out) in enumerate(zip(names, g_widths, [*g_widths[1:], channels]))]
    return convs + deconvs


def choosable(layer: ConvLayer) -> bool:
    """Whether both forms may compute `layer`: not conv1, whose matmul form breaks Grappler's fusion of the
    input layer before it (kernels.Layers.conv), and only on even sizes (the matmul form's space-to-depth)."""
    return layer.name != "conv1" and layer.in_size % 2 == 0


def size_rule(layers: list[ConvLayer]) -> dict[str, str]:
    """The machine-independent choice: the matmul form where the small side is at most MATMUL_CONV_MAX_SIZE."""
    return {layer.name: "matmul" if choosable(layer) and kernels.uses_matmul_conv(layer.small) else "onednn"
            for layer in layers}


def parse(spec: str, layers: list[ConvLayer]) -> tuple[str, dict[str, str]]:
    """`--conv_kernels` as (mode for the unnamed layers, {layer: form} for the named ones); ConfigError if bad."""
    spec = (spec or "auto").strip()
    if "=" not in spec:
        if spec not in MODES:
            raise ConfigError(f"conv_kernels={spec!r} must be one of {', '.join(MODES)} or LAYER=FORM,... "
                              f"(FORM: {' or '.join(FORMS)})")
        return spec, {}
    names = {layer.name: layer for layer in layers}
    explicit = {}
    for item in spec.split(","):
        name, _, form = (part.strip() for part in item.partition("="))
        if name not in names or form not in FORMS:
            raise ConfigError(f"conv_kernels item {item!r}: needs LAYER=FORM with LAYER one of {', '.join(names)} "
                              f"and FORM {' or '.join(FORMS)}")
        if form == "matmul" and not choosable(names[name]):
            raise ConfigError(f"conv_kernels item {item!r}: {name} has no matmul form (see dcgan_tf/conv_forms.py)")
        explicit[name] = form
    return "auto", explicit


# ---------------------------------------------------------------------------------------------------------
# The two forms of a layer's pass (forward, input gradient, kernel gradient), and their timing.

def native_conv(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """TensorFlow's (oneDNN's) 4x4 stride-2 'same' conv."""
    return tf.nn.conv2d(inputs, kernel, 2, "SAME")


def native_deconv(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """TensorFlow's (oneDNN's) 4x4 stride-2 'same' transposed conv, output twice the input's size."""
    batch, size = tf.shape(inputs)[0], inputs.shape[1]
    return tf.nn.conv2d_transpose(inputs, kernel, [batch, 2 * size, 2 * size, kernel.shape[2]], 2, "SAME")


IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {
    "conv": {"onednn": native_conv, "matmul": kernels.conv_by_matmul},
    "deconv": {"onednn": native_deconv, "matmul": kernels.deconv_by_matmul},
}


def compute_dtype(precision: str) -> tf.DType:
    """The dtype the layers compute in under `precision` ("none" = float32)."""
    return tf.as_dtype(keras.DTypePolicy(kernels.KERAS_POLICIES[precision]).compute_dtype)


def layer_pass(op: Callable, layer: ConvLayer, batch: int, dtype: tf.DType, xla: bool = False,
               seed: int = 0) -> Callable[[], list[tf.Tensor]]:
    """A tf.function running `op`'s forward pass, input gradient and kernel gradient of `layer` once."""
    in_shape, kernel_shape, out_shape = layer.shapes
    inputs = tf.cast(tf.random.stateless_normal([batch, *in_shape], [seed, 1]), dtype)
    kernel = tf.cast(tf.random.stateless_normal(kernel_shape, [seed, 2]) * 0.02, dtype)
    out_grad = tf.random.stateless_normal([batch, *out_shape], [seed, 3])

    def run():
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            loss = tf.reduce_sum(tf.cast(op(inputs, kernel), tf.float32) * out_grad)
        return tape.gradient(loss, [inputs, kernel])

    # A concrete function: timing builds one function per layer and form on purpose, which tf.function's
    # frequent-retracing detector (keyed by the Python code object) would report as a warning in the run's log.
    return tf.function(run, jit_compile=xla).get_concrete_function()


def time_pass(layer: ConvLayer, form: str, run: Callable[[], list[tf.Tensor]]) -> float:
    """Seconds of one call of `run` (the results read back, so the work is done); the default timer."""
    start = time.perf_counter()
    for result in run():
        result.numpy()
    return time.perf_counter() - start


Timer = Callable[[ConvLayer, str, Callable[[], list[tf.Tensor]]], float]


def measure(layers: list[ConvLayer], batch: int, dtype: tf.DType, xla: bool = False, timer: Timer | None = None,
            implementations: Mapping[str, Mapping[str, Callable]] | None = None,
            repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """{layer: {form: median seconds}} for each choosable layer, both forms timed in turn after a warm-up call.

    `timer(layer, form, run)` gives one call's seconds (default time_pass); tests pass their own.
    """
    implementations = implementations or IMPLEMENTATIONS
    timer = timer or time_pass
    timings = {}
    for layer in layers:
        if not choosable(layer):
            continue
        runs = {form: layer_pass(implementations[layer.kind][form], layer, batch, dtype, xla) for form in FORMS}
        for run in runs.values():
            run()  # tracing and first-call allocation, untimed
        samples: dict[str, list[float]] = {form: [] for form in FORMS}
        for _ in range(repeats):  # interleaved, so a change in the machine's load hits both forms alike
            for form, run in runs.items():
                samples[form].append(timer(layer, form, run))
        timings[layer.name] = {form: statistics.median(values) for form, values in samples.items()}
    return timings


def fastest(timings: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """{layer: the form with the least time}; a tie keeps oneDNN's conv (TensorFlow's own op)."""
    return {name: min(FORMS, key=lambda form: (times[form], FORMS.index(form))) for name, times in timings.items()}


# ---------------------------------------------------------------------------------------------------------
# The per-machine cache of timings.

def machine_key(isa_cap: str | None) -> str:
    """What the timings depend on besides the shapes: the CPU, its cores, the oneDNN ISA cap, TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1] for line in lines if line.startswith("flags"))
        cpu += " flags:" + hashlib.sha1(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    except (OSError, StopIteration):
        pass
    return f"{cpu} | cores {os.cpu_count()} | isa {isa_cap or 'all'} | tf {tf.__version__}"


def shape_key(layer: ConvLayer, batch: int, dtype: tf.DType, xla: bool) -> str:
    """A layer pass's cache key within a machine: kind, sizes, channels, batch, dtype, XLA."""
    return f"{layer.describe()} batch {batch} {dtype.name}{' xla' if xla else ''}"


def read_cache(path: str) -> dict[str, Any]:
    """The cache file's contents ({} when absent or unreadable: the cache is only ever an optimisation)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_measure(layers: list[ConvLayer], batch: int, dtype: tf.DType, xla: bool, cache_dir: str,
                   isa_cap: str | None, timer: Timer | None = None) -> tuple[dict[str, dict[str, float]], bool]:
    """measure() through the cache in `cache_dir` ("" = none): (timings, whether all came from the cache)."""
    path = os.path.join(os.path.expanduser(cache_dir), CACHE_FILE) if cache_dir else ""
    cache = read_cache(path) if path else {}
    machine = cache.setdefault(machine_key(isa_cap), {})
    wanted = [layer for layer in layers if choosable(layer)]
    missing = [layer for layer in wanted if shape_key(layer, batch, dtype, xla) not in machine]
    for name, times in measure(missing, batch, dtype, xla, timer).items():
        layer = next(layer for layer in missing if layer.name == name)
        machine[shape_key(layer, batch, dtype, xla)] = times
    if path and missing:
        try:
            with files.atomic_write(path) as f:
                json.dump(cache, f, indent=1, sort_keys=True)
        except OSError as e:  # a read-only home: time again next run rather than fail the run
            logging.warning("Cannot write the conv timing cache %s (%s); the next run times again.", path, e)
    return {layer.name: machine[shape_key(layer, batch, dtype, xla)] for layer in wanted}, not missing


def spell(forms: Mapping[str, str]) -> str:
    """{layer: form} as "LAYER=FORM,..." (how `resolved` records it: Config.conv_forms reads it back)."""
    return ",".join(f"{name}={form}" for name, form in forms.items())


def spell_timings(timings: Mapping[str, Mapping[str, float]]) -> str:
    """Timings in seconds as "LAYER onednn X ms, matmul Y ms; ..." for the log and `resolved`."""
    return "; ".join(f"{name} " + ", ".join(f"{form} {seconds * 1e3:.3g} ms" for form, seconds in times.items())
                     for name, times in timings.items())


def choose(config: Config, precision: str, batch: int, xla: bool, isa_cap: str | None,
           timer: Timer | None = None) -> tuple[dict[str, str], str, str]:
    """(forms of every paper conv, the reason, the timings) for `config.conv_kernels` at these settings."""
    layers = paper_convs(config)
    mode, explicit = parse(config.conv_kernels, layers)
    if mode in FORMS:
        return {layer.name: mode if choosable(layer) else "onednn" for layer in layers}, "requested explicitly", ""
    if mode == "size":
        return size_rule(layers), f"requested: the matmul form where the small side is at most " \
                                  f"{kernels.MATMUL_CONV_MAX_SIZE}", ""
    timings, from_cache = cached_measure([layer for layer in layers if layer.name not in explicit], batch,
                                         compute_dtype(precision), xla, config.kernel_cache_dir, isa_cap, timer)
    forms = {layer.name: "onednn" for layer in layers} | fastest(timings) | explicit
    where = "cached timings of this machine" if from_cache else "timed now"
    reason = (f"the faster form of each layer at batch {batch} in {compute_dtype(precision).name}"
              f"{' under XLA' if xla else ''} ({where}, ISA cap {isa_cap or 'none'})"
              + (f"; {', '.join(f'{k}={v}' for k, v in explicit.items())} requested explicitly" if explicit else ""))
    return forms, reason, spell_timings(timings)
