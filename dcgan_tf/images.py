"""Image grids and PNG files."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from dcgan_tf.files import atomic_write


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"make_grid needs images of shape [N, H, W, C], got {images.shape}")
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, dtype=images.dtype)
    for i, image in enumerate(images):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def uint8_tensor(images) -> tf.Tensor:
    """float images in [-1, 1] -> uint8 [0, 255] as a TensorFlow op: round((x + 1) * 127.5) (half to even),
    clipped. The one rounding of every grid, PNG and served image (exports use it inside their graph)."""
    scaled = (tf.cast(images, tf.float32) + 1.0) * 127.5
    return tf.cast(tf.clip_by_value(tf.round(scaled), 0.0, 255.0), tf.uint8)


def to_uint8(images) -> np.ndarray:
    """float images in [-1, 1] -> uint8 [0, 255] (numpy), as uint8_tensor rounds them."""
    return uint8_tensor(images).numpy()


def write_png(path: str, image: np.ndarray) -> None:
    """Write a uint8 [H, W, C] image as PNG atomically (temporary file + rename)."""
    with atomic_write(path, "wb") as f:
        f.write(tf.io.encode_png(np.asarray(image, dtype=np.uint8)).numpy())


def read_png(path: str) -> np.ndarray:
    """Read a PNG (or any image TF decodes) as uint8 [H, W, C]."""
    return tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
