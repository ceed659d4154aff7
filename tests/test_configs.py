"""The shipped configs/*.cfg carry the paper's settings, and the defaults are the paper's (section 4)."""

import dataclasses
import os

import keras
import numpy as np
import pytest

from dcgan_tf import config as config_lib
from dcgan_tf.config import Config
from dcgan_tf.evaluation.features import pooled_feature_dims
from dcgan_tf.gan import build_gan
from dcgan_tf.models import build_discriminator, build_generator, discriminator_widths, generator_widths

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Section 4, "Details of adversarial training": mini-batch 128, Adam lr 0.0002 and beta1 0.5, z uniform 100-d
# (section 3 / Fig. 1), weights from N(0, 0.02), LeakyReLU slope 0.2. No config may change these.
PAPER = dict(batch_size=128, learning_rate=2e-4, beta1=0.5, beta2=0.999, nz=100, z_dist="uniform",
             init_stddev=0.02, leaky_slope=0.2)
EXPECTED = {
    # The paper's 64x64 models: z projected to 4x4x1024 (ngf=128), D ending in 1024 maps at 4x4 (ndf=128).
    "celeb_a.cfg": dict(dataset="celeb_a", image_size=64, ngf=128, ndf=128),
    "lsun_bedroom.cfg": dict(dataset="lsun/bedroom", image_size=64, ngf=128, ndf=128),
    # Section 5.1: the 32x32 ImageNet-1k D whose pooled features are 28,672-d.
    "imagenet32.cfg": dict(dataset="imagenet_resized/32x32", image_size=32, ndf=256),
    # Not paper models (the paper trains none on these): native 32x32 (MNIST-like padded), the common width 64.
    "cifar10.cfg": dict(dataset="cifar10", image_size=32, ngf=64, ndf=64),
    "mnist.cfg": dict(dataset="mnist", image_size=32, ngf=64, ndf=64),
    "fashion_mnist.cfg": dict(dataset="fashion_mnist", image_size=32, ngf=64, ndf=64),
}
NOT_PAPER_CONFIGS = {"quickstart.cfg"}  # a few-minute CPU demo on small networks, checked only for validity


def read_flagfile(path):
    """The Config a flagfile gives dcgan_tf.train (its --name=value lines over the defaults)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(Config)}
    values = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, value = line[2:].split("=", 1)
        assert name in types, f"{path}: unknown flag --{name}"
        kind = types[name]
        values[name] = (value.lower() in ("1", "true")) if kind is bool else value if kind in (str, type(None)) \
            else kind(value)
    return Config(**values)


def test_every_config_is_checked():
    assert set(os.listdir(CONFIGS)) == set(EXPECTED) | NOT_PAPER_CONFIGS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_has_the_papers_values(name):
    config = read_flagfile(os.path.join(CONFIGS, name))
    config_lib.validate(config)
    for field, value in {**PAPER, **EXPECTED[name]}.items():
        assert getattr(config, field) == value, f"{name}: {field}={getattr(config, field)!r}, expected {value!r}"
    if config.image_size == 64 and config.ngf == 128:
        assert generator_widths(config)[0] == 1024 and discriminator_widths(config)[-1] == 1024
    if name == "imagenet32.cfg":
        assert pooled_feature_dims(config) == 28_672  # "a 28672 dimensional vector"
        assert discriminator_widths(config)[-1] == 1024


def test_quickstart_config_is_valid():
    for name in NOT_PAPER_CONFIGS:
        config_lib.validate(read_flagfile(os.path.join(CONFIGS, name)))


def test_defaults_are_the_papers():
    assert {field: getattr(Config(), field) for field in PAPER} == PAPER
    config = Config(image_size=16, channels=1, ngf=4, ndf=4, train_steps=1)
    gan = build_gan(config)
    # Adam with lr 2e-4, beta1 0.5 in both optimizers.
    for optimizer in (gan.d_optimizer, gan.g_optimizer):
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(optimizer.learning_rate) == pytest.approx(2e-4) and optimizer.beta_1 == 0.5
    # z: 100-d, uniform on [-1, 1].
    z = gan.sample_z(2000, seed=0).numpy()
    assert z.shape == (2000, 100) and z.min() >= -1 and z.max() <= 1
    assert abs(z.std() - 1 / np.sqrt(3)) < 0.01  # uniform's std, not a normal's 1
    # Every conv/dense kernel drawn from N(0, 0.02); LeakyReLU(0.2) in D.
    for model in (build_generator(config.replace(ngf=64)), build_discriminator(config.replace(ndf=64))):
        for layer in model.layers:
            if hasattr(layer, "kernel"):
                kernel = layer.kernel.numpy()
                assert abs(kernel.mean()) < 0.002 and kernel.std() == pytest.approx(0.02, rel=0.1), layer.name
    slopes = {float(layer.negative_slope) for layer in gan.discriminator.layers
              if isinstance(layer, keras.layers.LeakyReLU)}
    assert slopes == {0.2}
