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
import tensorflow as tf

from dcgan_tf.config import Config


def _init(config: Config) -> keras.initializers.Initializer:
    """The paper's N(0, 0.02) initializer."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=config.init_stddev)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training pass is TensorFlow's fused kernel: the same layer and variables.

    Keras 3 builds training-mode BatchNorm from ~15 separate ops (casts to float32, moments, scale and shift, and
    as many again in the gradient); in the profile of a 64x64 step they took about as much time as the
    convolutions. FusedBatchNormV3 does the forward in one op and the backward in one op, reads bfloat16 directly
    (statistics in float32) and computes the same function: tests/test_fast_path.py checks outputs, gradients
    and moving statistics against the Keras layer. Inference, synchronized (cross-replica) BatchNorm and masks
    use the Keras code unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        """Normalise with the batch's statistics (training) or the moving ones."""
        rank = len(inputs.shape)
        if (not (training and self.trainable) or self.synchronized or mask is not None or rank != 4
                or self.axis not in (-1, rank - 1) or not (self.scale and self.center)):
            return super().call(inputs, training=training, mask=mask)
        empty = tf.constant([], tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32), mean=empty,
            variance=empty, epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel returns the Bessel-corrected variance; Keras's moving variance averages the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


# The conv weight gradient is computed as one matmul over the input patches where the conv's small side (D's
# output, G's input) is at most this size: there oneDNN's weight-gradient kernel reached ~70 GFLOP/s per core in
# bfloat16 against ~220 for the matmul (measured, docs/performance.md); at 8x8 and larger its own kernel is faster.
MATMUL_WEIGHT_GRAD_MAX_SIZE = 4


def _is_paper_conv(layer: keras.layers.Layer) -> bool:
    """A 4x4, stride-2, 'same', undilated, ungrouped channels-last conv: the only kind the paper's nets have."""
    return (tuple(layer.kernel_size) == (4, 4) and tuple(layer.strides) == (2, 2) and layer.padding == "same"
            and tuple(layer.dilation_rate) == (1, 1) and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1)


def weight_gradient_by_matmul(inputs: tf.Tensor, out_grad: tf.Tensor, kernel_shape: tf.TensorShape) -> tf.Tensor:
    """dL/dkernel of the 4x4 stride-2 'same' conv2d(inputs) whose output gradient is `out_grad`, as one matmul.

    Patches [B*H/2*W/2, 16*C_in] of the input (padded 1 on each side, as 'same' pads an even input) times the
    output gradient [B*H/2*W/2, C_out]: the same sum Conv2DBackpropFilter computes.
    """
    kh, kw, cin, cout = kernel_shape
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    patches = tf.image.extract_patches(padded, [1, kh, kw, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")
    grad = tf.matmul(tf.reshape(patches, [-1, kh * kw * cin]), tf.reshape(out_grad, [-1, cout]), transpose_a=True)
    return tf.reshape(grad, [kh, kw, cin, cout])


@tf.custom_gradient
def _conv_with_matmul_weight_grad(inputs: tf.Tensor, kernel: tf.Tensor):
    """conv2d(inputs, kernel), 4x4 stride 2 'same', whose kernel gradient is weight_gradient_by_matmul."""
    outputs = tf.nn.conv2d(inputs, kernel, strides=2, padding="SAME")

    def grad(out_grad):
        in_grad = tf.nn.conv2d_transpose(out_grad, kernel, tf.shape(inputs), strides=2, padding="SAME")
        return in_grad, weight_gradient_by_matmul(inputs, out_grad, kernel.shape)

    return outputs, grad


@tf.custom_gradient
def _deconv_with_matmul_weight_grad(inputs: tf.Tensor, kernel: tf.Tensor):
    """conv2d_transpose(inputs, kernel), 4x4 stride 2 'same' (output twice the input's size), whose kernel
    gradient is weight_gradient_by_matmul (the transposed conv's kernel gradient is the conv's, roles swapped)."""
    shape = tf.shape(inputs)
    output_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], kernel.shape[2]])
    outputs = tf.nn.conv2d_transpose(inputs, kernel, output_shape, strides=2, padding="SAME")

    def grad(out_grad):
        in_grad = tf.nn.conv2d(out_grad, kernel, strides=2, padding="SAME")
        return in_grad, weight_gradient_by_matmul(out_grad, inputs, kernel.shape)

    return outputs, grad


def _read(variable, dtype: tf.DType) -> tf.Tensor:
    """A variable's value as a tensor of the compute dtype, read before (not inside) a custom-gradient function,
    so that the tape differentiates the read and the cast and the function itself uses no variable."""
    return tf.cast(getattr(variable, "value", variable), dtype)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same variables, same function) with the matmul kernel gradient on small outputs."""

    def __init__(self, *args, matmul_weight_grad: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.matmul_weight_grad = matmul_weight_grad

    def get_config(self) -> dict:
        """Keras config, with the matmul-gradient switch."""
        return {**super().get_config(), "matmul_weight_grad": self.matmul_weight_grad}

    def convolution_op(self, inputs, kernel):
        """The conv; the custom-gradient version where its output is at most MATMUL_WEIGHT_GRAD_MAX_SIZE."""
        size = inputs.shape[1]
        if (self.matmul_weight_grad and _is_paper_conv(self) and size is not None
                and size // 2 <= MATMUL_WEIGHT_GRAD_MAX_SIZE):
            return _conv_with_matmul_weight_grad(inputs, _read(kernel, inputs.dtype))
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (same variables, same function) with the matmul kernel gradient on small
    inputs."""

    def call(self, inputs):
        """The transposed conv (+ bias); the custom-gradient version where its input is small."""
        size = inputs.shape[1]
        if (not _is_paper_conv(self) or self.output_padding is not None or size is None
                or size > MATMUL_WEIGHT_GRAD_MAX_SIZE):
            return super().call(inputs)
        outputs = _deconv_with_matmul_weight_grad(inputs, _read(self.kernel, inputs.dtype))
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs) if self.activation is not None else outputs


def _batchnorm(config: Config, name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with the run's momentum/epsilon; gamma drawn from N(1, 0.02) as in the reference code."""
    return FusedBatchNorm(
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        gamma_initializer=keras.initializers.RandomNormal(mean=1.0, stddev=config.init_stddev),
        # Synchronised only where the strategy in scope has several replicas: one replica already normalises over
        # the whole batch, and the unsynchronised layer keeps the fused kernel (every caller: train, bench, tests).
        synchronized=config.sync_batchnorm and tf.distribute.get_strategy().num_replicas_in_sync > 1,
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
        x = Conv2DTranspose(
            width, 4, strides=2, padding="same", use_bias=False, kernel_initializer=_init(config),
            name=f"deconv{i}",
        )(x)  # -> [B, size, size, width]
        x = _batchnorm(config, f"deconv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"deconv{i}_relu")(x)
    # Output: [B, S/2, S/2, ngf] -> [B, S, S, C]; no BatchNorm here (paper), tanh bounds it to [-1, 1].
    x = Conv2DTranspose(
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
        x = Conv2D(
            width, 4, strides=2, padding="same", use_bias=is_input_layer, kernel_initializer=_init(config),
            # Not on the conv right after the un-normalised input layer (only at 16x16 is it small enough):
            # there Grappler's oneDNN remapper fails on the input layer's Conv2D+BiasAdd+LeakyRelu
            # ("remapper failed: ... Mutation::Apply error") and prints an error line on every run.
            matmul_weight_grad=i != 1, name=f"conv{i}",
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
    generator, discriminator = build_generator(config), build_discriminator(config)
    # Built after G and D, so that G and D start from the same weights with or without it (it copies G's).
    generator_ema = build_generator(config, name="generator_ema") if config.g_ema_decay > 0 else None
    gan = DCGAN(generator, discriminator, config.nz, config.z_dist, config.seed, generator_ema=generator_ema,
                ema_decay=config.g_ema_decay, use_ema=config.g_ema)
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
