"""The paper's generator and discriminator (Radford et al. 2015, section 3 and Figure 1).

Architecture guidelines from the paper, all followed here:
  * no pooling: strided convolutions (D) and fractionally-strided convolutions (G);
  * BatchNorm in both networks, except G's output layer and D's input layer;
  * no fully connected hidden layers: G's first layer is one matrix multiply reshaped to 4x4 maps,
    D's last feature map is flattened into one logit;
  * ReLU in G (tanh at the output), LeakyReLU(0.2) in D;
  * every weight drawn from N(0, 0.02).
Channels-last throughout. A layer followed by BatchNorm has no bias (BN's beta replaces it).
"""

from __future__ import annotations

import keras

from dcgan_tf.config import Config


def _init(config: Config) -> keras.initializers.Initializer:
    """The paper's N(0, 0.02) initializer."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=config.init_stddev)


def _batchnorm(config: Config, name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with the run's momentum/epsilon; gamma drawn from N(1, 0.02) as in the reference code."""
    return keras.layers.BatchNormalization(
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        gamma_initializer=keras.initializers.RandomNormal(mean=1.0, stddev=config.init_stddev),
        synchronized=config.sync_batchnorm,
        name=name,
    )


def generator_widths(config: Config) -> list[int]:
    """Channels of G's maps from 4x4 up to image_size/2: [8ngf, 4ngf, 2ngf, ngf] at 64x64."""
    k = config.num_upsamplings
    return [config.ngf * 2 ** (k - 1 - i) for i in range(k)]


def discriminator_widths(config: Config) -> list[int]:
    """Channels of D's maps from image_size/2 down to 4x4: [ndf, 2ndf, 4ndf, 8ndf] at 64x64."""
    return [config.ndf * 2**i for i in range(config.num_upsamplings)]


def build_generator(config: Config, name: str = "generator") -> keras.Model:
    """G: z [B, nz] -> images [B, S, S, C] in [-1, 1]."""
    widths = generator_widths(config)
    channels = config.channels
    z = keras.Input(shape=(config.nz,), name="z")
    # Project and reshape: [B, nz] -> [B, 4*4*8ngf] -> [B, 4, 4, 8ngf] (1024 maps for the paper's ngf=128).
    x = keras.layers.Dense(4 * 4 * widths[0], use_bias=False, kernel_initializer=_init(config), name="project")(z)
    x = keras.layers.Reshape((4, 4, widths[0]), name="reshape")(x)
    x = _batchnorm(config, "project_bn")(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    size = 4
    # Each block: [B, s, s, w] -> [B, 2s, 2s, w/2] (at 64x64: 4->8 512, 8->16 256, 16->32 128).
    for i, width in enumerate(widths[1:], start=1):
        size *= 2
        x = keras.layers.Conv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_init(config),
            name=f"deconv{i}",
        )(x)  # -> [B, size, size, width]
        x = _batchnorm(config, f"deconv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"deconv{i}_relu")(x)
    # Output: [B, S/2, S/2, ngf] -> [B, S, S, C]; no BatchNorm here (paper), tanh bounds it to [-1, 1].
    x = keras.layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", kernel_initializer=_init(config), name="to_image"
    )(x)
    # float32 output whatever the mixed-precision policy, so images and losses stay in full precision.
    images = keras.layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(z, images, name=name)


def build_discriminator(config: Config, name: str = "discriminator") -> keras.Model:
    """D: images [B, S, S, C] in [-1, 1] -> one logit per image [B, 1] (the sigmoid is in the loss)."""
    images = keras.Input(shape=(config.image_size, config.image_size, config.channels), name="images")
    x = images
    size = config.image_size
    # Each block: [B, s, s, c] -> [B, s/2, s/2, w] (at 64x64: 64->32 ndf, 32->16 2ndf, 16->8 4ndf, 8->4 8ndf).
    for i, width in enumerate(discriminator_widths(config)):
        size //= 2
        is_input_layer = i == 0
        x = keras.layers.Conv2D(
            width, 4, strides=2, padding="same", use_bias=is_input_layer, kernel_initializer=_init(config),
            name=f"conv{i}",
        )(x)  # -> [B, size, size, width]
        if not is_input_layer:  # paper: no BatchNorm on D's input layer
            x = _batchnorm(config, f"conv{i}_bn")(x)
        x = keras.layers.LeakyReLU(negative_slope=config.leaky_slope, name=f"conv{i}_lrelu")(x)
    # [B, 4, 4, 8ndf] -> [B, 4*4*8ndf] -> [B, 1]: the last conv features flattened into one logit.
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(1, kernel_initializer=_init(config), dtype="float32", name="logit")(x)
    return keras.Model(images, logits, name=name)


def discriminator_conv_outputs(discriminator: keras.Model) -> list[keras.KerasTensor]:
    """The symbolic outputs of D's conv blocks (after activation), for feature extraction."""
    return [layer.output for layer in discriminator.layers if layer.name.endswith("_lrelu")]


def build_gan(config: Config):
    """The DCGAN model for `config`, compiled with the paper's Adam (config's lr, beta1, beta2)."""
    from dcgan_tf.gan import DCGAN  # gan.py does not depend on this module; imported here to keep it so

    keras.utils.set_random_seed(config.seed)  # the same seed gives the same initial weights
    gan = DCGAN(build_generator(config), build_discriminator(config), config.nz, config.z_dist, config.seed)
    gan.compile(
        d_optimizer=_adam(config),
        g_optimizer=_adam(config),
        jit_compile=config.use_xla,
    )
    return gan


def _adam(config: Config) -> keras.optimizers.Optimizer:
    """Adam with the config's settings, wrapped for loss scaling under float16."""
    optimizer = keras.optimizers.Adam(config.learning_rate, beta_1=config.beta1, beta_2=config.beta2)
    if config.compute_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
