"""The fast training paths (XLA, bfloat16 compute) make the same update as the plain path on the same inputs,
and `auto` picks the path the hardware supports, records it, and keeps it when the run resumes.

"Same inputs" = the same real batch, the same initial weights and the same z. z is fixed by the test because
XLA's stateless RNG kernels turn the same seed into different numbers than TensorFlow's own kernels (both are
deterministic), so an XLA run draws a different, equally valid noise stream.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import fast_path
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.gan import build_gan

REAL = np.random.RandomState(0).uniform(-1, 1, (8, 16, 16, 1)).astype("float32")
Z = np.random.RandomState(1).uniform(-1, 1, (8, 16)).astype("float32")
# conv_kernels="size": no timing of the conv forms here (tests/test_conv_forms.py has those).
CONFIG = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=2, conv_kernels="size")


def train_two_steps(config: Config, fast_kernels: bool = True) -> tuple[list[np.ndarray], dict[str, float]]:
    """Two steps of fit()'s own train function from the same start; each weight's change and the last logs."""
    keras.utils.set_random_seed(1)  # same initial weights for every path
    gan = build_gan(config, precision=config.compute_precision, fast_kernels=fast_kernels)
    gan._replica_z = lambda local_batch: tf.constant(Z)  # same z on every path (see the module docstring)
    variables = gan.generator.weights + gan.discriminator.weights
    before = [v.numpy() for v in variables]
    gan.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(REAL).repeat())
    for _ in range(2):
        logs = gan.train_function(iterator)
    updates = [v.numpy() - b for v, b in zip(variables, before)]
    return updates, {k: float(v) for k, v in logs.items()}


def relative_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """|a - b| / |a| over all weight updates together (1.0 = as different as no update at all)."""
    diff = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b)))
    return diff / np.sqrt(sum(float(np.sum(x**2)) for x in a))


@pytest.fixture(scope="module")
def plain():
    """Weights and logs after two plain (graph-mode, float32) steps."""
    return train_two_steps(CONFIG)


def test_xla_step_matches_the_plain_step(plain):
    weights, logs = train_two_steps(CONFIG.replace(jit_compile=True))
    assert relative_difference(plain[0], weights) < 1e-5  # float reordering only (measured: 8e-8)
    for name, value in plain[1].items():
        assert logs[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_bfloat16_step_matches_the_plain_step_within_its_precision(plain):
    weights, logs = train_two_steps(CONFIG.replace(mixed_precision="bfloat16"))
    # bfloat16 keeps 8 bits of mantissa (~0.4% per value) and Adam turns even tiny gradients into lr-sized
    # steps, so a few near-zero gradients flip sign; the update as a whole must still agree closely.
    assert relative_difference(plain[0], weights) < 0.05  # measured: 0.005
    for name, value in plain[1].items():
        assert logs[name] == pytest.approx(value, rel=0.05), name


def test_fast_kernels_are_keras_layers_with_the_same_variables_and_update(plain, tmp_path):
    """kernels.py's layers and Adam hold Keras's own variables (names, shapes, initial values, checkpoint keys:
    a checkpoint or export of either is one of the other) and make the same update."""
    from dcgan_tf import checkpointing

    built = {fast: build_gan(CONFIG, fast_kernels=fast) for fast in (True, False)}
    weights = {fast: gan.generator.weights + gan.discriminator.weights for fast, gan in built.items()}
    assert [(v.path, tuple(v.shape)) for v in weights[True]] == [(v.path, tuple(v.shape)) for v in weights[False]]
    for fast, slow in zip(weights[True], weights[False]):
        np.testing.assert_array_equal(np.asarray(fast), np.asarray(slow), err_msg=fast.path)
    keys = {fast: sorted(tf.train.list_variables(checkpointing.make_manager(gan, str(tmp_path / str(fast)), 1).save()))
            for fast, gan in built.items()}
    assert keys[True] == keys[False]
    kernel_layers = {fast: [type(layer).__name__ for layer in gan.generator.layers + gan.discriminator.layers
                            if type(layer).__module__ == "dcgan_tf.kernels"] for fast, gan in built.items()}
    assert kernel_layers[False] == [] and type(built[False].d_optimizer) is keras.optimizers.Adam  # Keras's own
    assert {"FusedBatchNorm", "Conv2D", "Conv2DTranspose"} <= set(kernel_layers[True])
    weights, logs = train_two_steps(CONFIG, fast_kernels=False)
    assert relative_difference(plain[0], weights) < 1e-4  # float reordering only
    for name, value in plain[1].items():
        assert logs[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


# ---------------------------------------------------------------------------------------------------------
# What `auto` resolves to, and what a run records and keeps on resume.


@pytest.mark.parametrize("gpus,flags,expected", [
    ([], {"avx2", "avx512_bf16"}, "bfloat16"),
    ([], {"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
    ([], {"avx2", "avx512f"}, "none"),  # no bfloat16 arithmetic: emulated bfloat16 would be slower than float32
    ([(8, 0)], set(), "bfloat16"),
    ([(9, 0), (8, 6)], {"avx512_bf16"}, "bfloat16"),
    ([(7, 5)], {"amx_bf16"}, "float16"),  # the GPU computes, not the CPU
    ([(8, 0), (7, 0)], set(), "float16"),  # the oldest GPU decides: every replica must run the same step
])
def test_auto_precision_follows_the_hardware(gpus, flags, expected):
    choice = fast_path.choose_precision(gpus, flags)
    assert choice.value == expected and choice.reason


@pytest.mark.parametrize("cap,flags,expected", [
    ("AVX2", {"avx2", "avx512_bf16", "amx_bf16"}, "none"),  # an AMX Xeon emulating an AVX2 CPU
    ("AVX512_CORE", {"avx512_bf16", "amx_bf16"}, "none"),
    ("AVX512_CORE_VNNI", {"avx512_bf16"}, "none"),
    ("AVX512_CORE_BF16", {"avx512_bf16", "amx_bf16"}, "bfloat16"),  # the dot products, not the tiles
    ("AVX512_CORE_BF16", {"amx_bf16"}, "none"),  # AMX needs AVX512_CORE_AMX
    ("AVX512_CORE_AMX", {"amx_bf16"}, "bfloat16"),
    (None, {"amx_bf16"}, "bfloat16"),
    ("AVX2", {"avx2"}, "none"),
])
def test_auto_precision_honours_the_onednn_isa_cap(cap, flags, expected):
    choice = fast_path.choose_precision([], flags, cap)
    assert choice.value == expected
    if cap and flags & {"avx512_bf16", "amx_bf16"} and expected == "none":
        assert f"ONEDNN_MAX_CPU_ISA={cap}" in choice.reason
    assert fast_path.choose_precision([(8, 0)], flags, cap).value == "bfloat16"  # a GPU computes, not oneDNN


@pytest.mark.parametrize("environ,cap", [({}, None), ({"ONEDNN_MAX_CPU_ISA": "avx2"}, "AVX2"),
                                         ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "AVX512_CORE_AMX"),
                                         ({"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "ALL"}, "AVX2"),
                                         ({"ONEDNN_MAX_CPU_ISA": "ALL"}, None), ({"ONEDNN_MAX_CPU_ISA": ""}, None)])
def test_the_isa_cap_is_read_from_the_given_environment(environ, cap):
    assert fast_path.onednn_isa_cap(environ) == cap


def test_an_unknown_isa_cap_is_a_clear_error():
    with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA='AVX3' is not a oneDNN CPU ISA"):
        fast_path.onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX3"})


def test_resolve_reads_the_isa_cap_from_the_environment_it_is_given(monkeypatch):
    monkeypatch.setattr(fast_path, "gpu_capabilities", lambda: [])
    monkeypatch.setattr(fast_path, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    assert fast_path.resolve(CONFIG, environ={}).compute_precision == "bfloat16"
    capped = fast_path.resolve(CONFIG, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped.compute_precision == "none" and "AVX2" in capped.resolved["mixed_precision_reason"]


def test_auto_xla_is_off_where_measured_slower_and_never_under_mirrored_cpus():
    assert fast_path.choose_jit([], mirrored_over_cpus=False).value == "false"
    assert "MirroredStrategy over logical CPU devices" in fast_path.choose_jit([], mirrored_over_cpus=True).reason


def test_jit_compile_accepts_old_bools_and_rejects_nonsense():
    assert Config(jit_compile=True).jit_compile == "true" and Config(jit_compile=False).jit_compile == "false"
    assert Config.from_dict({"jit_compile": True}).use_xla  # a config.json written before `auto` existed
    with pytest.raises(ConfigError, match="jit_compile='maybe' must be auto, true or false"):
        fast_path.normalise_jit("maybe")


def test_resolution_is_recorded_and_a_resumed_auto_run_keeps_it(monkeypatch):
    monkeypatch.setattr(fast_path, "gpu_capabilities", lambda: [])
    monkeypatch.setattr(fast_path, "cpu_flags", lambda: {"amx_bf16"})
    first = fast_path.resolve(CONFIG)
    assert first.mixed_precision == "auto" and first.jit_compile == "auto"  # the request stays as asked
    assert first.resolved["mixed_precision"] == "bfloat16" and "amx_bf16" in first.resolved["mixed_precision_reason"]
    assert first.resolved["jit_compile"] is False and first.compute_precision == "bfloat16" and not first.use_xla
    # The same run resumed on a machine without bfloat16 keeps computing as it started (same numerics).
    monkeypatch.setattr(fast_path, "cpu_flags", lambda: set())
    assert fast_path.resolve(CONFIG).compute_precision == "none"  # what a new run would get there
    resumed = fast_path.resolve(CONFIG, saved=Config.from_dict(json.loads(first.to_json())))
    assert resumed.compute_precision == "bfloat16" and "resumed run" in resumed.resolved["mixed_precision_reason"]
    # An explicit request wins, unless it changes what the checkpoint holds (float16's loss-scale optimizer).
    assert fast_path.resolve(CONFIG.replace(mixed_precision="none"), saved=first).compute_precision == "none"
    with pytest.raises(ConfigError, match="--mixed_precision=bfloat16 \\(or auto\\)"):
        fast_path.resolve(CONFIG.replace(mixed_precision="float16"), saved=first)


def test_explicit_xla_under_mirrored_cpus_is_a_clear_error():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert fast_path.is_mirrored_over_cpus(strategy)
    assert fast_path.resolve(CONFIG, strategy).resolved["jit_compile"] is False
    with pytest.raises(ConfigError, match="MirroredStrategy over logical CPU devices"):
        fast_path.resolve(CONFIG.replace(jit_compile="true"), strategy)


def test_train_logs_and_records_the_request_and_the_choice(tmp_path, caplog, monkeypatch):
    from dcgan_tf import train

    config = CONFIG.replace(dataset="synthetic", train_steps=1, log_every=1, sample_every=1, checkpoint_every=1,
                            num_samples=4, model_dir=str(tmp_path / "run"), verbose=0)
    for name in fast_path.ISA_ENV_VARS:  # no inherited oneDNN cap: the choice is the hardware's
        monkeypatch.delenv(name, raising=False)
    # The absl logger's own level too: an earlier test in the same process may have raised it.
    with caplog.at_level("INFO"), caplog.at_level("INFO", logger="absl"):
        train.train(config)
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert saved["mixed_precision"] == "auto" and saved["jit_compile"] == "auto"
    expected = fast_path.choose_precision(fast_path.gpu_capabilities(), fast_path.cpu_flags())
    assert saved["resolved"]["mixed_precision"] == expected.value
    assert saved["resolved"]["mixed_precision_reason"] == expected.reason
    assert f"Precision: {expected.value} (requested auto: {expected.reason})" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# The fused BatchNorm computes what Keras's own BatchNormalization computes.


@pytest.mark.parametrize("policy,tolerance", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_fused_batchnorm_equals_keras_batchnorm(policy, tolerance):
    from dcgan_tf.kernels import FusedBatchNorm

    x = tf.constant(np.random.RandomState(2).normal(1.0, 3.0, (8, 4, 4, 5)).astype("float32"))
    w = tf.constant(np.random.RandomState(3).normal(size=(8, 4, 4, 5)).astype("float32"))
    results = []
    for layer_class in (keras.layers.BatchNormalization, FusedBatchNorm):
        keras.mixed_precision.set_global_policy(policy)
        try:
            layer = layer_class(momentum=0.9, epsilon=1e-5, gamma_initializer=keras.initializers.RandomNormal(1.0, 0.3,
                                                                                                            seed=4),
                                beta_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=5))
            layer.build(x.shape)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        inference = layer(x, training=False)  # with the moving statistics just updated
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, inference])
    names = ("output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance",
             "inference output")
    for name, keras_value, fused_value in zip(names, *results):
        a, b = (np.asarray(tf.cast(v, tf.float32)) for v in (keras_value, fused_value))
        np.testing.assert_allclose(b, a, rtol=tolerance, atol=tolerance * max(1.0, float(np.abs(a).max())),
                                   err_msg=name)


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_conv_equals_tensorflows(transposed):
    """Output, input gradient and kernel gradient of the matmul conv/deconv equal Keras's own layers'."""
    from dcgan_tf import kernels

    # The largest maps it applies to: G's 4x4 input, D's 8x8 input (4x4 output).
    size = kernels.MATMUL_CONV_MAX_SIZE * (1 if transposed else 2)
    out_size = size * 2 if transposed else size // 2
    rng = np.random.RandomState(6)
    x = tf.constant(rng.normal(size=(3, size, size, 5)).astype("float32"))
    w = tf.constant(rng.normal(size=(3, out_size, out_size, 7)).astype("float32"))
    results = []
    for layer_class in ((keras.layers.Conv2DTranspose, kernels.Conv2DTranspose) if transposed else
                        (keras.layers.Conv2D, kernels.Conv2D)):
        layer = layer_class(7, 4, strides=2, padding="same", kernel_initializer=keras.initializers.RandomNormal(seed=7),
                            bias_initializer=keras.initializers.RandomNormal(seed=8))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * w)
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    for name, a, b in zip(("output", "input gradient", "kernel gradient", "bias gradient"), *results):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_adam_makes_keras_adams_update(replicas):
    """FusedAdam's weights and slots after three steps equal keras.optimizers.Adam's (one device and 2 replicas)."""
    from dcgan_tf.distribute import new_mirrored_strategy
    from dcgan_tf.kernels import FusedAdam

    rng = np.random.RandomState(9)
    start = [rng.normal(size=shape).astype("float32") for shape in ((4, 4, 3, 5), (5,))]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(3)]
    strategy = new_mirrored_strategy(["/cpu:0", "/cpu:1"]) if replicas == 2 else tf.distribute.get_strategy()
    results = []
    for optimizer_class in (keras.optimizers.Adam, FusedAdam):
        with strategy.scope():
            weights = [keras.Variable(w) for w in start]
            optimizer = optimizer_class(0.01, beta_1=0.5, beta_2=0.9)
            optimizer.build(weights)

        @tf.function
        def apply(step_grads):
            def replica_fn(step_grads):
                # Each replica's half: summed across replicas, the update sees the full gradient.
                optimizer.apply_gradients(zip([g / replicas for g in step_grads], weights))
            strategy.run(replica_fn, args=(step_grads,))

        for step_grads in grads:
            apply([tf.constant(g) for g in step_grads])
        results.append([np.asarray(v) for v in (*weights, *optimizer._momentums, *optimizer._velocities)])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[1][0], start[0])  # it did train
    if replicas == 2:  # each device's copy got the update, not only the first
        for variable in (*weights, *optimizer._momentums, *optimizer._velocities):
            copies = variable.value.values
            np.testing.assert_array_equal(np.asarray(copies[1]), np.asarray(copies[0]))


def test_gpu_decisions_follow_the_faked_device_list_whatever_the_isa_cap(monkeypatch):
    """The GPU-only choices (float16 below compute capability 8.0, XLA off) are unmeasured: they rest on this
    faked device list, never on the machine the test runs on."""
    monkeypatch.setattr(fast_path, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(fast_path, "gpu_capabilities", lambda: [(7, 5)])
    old_gpu = fast_path.resolve(CONFIG, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert old_gpu.compute_precision == "float16" and not old_gpu.use_xla
    assert "not measured on GPUs" in old_gpu.resolved["jit_compile_reason"]
    monkeypatch.setattr(fast_path, "gpu_capabilities", lambda: [(9, 0)])
    assert fast_path.resolve(CONFIG, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"}).compute_precision == "bfloat16"
