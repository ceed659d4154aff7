"""The speed side of the paper's networks: mixed precision, and kernels that compute the same function faster.

Everything here is optional and changes no result beyond floating-point rounding: the networks in models.py are
built from Keras's own layers or from the subclasses below (same variables, same names, same function, so a
checkpoint or an export of one is a checkpoint or an export of the other), chosen by their `fast_kernels`
argument, and in the precision named by their `precision` argument:

  * `precision_policy`: the one place that sets Keras's global dtype policy (while layers are built);
  * `FusedBatchNorm`: training-mode BatchNorm as TensorFlow's fused kernel;
  * `Conv2D` / `Conv2DTranspose`: the paper's 4x4 stride-2 convolutions as matmuls over space-to-depth
    patches (`conv_by_matmul` / `deconv_by_matmul`, forward and both gradients) where the layer's form says so
    (chosen per layer by measurement: conv_forms.py);
  * `FusedAdam`: Keras's Adam with TensorFlow's fused update kernel.

docs/performance.md says what each one gained, measured, and how to measure it again (`python -m dcgan_tf.bench`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import keras
import tensorflow as tf

# Config.mixed_precision's values (as resolved) -> Keras's dtype policies. Variables stay float32 in every one.
KERAS_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Keras's global dtype policy for `precision` ("none" = float32) inside the block, the previous one after.

    Keras fixes a layer's dtype policy when the layer is created, so building inside the block is what decides
    the precision a network computes in; the global policy is left as it was for whatever is built next.
    """
    if precision not in KERAS_POLICIES:
        raise ValueError(f"precision={precision!r} must be one of {sorted(KERAS_POLICIES)} ('none' = float32)")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(KERAS_POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training pass is TensorFlow's fused kernel: the same layer and variables.

    Keras 3 builds training-mode BatchNorm from ~15 separate ops (casts to float32, moments, scale and shift, and
    as many again in the gradient), which together took as long as the convolutions in a profiled step.
    FusedBatchNormV3 does the forward in one op and the backward in one op, reads bfloat16 directly (statistics in
    float32) and computes the same function: tests/test_fast_path.py checks outputs, gradients and moving
    statistics against the Keras layer. Inference, synchronized (cross-replica) BatchNorm and masks use the Keras
    code unchanged.
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
# and kernel gradient are each one matmul over space-to-depth patches instead of oneDNN's conv kernels, which run
# far below the machine's matmul rate on 4x4 maps; at 8x8 the whole step was no faster, so the threshold stays 4
# (`python -m dcgan_tf.bench layers` times both forms per layer; the figures are in docs/performance.md).
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
    """keras.layers.Conv2D (same variables, same function) computed by matmuls where `form` says so.

    `form`: "matmul" (conv_by_matmul), "onednn" (TensorFlow's conv), or None: matmuls where the output is at most
    MATMUL_CONV_MAX_SIZE (the size rule, for networks built without a resolved choice; conv_forms.py).
    """

    def __init__(self, *args, matmul_weight_grad: bool = True, form: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.matmul_weight_grad = matmul_weight_grad  # the name old saved configs carry: "use conv_by_matmul"
        self.form = form

    def get_config(self) -> dict:
        """Keras config, with the matmul switch and the form."""
        return {**super().get_config(), "matmul_weight_grad": self.matmul_weight_grad, "form": self.form}

    def convolution_op(self, inputs, kernel):
        """The conv; conv_by_matmul where the form (or the size rule) says so."""
        size = inputs.shape[1]
        if (self.matmul_weight_grad and _is_paper_conv(self) and size is not None and inputs.shape[2] == size
                and size % 2 == 0 and _wants_matmul(self.form, size // 2)):
            return conv_by_matmul(inputs, _read(kernel, inputs.dtype))
        return super().convolution_op(inputs, kernel)


def _wants_matmul(form: str | None, small_side: int) -> bool:
    """The matmul form for a layer whose form is `form`, or by the size rule where it has none."""
    return form == "matmul" if form is not None else uses_matmul_conv(small_side)


@keras.saving.register_keras_serializable(package="dcgan_tf")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose (same variables, same function) computed by matmuls where `form` says so
    ("matmul", "onednn", or None: the size rule, as Conv2D)."""

    def __init__(self, *args, form: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.form = form

    def get_config(self) -> dict:
        """Keras config, with the form."""
        return {**super().get_config(), "form": self.form}

    def call(self, inputs):
        """The transposed conv (+ bias); deconv_by_matmul where the form (or the size rule) says so."""
        size = inputs.shape[1]
        if (not _is_paper_conv(self) or self.output_padding is not None or inputs.shape[2] != size
                or size is None or not _wants_matmul(self.form, size)):
            return super().call(inputs)
        outputs = deconv_by_matmul(inputs, _read(self.kernel, inputs.dtype))
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs) if self.activation is not None else outputs


@keras.saving.register_keras_serializable(package="dcgan_tf")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose update of each dense variable is one ResourceApplyAdam op.

    Keras 3 updates a variable with ~10 separate ops (each a pass over the weights); the fused kernel computes the
    same arithmetic in one pass: m += (g - m)(1 - beta1); v += (g^2 - v)(1 - beta2);
    w -= alpha m / (sqrt(v) + epsilon) with alpha = lr sqrt(1 - beta2^t) / (1 - beta1^t). The slot variables are
    Adam's own (momentums, velocities), so checkpoints and the float16 LossScaleOptimizer wrapper are unchanged;
    tests/test_fast_path.py checks the update against keras.optimizers.Adam.
    """

    def update_step(self, gradient, variable, learning_rate):
        """One Adam update of `variable` (on one device under a distribution strategy)."""
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):  # cases the fused kernel does not cover
            return super().update_step(gradient, variable, learning_rate)
        target = variable.value if isinstance(variable, keras.Variable) else variable
        dtype = target.dtype
        index = self._get_variable_index(variable)
        # .value.handle: under a strategy's update() this is the current device's copy of the slot.
        m, v = self._momentums[index].value.handle, self._velocities[index].value.handle
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=target.handle, m=m, v=v, beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step), lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


class Layers:
    """The layer constructors models.py builds G and D from: Keras's own, or this module's faster subclasses."""

    def __init__(self, fast_kernels: bool, conv_forms: Mapping[str, str] | None = None):
        self.fast_kernels = fast_kernels
        self.conv_forms = conv_forms  # layer name -> "onednn" / "matmul" (conv_forms.py); None: the size rule

    def _form(self, name: str | None) -> str | None:
        """The form chosen for the layer called `name` (None: the size rule decides)."""
        return None if self.conv_forms is None else self.conv_forms.get(name, "onednn")

    def batchnorm(self, **kwargs) -> keras.layers.BatchNormalization:
        """A BatchNormalization layer (FusedBatchNorm with fast kernels)."""
        return (FusedBatchNorm if self.fast_kernels else keras.layers.BatchNormalization)(**kwargs)

    def conv(self, *args, follows_input_layer: bool = False, **kwargs) -> keras.layers.Conv2D:
        """A Conv2D layer (this module's Conv2D with fast kernels).

        `follows_input_layer`: the conv right after D's input layer (conv + bias + LeakyReLU, no BatchNorm) never
        takes the matmul path: Grappler's oneDNN remapper fails to fuse that input layer's Conv2D+BiasAdd+LeakyRelu
        when the next conv has a custom gradient ("remapper failed: ... Mutation::Apply error") and prints an error
        line on every run. Only at 16x16 is that conv's output small enough for the matmul path at all.
        """
        if not self.fast_kernels:
            return keras.layers.Conv2D(*args, **kwargs)
        return Conv2D(*args, matmul_weight_grad=not follows_input_layer, form=self._form(kwargs.get("name")),
                      **kwargs)

    def deconv(self, *args, **kwargs) -> keras.layers.Conv2DTranspose:
        """A Conv2DTranspose layer (this module's Conv2DTranspose with fast kernels)."""
        if not self.fast_kernels:
            return keras.layers.Conv2DTranspose(*args, **kwargs)
        return Conv2DTranspose(*args, form=self._form(kwargs.get("name")), **kwargs)
