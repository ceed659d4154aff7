"""Differentiable augmentation of the discriminator's inputs, for small datasets: DiffAugment and adaptive (ADA).

Both networks see D through the same random view: every image D gets in `DCGAN.train_step` (real and fake in
the D update, fake in the G update) is augmented first, with differentiable ops, so G's gradient flows back
through the augmentation. Exports, sample grids, FID, `features` and `explore` never call these ops: they only
run inside train_step.

- `diffaugment` (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training",
  mit-han-lab/data-efficient-gans DiffAugment_tf.py): every op of the policy on every image. The ops and their
  ranges are the reference's: `color` = brightness + U[-0.5, 0.5), saturation x U[0, 2), contrast x U[0.5, 1.5);
  `translation` = an integer shift of up to side // 8 in x and y, zero fill; `cutout` = one zeroed square
  of side // 2 at a random centre (the reference's scatter of a clipped square, as a mask).
- `ada` (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", NVlabs/stylegan2-ada
  training/training_loop.py): the same ops, each applied to each image with probability p (independently per op
  and image, as ADA's pipeline does per transformation), and p adjusted during training from the overfitting
  heuristic r_t = E[sign(D(x_real))] over the last `ada_interval` steps: every `ada_interval` steps
  p <- clip(p + sign(r_t - ada_target) * images / (ada_kimg * 1000), 0, 1), images = the global batches seen
  since the last adjustment, so p can go from 0 to 1 in ada_kimg thousand images. What differs from ADA: the
  op set (its 'bgc' pipeline: flips, 90-degree rotations, translation, scaling, rotation, colour), and p is
  also capped at 1 (ADA only floors it at 0; any p >= 1 applies every op alike).

Randomness is stateless: a [2] seed from (run seed, step, which D input) seeds every draw, drawn for the global
batch and sliced per replica, so a resumed run continues exactly and 1 and 2 replicas augment the same images
the same way. This module knows nothing of the model: `gan.DCGAN` passes the seed, the replica's slice and p.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

OPS = ("color", "translation", "cutout")
TRANSLATION_DIVISOR = 8  # DiffAugment's rand_translation: shift by up to side // 8
CUTOUT_DIVISOR = 2  # DiffAugment's rand_cutout: a square of side // 2
# Datasets smaller than this with --augment=none get a warning at the start of training.
SMALL_DATASET = 10_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to augment with: the mode, the ops, and ADA's target, speed and adjustment interval."""

    mode: str = "none"
    policy: tuple[str, ...] = OPS
    ada_target: float = 0.6  # ADA paper: r_t target 0.6
    ada_kimg: float = 500.0  # ADA paper: p can go 0 -> 1 in 500k images
    ada_interval: int = 4  # ADA paper: adjust p every 4 steps


def parse_policy(text: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> ('color', 'translation', 'cutout'); ValueError naming the known ops."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in OPS]
    if unknown or not names:
        raise ValueError(f"augment_policy={text!r}: {'unknown ops ' + str(unknown) if unknown else 'no ops'}; use "
                         f"a comma-separated list of {', '.join(OPS)} (DiffAugment's default: all three)")
    return names


def _draw(seed: tf.Tensor, index: int, shape: list, offset: tf.Tensor, count: tf.Tensor, **kwargs) -> tf.Tensor:
    """Uniform draws of `shape` (the global batch first) from stream `index` of `seed`; rows offset..offset+count."""
    values = tf.random.stateless_uniform(shape, seed=tf.random.experimental.stateless_fold_in(seed, index),
                                         **kwargs)
    return values[offset:offset + count]


def augment_images(images: tf.Tensor, policy: tuple[str, ...], seed: tf.Tensor, probability: tf.Tensor | None = None,
                   offset: tf.Tensor | int = 0, total: tf.Tensor | int | None = None) -> tf.Tensor:
    """The policy's ops on images [B, H, W, C] (any float dtype), differentiably; B = this replica's images.

    `seed`: [2] int seed of this augmentation; `offset`/`total`: where this replica's B images sit in the global
    batch of `total` (draws are made for all `total` and sliced, so any replica split augments alike).
    `probability` (ADA's p): each op hits each image with this probability; None = always (DiffAugment).
    """
    count = tf.shape(images)[0]
    total = count if total is None else total
    offset = tf.cast(offset, tf.int32)
    draw = lambda index, shape, **kw: _draw(seed, index, [total] + shape, offset, count, **kw)  # noqa: E731
    dtype = images.dtype
    x = images
    for number, op in enumerate(policy):
        stream = 8 * number  # each op its own streams, whatever the policy's order or length
        if probability is None:
            hit = tf.ones([count], tf.float32)
        else:
            hit = tf.cast(draw(stream + 7, []) < tf.cast(probability, tf.float32), tf.float32)
        if op == "color":
            x = _color(x, draw, stream, hit)
        elif op == "translation":
            x = _translation(x, draw, stream, tf.cast(hit, tf.int32))
        else:
            x = _cutout(x, draw, stream, hit)
    return tf.cast(x, dtype)


def _per_image(values: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1] in the images' dtype."""
    return tf.cast(tf.reshape(values, [-1, 1, 1, 1]), dtype)


def _color(x: tf.Tensor, draw, stream: int, hit: tf.Tensor) -> tf.Tensor:
    """DiffAugment's rand_brightness, rand_saturation, rand_contrast; an image not hit keeps its colours."""
    brightness = (draw(stream, []) - 0.5) * hit
    saturation = 1.0 + (draw(stream + 1, []) * 2.0 - 1.0) * hit
    contrast = 1.0 + (draw(stream + 2, []) + 0.5 - 1.0) * hit
    x = x + _per_image(brightness, x.dtype)
    mean = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - mean) * _per_image(saturation, x.dtype) + mean
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * _per_image(contrast, x.dtype) + mean


def _shift_axis(x: tf.Tensor, shift: tf.Tensor, axis: int) -> tf.Tensor:
    """Move each image by shift[b] pixels along `axis` (1 = rows, 2 = columns), zeros shifted in."""
    size = tf.shape(x)[axis]
    padding = [[0, 0]] * 4
    padding[axis] = [1, 1]
    index = tf.clip_by_value(tf.range(size)[tf.newaxis] + shift[:, tf.newaxis] + 1, 0, size + 1)
    return tf.gather(tf.pad(x, padding), index, axis=axis, batch_dims=1)


def _translation(x: tf.Tensor, draw, stream: int, hit: tf.Tensor) -> tf.Tensor:
    """DiffAugment's rand_translation: integer shifts in [-s, s] per axis, s = side // 8, zero fill."""
    height, width = x.shape[1], x.shape[2]
    shift_h, shift_w = height // TRANSLATION_DIVISOR, width // TRANSLATION_DIVISOR
    dy = draw(stream, [], minval=-shift_h, maxval=shift_h + 1, dtype=tf.int32) * hit
    dx = draw(stream + 1, [], minval=-shift_w, maxval=shift_w + 1, dtype=tf.int32) * hit
    return _shift_axis(_shift_axis(x, dy, 1), dx, 2)


def _cutout(x: tf.Tensor, draw, stream: int, hit: tf.Tensor) -> tf.Tensor:
    """DiffAugment's rand_cutout: zero a square of side // 2 around a random centre (clipped at the border)."""
    height, width = x.shape[1], x.shape[2]
    size_h, size_w = height // CUTOUT_DIVISOR, width // CUTOUT_DIVISOR
    # The reference's centre range: [0, side + (1 - size % 2)).
    cy = draw(stream, [], minval=0, maxval=height + 1 - size_h % 2, dtype=tf.int32)
    cx = draw(stream + 1, [], minval=0, maxval=width + 1 - size_w % 2, dtype=tf.int32)
    top, left = cy - size_h // 2, cx - size_w // 2
    rows = tf.range(height)[tf.newaxis, :, tf.newaxis]
    cols = tf.range(width)[tf.newaxis, tf.newaxis, :]
    inside_rows = (rows >= top[:, None, None]) & (rows < top[:, None, None] + size_h)
    inside_cols = (cols >= left[:, None, None]) & (cols < left[:, None, None] + size_w)
    cut = tf.cast(inside_rows & inside_cols, tf.float32) * tf.reshape(hit, [-1, 1, 1])
    return x * tf.cast(1.0 - cut, x.dtype)[..., tf.newaxis]


def ada_adjust(p: tf.Tensor, sign_sum: tf.Tensor, images: tf.Tensor, target: float, kimg: float) -> tf.Tensor:
    """ADA's update: p + sign(r_t - target) * images / (kimg * 1000), clipped to [0, 1]; r_t = sign_sum / images."""
    r_t = sign_sum / tf.maximum(images, 1.0)
    return tf.clip_by_value(p + tf.sign(r_t - target) * images / (kimg * 1000.0), 0.0, 1.0)
