"""Analytic FLOP counts of DCGAN's networks and training step, and the machine's own matmul rate.

Only the convolutions, transposed convolutions and dense layers are counted (one multiply-add = 2 FLOPs):
they are >99% of the arithmetic; BatchNorm, activations and the optimizer update are memory-bound extras.
The count is read off the built Keras layers, so it follows whatever architecture the config gives.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np
import tensorflow as tf


def layer_forward_flops(layer: keras.layers.Layer) -> int:
    """FLOPs of one example through a Conv2D, Conv2DTranspose or Dense layer (0 for any other layer)."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Every input pixel is multiplied by the whole kernel [kh, kw, out, in] and scattered to the output.
        _, height, width, _ = layer.input.shape
        return 2 * height * width * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Conv2D):
        # Every output pixel is a dot product over a kernel window [kh, kw, in] for each output channel.
        _, height, width, _ = layer.output.shape
        return 2 * height * width * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(layer.kernel.shape)
    return 0


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one example's forward pass through a functional model."""
    return sum(layer_forward_flops(layer) for layer in model.layers)


def _first_weighted_layer_flops(model: keras.Model) -> int:
    """FLOPs of the model's first counted layer, whose input gradient backprop never needs."""
    return next(f for f in map(layer_forward_flops, model.layers) if f > 0)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one DCGAN train step, per example and for the batch."""

    g_forward: int  # one example through G
    d_forward: int  # one example through D
    per_example: int  # the whole step (both updates) for one example
    batch_size: int

    @property
    def per_step(self) -> int:
        """FLOPs of one train step over the whole batch."""
        return self.per_example * self.batch_size


def train_step_flops(generator: keras.Model, discriminator: keras.Model, batch_size: int) -> StepFlops:
    """FLOPs of DCGAN.train_step: D on real and fake + D update, then D on fake again + G update.

    A backward pass costs two forwards (input gradient + weight gradient), minus what is never needed:
      D update: 2 x (forward + weight grads + input grads of all but D's first layer);
      G update: D forward + D input grads (no D weight grads), then G weight grads + input grads of all
                but G's first layer; G's forward is shared by both updates (one G forward per step).
    The PyTorch reference step does the same arithmetic.
    """
    g, d = forward_flops(generator), forward_flops(discriminator)
    d_first, g_first = _first_weighted_layer_flops(discriminator), _first_weighted_layer_flops(generator)
    d_update = 2 * (d + d + (d - d_first))
    g_update = (d + d) + (g + g + (g - g_first))
    return StepFlops(g_forward=g, d_forward=d, per_example=d_update + g_update, batch_size=batch_size)


def measure_matmul(size: int = 2048, repeats: int = 5, dtype: tf.DType = tf.float32) -> tuple[float, float]:
    """The machine's own dense matmul rate in `dtype`, a practical peak: (GFLOP per second of wall time, GFLOP per
    second of this process's CPU time), each the median of `repeats` products. The second is less distorted
    when other processes share the machine; with N idle cores it is about the first divided by N."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2], dtype=dtype)
    b = tf.random.stateless_normal([size, size], seed=[3, 4], dtype=dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    matmul().numpy()  # trace + warm the thread pool
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        matmul().numpy()  # the sum makes the copy to host tiny; .numpy() waits for the result
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    flop = 2 * size**3 / 1e9
    return flop / float(np.median(walls)), flop / max(float(np.median(cpus)), 1e-9)
