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
from dcgan_tf.optimizers import FusedAdam


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


# Where a paper conv's small side (D's output, G's input) is at most this size, its forward pass, input gradient
# and kernel gradient are each one matmul over space-to-depth patches instead of oneDNN's conv kernels: on 4x4
# maps those reached 225-250 GFLOP/s in bfloat16 (fwd + both gradients) against 650-800 as matmuls, measured
# on a 2-core AMX Xeon (docs/performance.md); at 8x8 the two were within 5% at ngf=64, so the threshold stays 4.
MATMUL_CONV_MAX_SIZE = 4


def uses_matmul_conv(small_side: int | None) -> bool:
    """Whether a paper conv whose small side (D's output, G's input) is `small_side` is computed by matmuls."""
    return small_side is not None and small_side <= MATMUL_CONV_MAX_SIZE


def _is_paper_conv(layer: keras.layers.Layer) -> bool:
    """A 4x4, stride-2, 'same', undilated, ungrouped channels-last conv: the only kind the paper's nets have."""
    return (tuple(layer.kernel_size) == (4, 4) and tuple(layer.strides) == (2, 2) and layer.padding == "same"
            and tuple(layer.dilation_rate) == (1, 1) and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1)


def conv_patches(inputs: tf.Tensor) -> tf.Tensor:
    """[B, 2h, 2w, C] -> [B, h, w, 16C]: each output position's 4x4 input window of the stride-2 'same' conv.

    'same' pads an even input by 1 on each side; space-to-depth turns the padded map into 2x2 cells, and a 4x4
    stride-2 window is 2x2 neighbouring cells: four shifted slices, concatenated. Depth order: (cell a, b; row r
    and column q inside the cell; channel), window offset (2a + r, 2b + q). Plain slices and concat: no gather.
    """
    h, w = inputs.shape[1] // 2, inputs.shape[2] // 2
    cells = tf.nn.space_to_depth(tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]]), 2)
    return tf.concat([tf.slice(cells, [0, a, b, 0], [-1, h, w, -1]) for a in (0, 1) for b in (0, 1)], axis=-1)


def patches_adjoint(patches: tf.Tensor) -> tf.Tensor:
    """[B, h, w, 16C] -> [B, 2h, 2w, C]: the transpose of conv_patches (overlapping windows summed back)."""
    pieces = tf.split(patches, 4, axis=-1)
    cells = tf.add_n([tf.pad(pieces[2 * a + b], [[0, 0], [a, 1 - a], [b, 1 - b], [0, 0]])
                      for a in (0, 1) for b in (0, 1)])
    return tf.nn.depth_to_space(cells, 2)[:, 1:-1, 1:-1, :]


def kernel_matrix(kernel: tf.Tensor) -> tf.Tensor:
    """A [4, 4, C, O] kernel as the [16C, O] matrix whose rows follow conv_patches' depth order."""
    _, _, c, o = kernel.shape
    cells = tf.reshape(kernel, [2, 2, 2, 2, c, o])  # [a, r, b, q, C, O]: offset (2a + r, 2b + q)
    return tf.reshape(tf.transpose(cells, [0, 2, 1, 3, 4, 5]), [16 * c, o])


def kernel_from_matrix(matrix: tf.Tensor, kernel_shape: tf.TensorShape) -> tf.Tensor:
    """The inverse of kernel_matrix: [16C, O] -> [4, 4, C, O]. kernel_matrix only swaps the (r, b) axes, a swap
    that is its own inverse, so applying it to the matrix's rows read as [4, 4, C, O] undoes it."""
    return tf.reshape(kernel_matrix(tf.reshape(matrix, kernel_shape)), kernel_shape)


@tf.custom_gradient
def conv_by_matmul(inputs: tf.Tensor, kernel: tf.Tensor):
    """conv2d(inputs, kernel), 4x4 stride 2 'same', and both its gradients, each as one matmul over patches."""
    patches = conv_patches(inputs)
    _, h, w, depth = patches.shape
    out_channels = kernel.shape[-1]
    patches = tf.reshape(patches, [-1, depth])
    matrix = kernel_matrix(kernel)
    outputs = tf.reshape(tf.matmul(patches, matrix), [-1, h, w, out_channels])

    def grad(out_grad):
        out_grad = tf.reshape(out_grad, [-1, out_channels])
        in_grad = patches_adjoint(tf.reshape(tf.matmul(out_grad, matrix, transpose_b=True), [-1, h, w, depth]))
        return in_grad, kernel_from_matrix(tf.matmul(patches, out_grad, transpose_a=True), kernel.shape)

    return outputs, grad


@tf.custom_gradient
def deconv_by_matmul(inputs: tf.Tensor, kernel: tf.Tensor):
    """conv2d_transpose(inputs, kernel [4, 4, out, in]), 4x4 stride 2 'same' (output twice the input's size), and
    both its gradients, each as one matmul: it is the transpose of conv_by_matmul with the same kernel."""
    _, h, w, in_channels = inputs.shape
    depth = 16 * kernel.shape[2]
    flat_inputs = tf.reshape(inputs, [-1, in_channels])
    matrix = kernel_matrix(kernel)  # [16 out, in]
    outputs = patches_adjoint(tf.reshape(tf.matmul(flat_inputs, matrix, transpose_b=True), [-1, h, w, depth]))

    def grad(out_grad):
        patches = tf.reshape(conv_patches(out_grad), [-1, depth])
        in_grad = tf.reshape(tf.matmul(patches, matrix), [-1, h, w, in_channels])
        return in_grad, kernel_from_matrix(tf.matmul(patches, flat_inputs, transpose_a=True), kernel.shape)

    return outputs, grad


def _read(variable, dtype: tf.DType) -> tf.Tensor:
    """A variable's value as a tensor of the compute dtype, read before (not inside) a custom-gradient function,
    so that the tape differentiates the read and the cast and the function itself uses no variable."""
    return tf.cast(getattr(variable, "value", variable), dtype)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same variables, same function) computed by matmuls where its output is small."""

    def __init__(self, *args, matmul_weight_grad: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.matmul_weight_grad = matmul_weight_grad  # the name old saved configs carry: "use conv_by_matmul"

    def get_config(self) -> dict:
        """Keras config, with the matmul switch."""
        return {**super().get_config(), "matmul_weight_grad": self.matmul_weight_grad}

    def convolution_op(self, inputs, kernel):
        """The conv; conv_by_matmul where its output is at most MATMUL_CONV_MAX_SIZE."""
        size = inputs.shape[1]
        if (self.matmul_weight_grad and _is_paper_conv(self) and size is not None and inputs.shape[2] == size
                and size % 2 == 0 and uses_matmul_conv(size // 2)):
            return conv_by_matmul(inputs, _read(kernel, inputs.dtype))
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (same variables, same function) computed by matmuls where its input is small."""

    def call(self, inputs):
        """The transposed conv (+ bias); deconv_by_matmul where its input is at most MATMUL_CONV_MAX_SIZE."""
        size = inputs.shape[1]
        if (not _is_paper_conv(self) or self.output_padding is not None or inputs.shape[2] != size
                or not uses_matmul_conv(size)):
            return super().call(inputs)
        outputs = deconv_by_matmul(inputs, _read(self.kernel, inputs.dtype))
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
    """Adam (fused update kernel) with the config's settings, wrapped for loss scaling under float16."""
    optimizer = FusedAdam(config.learning_rate, beta_1=config.beta1, beta_2=config.beta2)
    if config.compute_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
