"""The paper's architecture rules, checked layer by layer."""

import keras
import numpy as np
import pytest

from dcgan_tf.config import Config
from dcgan_tf.models import build_discriminator, build_generator

POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
           keras.layers.GlobalMaxPooling2D)


def layers_of(model, kind):
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3), (128, 1)])
def test_shapes_for_every_size(size, channels):
    config = Config(image_size=size, channels=channels, ngf=4, ndf=4, train_steps=1)
    g, d = build_generator(config), build_discriminator(config)
    assert g.input_shape == (None, 100)
    assert g.output_shape == (None, size, size, channels)
    assert d.input_shape == (None, size, size, channels)
    assert d.output_shape == (None, 1)
    # One stride-2 layer per doubling from 4x4: log2(size/4) of them in each network.
    k = int(np.log2(size // 4))
    assert len(layers_of(g, keras.layers.Conv2DTranspose)) == k
    assert len(layers_of(d, keras.layers.Conv2D)) == k


def test_generator_follows_the_paper():
    config = Config(image_size=64, channels=3, ngf=8, train_steps=1)
    g = build_generator(config)
    assert not layers_of(g, POOLING)
    dense = layers_of(g, keras.layers.Dense)
    assert len(dense) == 1 and dense[0].output.shape == (None, 4 * 4 * 8 * 8)  # projection only, 4x4x8ngf
    deconvs = layers_of(g, keras.layers.Conv2DTranspose)
    assert [l.kernel_size for l in deconvs] == [(4, 4)] * 4 and [l.strides for l in deconvs] == [(2, 2)] * 4
    assert [l.filters for l in deconvs] == [32, 16, 8, 3]  # halving channels, then the image
    # BatchNorm + ReLU after the projection and every deconv except the output, which is tanh without BN.
    bns, relus = layers_of(g, keras.layers.BatchNormalization), layers_of(g, keras.layers.ReLU)
    assert len(bns) == 4 and len(relus) == 4
    assert g.layers[-1].name == "tanh" and g.layers[-2] is deconvs[-1]


def test_discriminator_follows_the_paper():
    config = Config(image_size=64, channels=3, ndf=8, train_steps=1)
    d = build_discriminator(config)
    assert not layers_of(d, POOLING)
    convs = layers_of(d, keras.layers.Conv2D)
    assert [l.filters for l in convs] == [8, 16, 32, 64] and all(l.strides == (2, 2) for l in convs)
    assert all(l.kernel_size == (4, 4) for l in convs)
    # BN on every conv but the input one; LeakyReLU(0.2) after each.
    names = [l.name for l in d.layers]
    assert "conv0_bn" not in names and all(f"conv{i}_bn" in names for i in (1, 2, 3))
    lrelus = layers_of(d, keras.layers.LeakyReLU)
    assert len(lrelus) == 4 and all(np.isclose(l.negative_slope, 0.2) for l in lrelus)
    dense = layers_of(d, keras.layers.Dense)
    assert len(dense) == 1 and dense[0].units == 1  # one logit, no hidden fully connected layer
    assert dense[0].input.shape == (None, 4 * 4 * 64)


def test_weights_drawn_from_normal_0_02():
    config = Config(image_size=64, channels=3, ngf=32, ndf=32, train_steps=1)
    for net in (build_generator(config), build_discriminator(config)):
        for layer in net.layers:
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense)):
                w = layer.kernel.numpy()
                assert abs(w.mean()) < 0.002 and abs(w.std() - 0.02) < 0.002, layer.name


def test_generator_output_range():
    g = build_generator(Config(image_size=16, channels=3, ngf=8, train_steps=1))
    out = g.get_layer("to_image")
    out.kernel.assign(out.kernel * 1000.0)  # drive the output layer far into saturation
    z = np.random.RandomState(0).uniform(-1, 1, (64, 100)).astype("float32")
    images = g(z, training=True).numpy()
    assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.9 and images.max() > 0.9


def test_paper_64x64_parameter_counts():
    """ngf = ndf = 128 at 64x64: 4x4x1024 after the projection (the paper's Figure 1)."""
    config = Config(image_size=64, channels=3, ngf=128, ndf=128, train_steps=1)
    g, d = build_generator(config), build_discriminator(config)
    assert g.get_layer("reshape").output.shape == (None, 4, 4, 1024)
    # G: projection 100*16384, deconvs 4*4*(1024*512 + 512*256 + 256*128) + 4*4*128*3 + 3 bias,
    # BN gamma/beta (trainable) for 1024+512+256+128 channels, plus the same again as moving mean/var.
    g_trainable = 100 * 16384 + 16 * (1024 * 512 + 512 * 256 + 256 * 128) + 16 * 128 * 3 + 3 + 2 * 1920
    assert sum(int(np.prod(w.shape)) for w in g.trainable_weights) == g_trainable == 12_658_435
    assert g.count_params() == g_trainable + 2 * 1920
    # D: 4*4*(3*128 + 128*256 + 256*512 + 512*1024) + 128 bias (input layer), BN for 256+512+1024, logit 16384+1.
    d_trainable = 16 * (3 * 128 + 128 * 256 + 256 * 512 + 512 * 1024) + 128 + 2 * 1792 + 16384 + 1
    assert sum(int(np.prod(w.shape)) for w in d.trainable_weights) == d_trainable == 11_036_289
