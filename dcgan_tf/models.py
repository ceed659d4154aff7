"""The paper's generator and discriminator (Radford et al. 2015, section 3 and Figure 1).

Architecture guidelines from the paper, all followed here:
  * no pooling: strided convolutions (D) and fractionally-strided convolutions (G), 4x4 kernels, stride 2;
  * BatchNorm in both networks, except G's output layer and D's input layer;
  * no fully connected hidden layers: G's first layer is one matrix multiply reshaped to 4x4 maps,
    D's last feature map is flattened into one logit;
  * ReLU in G (tanh at the output), LeakyReLU(0.2) in D;
  * every weight drawn from N(0, 0.02).
Channels-last throughout. A layer followed by BatchNorm has no bias (BN's beta replaces it). The shape comments
are for the paper's 64x64 networks (ngf = ndf = 128, 4 doublings); other sizes add or drop middle blocks.

How the networks compute is an argument of each builder, never read from the surroundings: `precision` ("none"
= float32, "bfloat16", "float16"), `sync_batchnorm` (BatchNorm over the global batch of all replicas) and
`fast_kernels` (kernels.py's layers, same variables and function as Keras's own) and `conv_forms` (layer name ->
"onednn" / "matmul", chosen by conv_forms.py; None: kernels.py's size rule). The same arguments build the same
network wherever it is built.
"""

from __future__ import annotations

from typing import Mapping

import keras

from dcgan_tf import kernels
from dcgan_tf.config import Config


def _init(config: Config) -> keras.initializers.Initializer:
    """The paper's N(0, 0.02) initializer."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=config.init_stddev)


def _batchnorm(config: Config, layers: kernels.Layers, sync_batchnorm: bool,
               name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with the run's momentum/epsilon; gamma drawn from N(1, 0.02) as in the reference code."""
    return layers.batchnorm(
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        gamma_initializer=keras.initializers.RandomNormal(mean=1.0, stddev=config.init_stddev),
        synchronized=sync_batchnorm,
        name=name,
    )


def generator_widths(config: Config) -> list[int]:
    """Channels of G's maps from 4x4 up to image_size/2: [8ngf, 4ngf, 2ngf, ngf] at 64x64."""
    k = config.num_upsamplings
    return [config.ngf * 2 ** (k - 1 - i) for i in range(k)]


def discriminator_widths(config: Config) -> list[int]:
    """Channels of D's maps from image_size/2 down to 4x4: [ndf, 2ndf, 4ndf, 8ndf] at 64x64."""
    return [config.ndf * 2**i for i in range(config.num_upsamplings)]


def build_generator(config: Config, name: str = "generator", *, precision: str = "none",
                    sync_batchnorm: bool = False, fast_kernels: bool = True,
                    conv_forms: Mapping[str, str] | None = None) -> keras.Model:
    """G: z [B, nz] -> images [B, S, S, C] in [-1, 1]."""
    layers = kernels.Layers(fast_kernels, conv_forms)
    widths = generator_widths(config)
    with kernels.precision_policy(precision):
        z = keras.Input(shape=(config.nz,), name="z")  # [B, 100]
        # Project and reshape: one matrix multiply to 4x4 maps, 8ngf of them (1024 for the paper's ngf = 128).
        x = keras.layers.Dense(4 * 4 * widths[0], use_bias=False, kernel_initializer=_init(config),
                               name="project")(z)
        x = keras.layers.Reshape((4, 4, widths[0]), name="reshape")(x)
        x = _batchnorm(config, layers, sync_batchnorm, "project_bn")(x)
        x = keras.layers.ReLU(name="project_relu")(x)  # [B, 4, 4, 1024]
        # Fractionally-strided convolutions, each doubling the size and halving the maps:
        # [B, 8, 8, 512] -> [B, 16, 16, 256] -> [B, 32, 32, 128].
        for i, width in enumerate(widths[1:], start=1):
            x = layers.deconv(width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_init(config),
                              name=f"deconv{i}")(x)
            x = _batchnorm(config, layers, sync_batchnorm, f"deconv{i}_bn")(x)
            x = keras.layers.ReLU(name=f"deconv{i}_relu")(x)
        # Output: no BatchNorm (paper), tanh bounds it to [-1, 1]: [B, 64, 64, 3].
        x = layers.deconv(config.channels, 4, strides=2, padding="same", kernel_initializer=_init(config),
                          name="to_image")(x)
        # float32 output whatever the precision, so images and losses stay in full precision.
        images = keras.layers.Activation("tanh", dtype="float32", name="tanh")(x)
        return keras.Model(z, images, name=name)


def build_discriminator(config: Config, name: str = "discriminator", *, precision: str = "none",
                        sync_batchnorm: bool = False, fast_kernels: bool = True,
                        conv_forms: Mapping[str, str] | None = None) -> keras.Model:
    """D: images [B, S, S, C] in [-1, 1] -> one logit per image [B, 1] (the sigmoid is in the loss)."""
    layers = kernels.Layers(fast_kernels, conv_forms)
    with kernels.precision_policy(precision):
        images = keras.Input(shape=(config.image_size, config.image_size, config.channels), name="images")
        x = images  # [B, 64, 64, 3]
        # Strided convolutions, each halving the size and doubling the maps:
        # [B, 32, 32, 128] -> [B, 16, 16, 256] -> [B, 8, 8, 512] -> [B, 4, 4, 1024].
        for i, width in enumerate(discriminator_widths(config)):
            is_input_layer = i == 0
            x = layers.conv(width, 4, strides=2, padding="same", use_bias=is_input_layer,
                            kernel_initializer=_init(config), name=f"conv{i}", follows_input_layer=i == 1)(x)
            if not is_input_layer:  # paper: no BatchNorm on D's input layer
                x = _batchnorm(config, layers, sync_batchnorm, f"conv{i}_bn")(x)
            x = keras.layers.LeakyReLU(negative_slope=config.leaky_slope, name=f"conv{i}_lrelu")(x)
        # The last conv features flattened into one logit: [B, 4 * 4 * 1024] -> [B, 1].
        x = keras.layers.Flatten(name="flatten")(x)
        logits = keras.layers.Dense(1, kernel_initializer=_init(config), dtype="float32", name="logit")(x)
        return keras.Model(images, logits, name=name)


def discriminator_conv_outputs(discriminator: keras.Model) -> list[keras.KerasTensor]:
    """The symbolic outputs of D's conv blocks (after activation), for feature extraction."""
    return [layer.output for layer in discriminator.layers if layer.name.endswith("_lrelu")]
