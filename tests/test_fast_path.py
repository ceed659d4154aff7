"""The fast training paths (XLA, bfloat16 compute) make the same update as the plain path on the same inputs.

"Same inputs" = the same real batch, the same initial weights and the same z. z is fixed by the test because
XLA's stateless RNG kernels turn the same seed into different numbers than TensorFlow's own kernels (both are
deterministic), so an XLA run draws a different, equally valid noise stream.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf.config import Config
from dcgan_tf.models import build_gan

REAL = np.random.RandomState(0).uniform(-1, 1, (8, 16, 16, 1)).astype("float32")
Z = np.random.RandomState(1).uniform(-1, 1, (8, 16)).astype("float32")
CONFIG = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=2)


def train_two_steps(config: Config, policy: str = "float32") -> tuple[list[np.ndarray], dict[str, float]]:
    """Two steps of fit()'s own train function from the same start; each weight's change and the last logs."""
    keras.utils.set_random_seed(1)  # same initial weights for every path
    keras.mixed_precision.set_global_policy(policy)
    try:
        gan = build_gan(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
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
    weights, logs = train_two_steps(CONFIG.replace(mixed_precision="bfloat16"), policy="mixed_bfloat16")
    # bfloat16 keeps 8 bits of mantissa (~0.4% per value) and Adam turns even tiny gradients into lr-sized
    # steps, so a few near-zero gradients flip sign; the update as a whole must still agree closely.
    assert relative_difference(plain[0], weights) < 0.05  # measured: 0.005
    for name, value in plain[1].items():
        assert logs[name] == pytest.approx(value, rel=0.05), name
