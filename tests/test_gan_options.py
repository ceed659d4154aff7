"""Options beyond the paper, each off by default: TTUR (d_learning_rate), one-sided label smoothing, R1 (r1_gamma)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import models
from dcgan_tf.config import Config, ConfigError, validate
from dcgan_tf.gan import DCGAN, build_gan

SHAPE = (16, 16, 3)


def planted_gan(tiny_config: Config, discriminator: keras.Model, **options) -> DCGAN:
    """A DCGAN of the tiny G and a hand-made D, both optimizers plain SGD(0.01) so updates are predictable."""
    keras.utils.set_random_seed(0)
    gan = DCGAN(models.build_generator(tiny_config), discriminator, tiny_config.nz, seed=0, **options)
    gan.compile(d_optimizer=keras.optimizers.SGD(0.01), g_optimizer=keras.optimizers.SGD(0.01))
    return gan


def quadratic_d() -> keras.Model:
    """D(x) = 0.5 |x|^2 per image: grad_x D = x, so R1 = gamma/2 |x|^2."""
    x = keras.Input(SHAPE)
    logit = keras.layers.Lambda(lambda t: 0.5 * tf.reduce_sum(tf.square(t), axis=[1, 2, 3], keepdims=True)[:, 0, 0])(x)
    return keras.Model(x, logit)


def linear_d(bias: float = 0.0) -> keras.Model:
    """D(x) = w.x + b with fixed random w (seeded): grad_x D = w for every image."""
    x = keras.Input(SHAPE)
    dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=3),
                               bias_initializer=keras.initializers.Constant(bias))
    return keras.Model(x, dense(keras.layers.Flatten()(x)))


def real_batch(num: int = 8) -> tf.Tensor:
    """Seeded 'real' images in [-1, 1]."""
    return tf.constant(np.random.default_rng(0).uniform(-1, 1, (num, *SHAPE)).astype(np.float32))


def test_r1_penalty_of_a_planted_discriminator_is_gamma_half_the_squared_input_gradient(tiny_config):
    real = real_batch()
    _, penalty = planted_gan(tiny_config, quadratic_d(), r1_gamma=10.0).real_logits_and_r1(real)
    expected = 5.0 * np.sum(real.numpy() ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(penalty.numpy(), expected, rtol=1e-5)
    assert planted_gan(tiny_config, quadratic_d()).real_logits_and_r1(real)[1] is None  # off by default


def test_r1_adds_its_weight_gradient_to_ds_update(tiny_config):
    # With D = w.x + b, R1 = gamma/2 |w|^2 for every image: its gradient gamma w is added to D's BCE gradient,
    # so after one SGD step the two runs' kernels differ by exactly -lr * gamma * w0 (same data, same z).
    gamma, lr = 4.0, 0.01
    kernels = {}
    for g in (0.0, gamma):
        gan = planted_gan(tiny_config, linear_d(), r1_gamma=g)
        w0 = gan.discriminator.trainable_variables[0].numpy()
        gan.train_step(real_batch())
        kernels[g] = gan.discriminator.trainable_variables[0].numpy()
    np.testing.assert_allclose(kernels[gamma] - kernels[0.0], -lr * gamma * w0, atol=1e-7)


def test_one_sided_label_smoothing_changes_only_the_real_target_of_ds_loss(tiny_config):
    # A D with zero weights and bias b gives logit b for every image: the logged d_loss is exactly
    # BCE(b, 1 - s) + BCE(b, 0), BCE(l, t) = -(t log sigmoid(l) + (1 - t) log(1 - sigmoid(l))).
    b, s = 0.7, 0.1

    def bce(logit: float, target: float) -> float:
        p = 1 / (1 + np.exp(-logit))
        return float(-(target * np.log(p) + (1 - target) * np.log(1 - p)))

    def zero_d() -> keras.Model:
        x = keras.Input(SHAPE)
        dense = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(b))
        return keras.Model(x, dense(keras.layers.Flatten()(x)))

    for smoothing in (0.0, s):
        logs = planted_gan(tiny_config, zero_d(), label_smoothing=smoothing).train_step(real_batch())
        assert float(logs["d_loss"]) == pytest.approx(bce(b, 1 - smoothing) + bce(b, 0.0), rel=1e-5)
    assert bce(b, 1 - s) != pytest.approx(bce(b, 1.0))  # the two cases differ: the check can fail


def test_ttur_gives_d_its_own_learning_rate_and_the_paper_is_the_default(tiny_config):
    paper = build_gan(tiny_config)
    assert float(paper.d_optimizer.learning_rate) == float(paper.g_optimizer.learning_rate) == pytest.approx(2e-4)
    ttur = build_gan(tiny_config.replace(d_learning_rate=4e-4, learning_rate=1e-4))
    assert float(ttur.d_optimizer.learning_rate) == pytest.approx(4e-4)
    assert float(ttur.g_optimizer.learning_rate) == pytest.approx(1e-4)
    assert (paper.label_smoothing, paper.r1_gamma) == (0.0, 0.0)


def test_r1_and_smoothing_train_the_real_networks(tiny_config):
    # The fast kernels' custom gradients must be twice differentiable for R1 on the package's own D.
    gan = build_gan(tiny_config.replace(r1_gamma=1.0, label_smoothing=0.1))
    before = [w.numpy().copy() for w in gan.discriminator.trainable_variables]
    logs = gan.train_step(real_batch(tiny_config.batch_size))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, gan.discriminator.trainable_variables))
    _, penalty = gan.real_logits_and_r1(real_batch(4))
    assert penalty.shape == (4,) and np.all(penalty.numpy() > 0)


@pytest.mark.parametrize("field, value, message", [
    ("d_learning_rate", -1e-4, "d_learning_rate"), ("label_smoothing", 1.0, "label_smoothing"),
    ("r1_gamma", -1.0, "r1_gamma")])
def test_bad_option_values_are_named(tiny_config, field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny_config.replace(**{field: value}))
