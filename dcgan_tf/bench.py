"""Speed measurements of dcgan_tf, one JSON line per measurement with its settings.

    python -m dcgan_tf.bench train --image_size=64 --ngf=64 --ndf=64 --batch_size=64 [--dataset=random]
    python -m dcgan_tf.bench train --dataset=fashion_mnist --data_dir=$TFDS_DIR --image_size=32 --channels=1
    python -m dcgan_tf.bench input --dataset=folder:/path/to/pngs --image_size=64 --batch_size=64
    python -m dcgan_tf.bench sample --image_size=64 --ngf=64 [--model_dir=runs/x] [--grpc] [--clients=8]
    python -m dcgan_tf.bench flops --image_size=64 --ngf=64 --ndf=64 --batch_size=64
    python -m dcgan_tf.bench compare --image_size=64 --ngf=64 --ndf=64 --batch_size=64 \
        --torch_python=/tmp/torchenv/bin/python [--torch_reference=PATH/torch_dcgan_reference.py] [--isa=AVX2]
        [--kernels_check]

Every rate is the median of several timed windows after warm-up (tracing, XLA compilation and thread-pool
start excluded). `train` also reports CPU seconds per step (this process's user+system time), which stays
meaningful when other processes share the machine, and the achieved GFLOP/s against the machine's own
measured matmul rate in the precision the step computes in (see dcgan_tf/flops.py for what is counted).
`compare` runs every variant (dcgan_tf's default path, float32, bfloat16, XLA; the PyTorch peer eager,
channels_last, bf16 autocast, channels_last + bf16 when --torch_python is given) in its own process, round
after round in turn, and prints one line per variant with its median rate and its ratio to the fastest PyTorch
variant of the same precision: the side-by-side table of docs/performance.md.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from dcgan_tf import cli
from dcgan_tf import flops as flops_lib
from dcgan_tf import conv_forms, input_pipeline
from dcgan_tf.config import Config, validate
from dcgan_tf.gan import build_gan
from dcgan_tf.models import build_discriminator, build_generator

SERVING_DEFAULT = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY

RANDOM = "random"  # --dataset value: one fixed random batch, so only the train step is measured
COMMANDS = ("train", "input", "sample", "flops", "compare", "layers")
_REPO_BATCHING_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving",
                                   "batching_parameters.txt")


def machine() -> dict[str, Any]:
    """A short description of where the numbers were taken (CPU, cores, load, TF version, GPUs)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "load_1min": round(os.getloadavg()[0], 2),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def timed_windows(run: Callable[[], Any], windows: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Call `run` warmup times untimed, then `windows` times: (wall seconds, this process's CPU seconds)."""
    for _ in range(warmup):
        run()
    walls, cpus = [], []
    for _ in range(windows):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def _resolved(config: Config) -> Config:
    """The config with `auto` precision/XLA resolved for this machine, as train.py does for a new run."""
    from dcgan_tf import fast_path

    return config if config.resolved else fast_path.resolve(config)


def matmul_dtype(config: Config) -> tf.DType:
    """The dtype whose matmul rate the step's FLOP rate is compared with (its compute precision)."""
    return conv_forms.compute_dtype(config.compute_precision)


def _channels(config: Config) -> Config:
    """The config with a concrete channel count (3 for random data, else the dataset's own)."""
    if config.dataset == RANDOM:
        return config.replace(channels=config.channels or 3)
    return input_pipeline.resolve_channels(config, download=False)


def train_batches(config: Config) -> tf.data.Dataset:
    """Batches for the train benchmark: one fixed random batch repeated, or the real input pipeline."""
    if config.dataset == RANDOM:
        shape = [config.batch_size, config.image_size, config.image_size, config.channels]
        real = tf.random.stateless_uniform(shape, seed=[config.seed, 1], minval=-1.0, maxval=1.0)
        return tf.data.Dataset.from_tensors(real).repeat().prefetch(2)
    return input_pipeline.make_dataset(config)


def bench_train(
    config: Config,
    windows: int = 5,
    steps_per_window: int = 3,
    warmup_steps: int = 2,
    steps_per_execution: int = 1,
    matmul_gflops: float | None = None,
    matmul_gflops_per_cpu_s: float | None = None,
) -> dict[str, Any]:
    """Training images/s of fit()'s own train function (the step, plus the input pipeline unless random)."""
    config = _resolved(_channels(config))
    # In the step's precision and with the run's conv forms, as train.py builds it.
    gan = build_gan(config, precision=config.compute_precision, conv_forms=config.conv_forms)
    if steps_per_execution > 1:
        # Keras reads it when it builds the train function: that many steps per call, in one tf.function.
        gan.steps_per_execution = steps_per_execution
    if steps_per_window % steps_per_execution:
        raise ValueError(f"steps_per_window={steps_per_window} must be a multiple of "
                         f"steps_per_execution={steps_per_execution}")
    gan.make_train_function()  # the function fit() calls: steps_per_execution steps, XLA if jit_compile
    train_function = gan.train_function
    iterator = iter(train_batches(config))

    def run_window(steps: int) -> None:
        for _ in range(steps // steps_per_execution):
            logs = train_function(iterator)
        float(logs["d_loss"])  # wait for the device: the step is asynchronous until a value is read

    start = time.perf_counter()
    run_window(max(warmup_steps, steps_per_execution))  # tracing, XLA compilation, first-call allocations
    warmup_s = time.perf_counter() - start
    walls, cpus = timed_windows(lambda: run_window(steps_per_window), windows, warmup=0)
    step_s = statistics.median(walls) / steps_per_window
    step_flops = flops_lib.train_step_flops(gan.generator, gan.discriminator, config.batch_size)
    result = {
        "bench": "train", **_settings(config), "steps_per_execution": steps_per_execution,
        "img_per_s": round(config.batch_size / step_s, 2), "ms_per_step": round(step_s * 1e3, 1),
        "cpu_s_per_step": round(statistics.median(cpus) / steps_per_window, 3),
        "window_img_per_s": [round(config.batch_size * steps_per_window / w, 2) for w in walls],
        "warmup_s": round(warmup_s, 1), "gflop_per_step": round(step_flops.per_step / 1e9, 2),
        "achieved_gflop_per_s": round(step_flops.per_step / step_s / 1e9, 1),
    }
    if matmul_gflops:
        result["matmul_gflop_per_s"] = round(matmul_gflops, 1)
        result["fraction_of_matmul"] = round(result["achieved_gflop_per_s"] / matmul_gflops, 3)
    # The same comparison per second of CPU time: what holds up while other processes share the machine.
    result["achieved_gflop_per_cpu_s"] = round(step_flops.per_step / 1e9 / max(result["cpu_s_per_step"], 1e-3), 1)
    if matmul_gflops_per_cpu_s:
        result["matmul_gflop_per_cpu_s"] = round(matmul_gflops_per_cpu_s, 1)
        result["fraction_of_matmul_per_cpu_s"] = round(result["achieved_gflop_per_cpu_s"] / matmul_gflops_per_cpu_s, 3)
    return result


def bench_input(config: Config, windows: int = 5, batches_per_window: int = 20) -> dict[str, Any]:
    """Images/s of the input pipeline alone (decode, cache, shuffle, batch, prefetch)."""
    config = _channels(config)
    if config.dataset == RANDOM:
        raise ValueError("the input benchmark needs a real dataset: --dataset=synthetic, folder:PATH or a TFDS name")
    iterator = iter(input_pipeline.make_dataset(config))

    def run_window() -> None:
        for _ in range(batches_per_window):
            next(iterator)

    start = time.perf_counter()
    run_window()  # fills the cache on the first pass for small datasets; excluded like any warm-up
    warmup_s = time.perf_counter() - start
    walls, _ = timed_windows(run_window, windows, warmup=0)
    images = config.batch_size * batches_per_window
    return {"bench": "input", **_settings(config), "img_per_s": round(images / statistics.median(walls), 1),
            "window_img_per_s": [round(images / w, 1) for w in walls], "warmup_s": round(warmup_s, 1)}


def _latency_stats(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    """p50/p99 latency in ms over `repeats` calls after one warm-up."""
    walls, _ = timed_windows(call, repeats, warmup=2)
    ms = np.array(walls) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _throughput(call: Callable[[], Any], batch: int, windows: int) -> float:
    """Images/s of `call` producing `batch` images (median of windows)."""
    walls, _ = timed_windows(call, windows, warmup=1)
    return round(batch / statistics.median(walls), 1)


def sample_generator(config: Config, model_dir: str | None) -> tuple[Config, keras.Model]:
    """The generator of a training run, or a freshly initialised one (speed does not depend on the weights)."""
    if model_dir:
        from dcgan_tf import checkpointing  # imported here: only this path needs a checkpoint

        run_config, gan = checkpointing.load_run(model_dir)
        return run_config, gan.generator
    config = config.replace(channels=config.channels or 3)
    return config, build_generator(config)


def bench_sample(config: Config, model_dir: str | None = None, grpc: bool = False, repeats: int = 50,
                 batch: int = 64, windows: int = 5, clients: int = 0, client_requests: int = 50,
                 batching_parameters_file: str | None = None, concurrent_rounds: int = 1) -> list[dict[str, Any]]:
    """Generator latency (batch 1, p50/p99) and throughput (batch `batch`): in-process, from the SavedModel
    (tf.saved_model.load), through TF Serving's session-based loader, and (with grpc=True) through the
    development server's (serving/dev_server) gRPC PredictionService; with clients > 0 also `clients` concurrent
    gRPC clients sending batch-1 requests, without and with the server's request batching (`concurrent_rounds`
    pairs)."""
    from dcgan_tf import export  # imported here: the train/input benchmarks need no serving stack

    config, generator = sample_generator(config, model_dir)
    z1 = np.random.default_rng(0).uniform(-1, 1, [1, config.nz]).astype(np.float32)
    zb = np.random.default_rng(1).uniform(-1, 1, [batch, config.nz]).astype(np.float32)
    settings = {"bench": "sample", "image_size": config.image_size, "ngf": config.ngf, "nz": config.nz,
                "channels": config.channels, "batch": batch, "machine": machine()}
    results = []
    in_process = tf.function(lambda z: generator(z, training=False))
    results.append({**settings, "path": "in_process",
                    **_latency_stats(lambda: in_process(z1).numpy(), repeats),
                    "img_per_s": _throughput(lambda: in_process(zb).numpy(), batch, windows)})
    with tempfile.TemporaryDirectory() as base:
        # Speed does not depend on the BatchNorm statistics: skip their re-estimation (minutes at paper size).
        version_dir = export.export_generator(generator, config, base, version=1, bn_samples=0,
                                              max_images=max(batch, export.DEFAULT_MAX_IMAGES))
        serve = tf.saved_model.load(version_dir).signatures[SERVING_DEFAULT]
        results.append({**settings, "path": "saved_model",
                        **_latency_stats(lambda: serve(z=tf.constant(z1))["images"].numpy(), repeats),
                        "img_per_s": _throughput(lambda: serve(z=tf.constant(zb))["images"].numpy(), batch,
                                                 windows)})
        results.append({**settings, "path": "session_loader", **_bench_session(version_dir, z1, zb, batch, repeats,
                                                                                windows)})
        if grpc:
            results.append({**settings, "path": "grpc_local_server",
                            **_bench_grpc(base, z1, zb, batch, repeats, windows)})
        if clients > 0:
            from serving.dev_server import config as serving_config

            params = serving_config.read_batching_parameters(batching_parameters_file) if \
                batching_parameters_file else serving_config.BatchingParameters()
            for round_ in range(concurrent_rounds):  # interleaved, so load changes hit both alike
                for batching in (None, params):
                    results.append({**settings, "round": round_ + 1,
                                    **_bench_concurrent(base, config.nz, clients, client_requests, batching)})
    return results


def _bench_session(version_dir: str, z1: np.ndarray, zb: np.ndarray, batch: int, repeats: int, windows: int
                   ) -> dict[str, float]:
    """serving_default run the way TF Serving runs it: session-based loader, SignatureDef tensor names."""
    from serving.dev_server import versions

    loaded = versions.load_version("dcgan", 1, version_dir)
    stats = _latency_stats(lambda: loaded.run_session(SERVING_DEFAULT, {"z": z1})["images"], repeats)
    return {**stats, "img_per_s": _throughput(lambda: loaded.run_session(SERVING_DEFAULT, {"z": zb})["images"],
                                              batch, windows)}


def _local_server(base: str, threads: int, batching: Any = None, with_core: bool = False) -> tuple[Any, ...]:
    """The development server's (serving/dev_server) core over `base` with a gRPC front end on a free loopback
    port: (server, port) or, with_core, (server, port, core)."""
    from serving.dev_server import grpc_frontend, handlers, versions

    core = handlers.ModelServer([versions.ServedModel("dcgan", base, batching=batching)])
    core.poll_all()  # loads and warms up version 1
    server, port = grpc_frontend.start_grpc_server(core, "127.0.0.1", 0, threads=threads, max_message_mb=64)
    return (server, port, core) if with_core else (server, port)


def _bench_grpc(base: str, z1: np.ndarray, zb: np.ndarray, batch: int, repeats: int, windows: int
                ) -> dict[str, float]:
    """Predict over gRPC on localhost through the development server, serving/dev_server (tensorflow_model_server
    cannot run here)."""
    from serving import client

    server, port = _local_server(base, threads=4)
    try:
        stub = client.make_stub(f"127.0.0.1:{port}", max_message_mb=64)
        stats = _latency_stats(lambda: client.generate(stub, z1), repeats)
        return {**stats, "img_per_s": _throughput(lambda: client.generate(stub, zb), batch, windows)}
    finally:
        server.stop(grace=None)


def _bench_concurrent(base: str, nz: int, clients: int, requests_per_client: int, batching: Any,
                      time_limit_s: float = 120.0) -> dict[str, Any]:
    """`clients` threads each sending `requests_per_client` batch-1 serving_default requests over loopback gRPC."""
    import threading

    from serving import client

    server, port, core = _local_server(base, threads=clients + 2, batching=batching, with_core=True)
    stub = client.make_stub(f"127.0.0.1:{port}", max_message_mb=64)
    z = np.random.default_rng(2).uniform(-1, 1, [1, nz]).astype(np.float32)
    client.generate(stub, z)  # connection set-up
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit_s  # bounded in count and time

    def one_client() -> None:
        for _ in range(requests_per_client):
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            try:
                client.generate(stub, z, retries=0)
            except Exception as e:  # counted and reported, not hidden
                errors.append(str(e)[:200])
                continue
            latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        wall = time.perf_counter() - start
        server.stop(grace=None)
    # Rows per merged run of serving_default (the warm-up's one run of one row included).
    stats = core.models["dcgan"].current.batching_stats().get(SERVING_DEFAULT, {"runs": 0, "rows": 0})
    ms = np.array(latencies or [float("nan")]) * 1e3
    return {"path": "grpc_concurrent_batched" if batching is not None else "grpc_concurrent_unbatched",
            "clients": clients, "requests": len(latencies), "errors": len(errors),
            "batching": dataclasses.asdict(batching) if batching is not None else None,
            "img_per_s": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rows_per_batched_run": round(stats["rows"] / stats["runs"], 2) if stats["runs"] else None}


def bench_flops(config: Config, matmul_gflops: float | None = None) -> dict[str, Any]:
    """Analytic FLOPs of G, D and one train step, and the machine's measured matmul rate."""
    config = config.replace(channels=config.channels or 3)
    g, d = build_generator(config), build_discriminator(config)
    step = flops_lib.train_step_flops(g, d, config.batch_size)
    result = {"bench": "flops", **_settings(config), "g_forward_mflop_per_image": round(step.g_forward / 1e6, 2),
              "d_forward_mflop_per_image": round(step.d_forward / 1e6, 2),
              "step_gflop_per_image": round(step.per_example / 1e9, 4),
              "step_gflop_per_batch": round(step.per_step / 1e9, 2)}
    if matmul_gflops:
        result["matmul_gflop_per_s"] = round(matmul_gflops, 1)
        # The step rate this machine could reach if every FLOP ran at the matmul rate.
        result["img_per_s_at_matmul_rate"] = round(matmul_gflops * 1e9 / step.per_example, 1)
    return result


def bench_layers(config: Config, windows: int = 3, repeats: int = 5) -> Iterator[dict[str, Any]]:
    """Each paper conv layer's forward + input gradient + kernel gradient, by TensorFlow's conv kernels and by
    kernels.conv_by_matmul / deconv_by_matmul, in the step's precision: which the model uses where, and why."""
    config = _resolved(config)
    dtype, batch = matmul_dtype(config), config.batch_size
    layers = conv_forms.paper_convs(config)
    used = config.conv_forms or conv_forms.size_rule(layers)
    for layer in layers:
        small, large = layer.small, 2 * layer.small
        gflop = 3 * 2 * batch * small * small * 16 * layer.c_in * layer.c_out / 1e9  # forward and both gradients
        for name, op in conv_forms.IMPLEMENTATIONS[layer.kind].items():
            run = conv_forms.layer_pass(op, layer, batch, dtype, seed=config.seed)
            walls, _ = timed_windows(lambda: [g.numpy() for g in [run() for _ in range(repeats)][-1]], windows)
            seconds = float(np.median(walls)) / repeats
            yield {"bench": "layers", **_settings(config), "layer": f"{layer.kind} {large}x{large}<->{small}x{small} "
                   f"{layer.c_in}->{layer.c_out}", "name": layer.name, "implementation": name,
                   "gflop": float(f"{gflop:.6g}"), "ms": round(seconds * 1e3, 2),
                   "gflop_per_s": round(gflop / seconds, 1), "used_by_model": used.get(layer.name) == name}


# ---------------------------------------------------------------------------------------------------------
# Side by side: dcgan_tf's variants and the PyTorch peer's, interleaved.

# name -> (mixed_precision, jit_compile) for dcgan_tf, or (channels_last, bf16) for the PyTorch peer.
TF_VARIANTS = {"dcgan_tf_default": ("auto", "auto"), "dcgan_tf_float32": ("none", "false"),
               "dcgan_tf_bfloat16": ("bfloat16", "false"), "dcgan_tf_xla_float32": ("none", "true"),
               "dcgan_tf_xla_bfloat16": ("bfloat16", "true"), "dcgan_tf_size_rule": ("auto", "auto")}
# dcgan_tf variants with a --conv_kernels other than auto: the fixed size rule, to show what the timed choice gains.
TF_CONV_KERNELS = {"dcgan_tf_size_rule": "size"}
TORCH_VARIANTS = {"torch_eager": (False, False), "torch_channels_last": (True, False),
                  "torch_bf16": (False, True), "torch_channels_last_bf16": (True, True)}
VARIANTS = (*TF_VARIANTS, *TORCH_VARIANTS)


def _tf_command(config: Config, variant: str, windows: int, steps_per_window: int, warmup_steps: int,
                matmul: bool) -> list[str]:
    """The `bench train` command line of one dcgan_tf variant."""
    precision, jit = TF_VARIANTS[variant]
    return [sys.executable, "-m", "dcgan_tf.bench", "train", f"--image_size={config.image_size}",
            f"--channels={config.channels or 3}", f"--ngf={config.ngf}", f"--ndf={config.ndf}", f"--nz={config.nz}",
            f"--batch_size={config.batch_size}", f"--mixed_precision={precision}", f"--jit_compile={jit}",
            f"--windows={windows}", f"--steps_per_window={steps_per_window}", f"--warmup_steps={warmup_steps}",
            f"--matmul={str(matmul).lower()}", f"--conv_kernels={TF_CONV_KERNELS.get(variant, config.conv_kernels)}",
            f"--kernel_cache_dir={config.kernel_cache_dir}"]


def _torch_command(config: Config, variant: str, torch_python: str, reference: str, steps: int) -> list[str]:
    """The PyTorch peer's command line for one variant (the peer has ndf = ngf)."""
    channels_last, bf16 = TORCH_VARIANTS[variant]
    return [torch_python, reference, "--ngf", str(config.ngf), "--batch", str(config.batch_size), "--res",
            str(config.image_size), "--channels", str(config.channels or 3), "--steps", str(steps),
            *(["--channels_last"] if channels_last else []), *(["--bf16"] if bf16 else [])]


# oneDNN ISA (rank) -> PyTorch's ATen kernel level (ATEN_CPU_CAPABILITY) that uses no instruction above it.
ATEN_CAPABILITIES = (("AVX512_CORE", "avx512"), ("AVX2", "avx2"), ("SSE41", "default"))


def isa_environ(isa: str | None) -> dict[str, str]:
    """The environment that caps a process's CPU kernels at oneDNN ISA `isa` (e.g. "AVX2"): oneDNN in TensorFlow
    and PyTorch (ONEDNN_MAX_CPU_ISA) and PyTorch's own ATen kernels (ATEN_CPU_CAPABILITY); {} for no cap."""
    from dcgan_tf import fast_path

    cap = fast_path.onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": isa or ""})
    if cap is None:
        return {}
    rank = fast_path.ONEDNN_ISA_RANKS[cap]
    aten = next(level for name, level in ATEN_CAPABILITIES if fast_path.ONEDNN_ISA_RANKS[name] <= rank)
    return {"ONEDNN_MAX_CPU_ISA": cap, "ATEN_CPU_CAPABILITY": aten}


def onednn_kernels(output: str) -> dict[str, list[str]]:
    """{primitive kind: its implementations} from ONEDNN_VERBOSE=1 output's exec lines (e.g. convolution:
    ["brg_conv_fwd:avx2", "jit:avx2"]): which kernels a process ran, and so which ISA they use."""
    kernels_used: dict[str, set[str]] = {}
    for line in output.splitlines():
        fields = line.split(",")
        if fields[0] != "onednn_verbose" or "exec" not in fields:
            continue
        at = fields.index("exec")
        if len(fields) > at + 3:
            kernels_used.setdefault(fields[at + 2], set()).add(fields[at + 3] or "(unnamed)")
    return {kind: sorted(names) for kind, names in sorted(kernels_used.items())}


def _run_json(command: list[str], extra_env: dict[str, str] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run a benchmark command; its last JSON line, with the CPU seconds the process used (import included).

    `extra_env` is added to the environment (e.g. isa_environ's cap); `verbose` runs it with ONEDNN_VERBOSE=1 and
    adds the oneDNN kernels it ran (onednn_kernels) as "onednn_kernels".
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), **(extra_env or {}),
           **({"ONEDNN_VERBOSE": "1"} if verbose else {})}
    before = os.times()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    after = os.times()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["process_cpu_s"] = round((after.children_user - before.children_user)
                                    + (after.children_system - before.children_system), 1)
    if verbose:
        result["onednn_kernels"] = onednn_kernels(done.stdout + "\n" + done.stderr)
    return result


def compare(config: Config, torch_python: str | None, torch_reference: str, rounds: int = 2,
            variants: list[str] | None = None, windows: int = 3, steps_per_window: int = 2, warmup_steps: int = 2,
            matmul: bool = True, isa: str | None = None, kernels_check: bool = False) -> Iterator[dict[str, Any]]:
    """Every variant, `rounds` times in turn, each in its own process; one line per variant with the medians.

    Each line gives the variant's median img/s, its per-round rates and the 1-minute load at each round's
    start, and its ratio to the fastest PyTorch variant of the same precision (bfloat16 with bfloat16,
    float32 with float32) in each round and as the median of those per-round ratios. `isa` caps every variant's
    CPU kernels (isa_environ: an AMX Xeon then runs an AVX2 machine's kernels); `kernels_check` first runs each
    variant for a step with ONEDNN_VERBOSE=1 and reports the oneDNN kernels it ran, to check that cap.
    """
    names = list(variants or VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if torch_python is None:
        names = [n for n in names if n in TF_VARIANTS]
    elif not torch_reference or not os.path.exists(torch_reference):
        raise ValueError(f"--torch_reference={torch_reference!r} does not exist: with --torch_python, pass the path "
                         "of the PyTorch peer script, --torch_reference=PATH/torch_dcgan_reference.py")
    env = isa_environ(isa)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float | None]] = {n: [] for n in names}
    last: dict[str, dict[str, Any]] = {}
    used: dict[str, dict[str, list[str]]] = {}
    if kernels_check:
        for name in names:
            command = (_tf_command(config, name, 1, 1, 1, False) if name in TF_VARIANTS
                       else _torch_command(config, name, torch_python, torch_reference, 1))
            used[name] = _run_json(command, env, verbose=True)["onednn_kernels"]
            logging.info("%s ran oneDNN kernels %s", name, used[name])
    loads = []
    for _ in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name in names:
            if name in TF_VARIANTS:
                result = _run_json(_tf_command(config, name, windows, steps_per_window, warmup_steps, matmul), env)
            else:
                result = _time_torch(config, name, torch_python, torch_reference, windows * steps_per_window, env)
            rates[name].append(float(result["img_per_s"]))
            cpu[name].append(result.get("cpu_s_per_step"))
            last[name] = result
            logging.info("%s: %.1f img/s", name, result["img_per_s"])
    for line in _comparison_lines(config, names, rates, last, loads, cpu):
        line["isa_environ"] = env
        if line["variant"] in used:
            line["onednn_kernels"] = used[line["variant"]]
        yield line


def _time_torch(config: Config, name: str, torch_python: str, reference: str, steps: int,
                extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The peer's img/s, and its CPU seconds per step: the difference between a run of `steps` timed steps and
    one of 1, over steps - 1 (the peer reports only wall time, which the machine's other load distorts)."""
    result = _run_json(_torch_command(config, name, torch_python, reference, steps), extra_env)
    if steps > 1:
        short = _run_json(_torch_command(config, name, torch_python, reference, 1), extra_env)
        result["cpu_s_per_step"] = round(max(result["process_cpu_s"] - short["process_cpu_s"], 0.0) / (steps - 1), 3)
    return result


def _precision_of(name: str, result: dict[str, Any]) -> str:
    """'bfloat16' or 'float32': what a variant computes in."""
    if name in TORCH_VARIANTS:
        return "bfloat16" if TORCH_VARIANTS[name][1] else "float32"
    return "float32" if result.get("precision") == "none" else result.get("precision", "float32")


def _comparison_lines(config: Config, names: list[str], rates: dict[str, list[float]],
                      last: dict[str, dict[str, Any]], loads: list[float],
                      cpu: dict[str, list[float | None]] | None = None) -> Iterator[dict[str, Any]]:
    """One JSON line per variant: medians, per-round rates and ratios to the fastest same-precision peer, by
    wall clock and (where both have it) by CPU seconds per step, which other load on the machine distorts less."""
    cpu = cpu or {}
    precision = {name: _precision_of(name, last[name]) for name in names}
    rounds = len(loads)
    for name in names:
        peers = [n for n in names if n in TORCH_VARIANTS and precision[n] == precision[name]]
        line = {"bench": "compare", "variant": name, "precision": precision[name],
                "image_size": config.image_size, "ngf": config.ngf, "ndf": config.ndf,
                "batch_size": config.batch_size, "img_per_s": round(statistics.median(rates[name]), 2),
                "round_img_per_s": rates[name], "round_load_1min": loads}
        if peers:
            best = [max(rates[p][r] for p in peers) for r in range(rounds)]
            ratios = [rates[name][r] / best[r] for r in range(rounds)]
            line["fastest_torch_same_precision"] = max(peers, key=lambda p: statistics.median(rates[p]))
            line["round_ratio_to_fastest_torch"] = [round(x, 2) for x in ratios]
            line["ratio_to_fastest_torch"] = round(statistics.median(ratios), 2)
        own_cpu = [c for c in cpu.get(name, []) if c]
        if own_cpu:
            line["cpu_s_per_step"] = round(statistics.median(own_cpu), 3)
        peer_cpus = [statistics.median(cs) for p in peers if (cs := [c for c in cpu.get(p, []) if c])]
        if own_cpu and peer_cpus and name in TF_VARIANTS:
            line["best_torch_cpu_s_per_step"] = round(min(peer_cpus), 3)
            line["cpu_ratio_to_best_torch"] = round(min(peer_cpus) / line["cpu_s_per_step"], 2)
        for key in ("xla", "cpu_s_per_step", "achieved_gflop_per_s", "matmul_gflop_per_s", "fraction_of_matmul",
                    "achieved_gflop_per_cpu_s", "matmul_gflop_per_cpu_s", "fraction_of_matmul_per_cpu_s",
                    "process_cpu_s", "threads"):
            if key in last[name]:
                line.setdefault(key, last[name][key])
        line["machine"] = machine()
        yield line


def _settings(config: Config) -> dict[str, Any]:
    """The settings that define a measurement, for its JSON line (with what `auto` resolves to here)."""
    config = _resolved(config)
    keys = ("dataset", "image_size", "channels", "ngf", "ndf", "nz", "batch_size", "jit_compile", "mixed_precision")
    resolved = {"precision": config.compute_precision, "xla": config.use_xla}  # what `auto` became here
    return {**{k: getattr(config, k) for k in keys}, **resolved, "machine": machine()}


# ---------------------------------------------------------------------------------------------------------
# Command line: the model and data flags are Config fields, as in dcgan_tf.train; the rest are Options fields
# (both built by dcgan_tf/cli.py).

CONFIG_FLAGS = ("dataset", "data_dir", "image_size", "channels", "ngf", "ndf", "nz", "batch_size", "jit_compile",
                "mixed_precision", "conv_kernels", "kernel_cache_dir")


@dataclasses.dataclass
class Options:
    """The benchmark's own settings; one --flag each, its help the comment."""

    steps_per_execution: int = 1  # Train steps per call of the train function.
    windows: int = 5  # Timed windows (the median is reported).
    steps_per_window: int = 3  # Train steps (input: 20x that many batches; layers: passes) per timed window.
    warmup_steps: int = 2  # Untimed steps first (tracing, XLA compilation).
    matmul: bool = True  # Also measure the machine's matmul rate in the step's precision (seconds).
    torch_python: str | None = None  # compare: a Python with PyTorch, to time the PyTorch peer too.
    torch_reference: str = ""  # compare: the path of the PyTorch peer script (torch_dcgan_reference.py).
    isa: str = ""  # compare: cap every variant's CPU kernels at this oneDNN ISA, e.g. AVX2 (ONEDNN_MAX_CPU_ISA, and
                   # ATEN_CPU_CAPABILITY for PyTorch): an AVX-512/AMX machine then computes like an AVX2 one.
    kernels_check: bool = False  # compare: first run each variant once with ONEDNN_VERBOSE=1 and report its kernels.
    rounds: int = 2  # compare: rounds over all variants (interleaved); medians are reported.
    variants: list[str] | None = None  # compare: a subset of VARIANTS (default: all).
    model_dir: str | None = None  # sample: a training run whose generator to time (default: fresh init).
    grpc: bool = True  # sample: also time Predict over gRPC through the development server (serving/dev_server).
    repeats: int = 50  # sample: batch-1 calls for the latency percentiles.
    clients: int = 8  # sample: concurrent gRPC clients (batch-1 requests), measured without and with the local
                      # server's request batching; 0 = skip.
    client_requests: int = 50  # sample: requests per concurrent client.
    concurrent_rounds: int = 1  # sample: interleaved unbatched/batched pairs of the concurrent run.
    batching_parameters_file: str | None = None  # sample: TF Serving batching parameters for the batched
                                                 # concurrent run (default: the repository's
                                                 # serving/batching_parameters.txt).


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The benchmark CLI's flags: Config's model/data flags (--dataset may also be 'random'), then Options'."""
    cli.define_config_flags(CONFIG_FLAGS, defaults={"dataset": RANDOM}, helps={
        "dataset": "'random' (the step alone), 'synthetic', 'folder:PATH' or a TFDS name."})
    cli.define_flags(Options, helps={"variants": f"compare: a subset of {','.join(VARIANTS)} (default: all)."})


def checked(config: Config) -> Config:
    """`config`, after validate() (--dataset=random checked as the synthetic set): errors before heavy work."""
    validate(config.replace(dataset="synthetic") if config.dataset == RANDOM else config)
    return config


def run_command(command: str, config: Config, opts: Options) -> Iterator[dict[str, Any]]:
    """The measurements of one CLI command."""
    if command == "compare":
        yield from compare(config, opts.torch_python, opts.torch_reference, opts.rounds, opts.variants,
                           windows=opts.windows, steps_per_window=opts.steps_per_window,
                           warmup_steps=opts.warmup_steps, matmul=opts.matmul, isa=opts.isa or None,
                           kernels_check=opts.kernels_check)
        return
    matmul = matmul_cpu = None
    if opts.matmul and command in ("train", "flops"):
        matmul, matmul_cpu = flops_lib.measure_matmul(dtype=matmul_dtype(_resolved(config)))
    if command == "train":
        yield bench_train(config, opts.windows, opts.steps_per_window, opts.warmup_steps,
                          opts.steps_per_execution, matmul, matmul_cpu)
    elif command == "input":
        yield bench_input(config, opts.windows, opts.steps_per_window * 20)
    elif command == "sample":
        yield from bench_sample(config, opts.model_dir, opts.grpc, opts.repeats, config.batch_size, opts.windows,
                                opts.clients if opts.grpc else 0, opts.client_requests,
                                opts.batching_parameters_file or _REPO_BATCHING_FILE, opts.concurrent_rounds)
    elif command == "layers":
        yield from bench_layers(config, opts.windows, opts.steps_per_window)
    else:
        yield bench_flops(config, matmul)


def main(argv: list[str]) -> None:
    """CLI entry point: `python -m dcgan_tf.bench COMMAND --flags`, one JSON line per measurement."""
    from dcgan_tf import startup

    startup.log_devices()
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m dcgan_tf.bench {{{'|'.join(COMMANDS)}}} [--flags]; got {argv[1:]}")
    try:
        config = checked(cli.config_from_flags(FLAGS, CONFIG_FLAGS, base=Config(train_steps=1)))  # one step: valid
        for result in run_command(argv[1], config, cli.read_flags(Options, FLAGS)):
            print(json.dumps(result), flush=True)
    except (ValueError, input_pipeline.DatasetError) as e:  # ConfigError is a ValueError
        logging.error("%s", e)
        raise SystemExit(1) from e


if __name__ == "__main__":
    define_flags()
    app.run(main)
