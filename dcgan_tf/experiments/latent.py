"""Latent-space experiments: sample sheets, interpolations (Fig. 4), vector arithmetic (Fig. 7), walks (Fig. 8).

Each `run_*` function returns a dict of numpy arrays (the numbers behind the figure; saved as .npz) and
draws every random number from a stateless seed, so the same arguments give the same result.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from dcgan_tf.experiments.sources import GenerateFn
from dcgan_tf.gan import sample_latent

# Independent random streams (the second half of the stateless seed) so that, with one --seed, the sheet,
# the interpolation endpoints, the walk's starting points, ... are all different samples.
STREAM_SHEET = 0  # == DCGAN.sample_z(num, seed): the sheet is what the model's own sampler draws
STREAM_INTERPOLATE = 1
STREAM_WALK = 2
STREAM_MEMORIZATION = 3
STREAM_ABLATE = 4
STREAM_ARITHMETIC_NOISE = 5


def sample_z(num: int, nz: int, seed: int, z_dist: str = "uniform", stream: int = STREAM_SHEET) -> np.ndarray:
    """z [num, nz] float32 from (seed, stream), drawn like the model's own `sample_latent`."""
    return sample_latent(num, nz, tf.constant([seed, stream], tf.int64), z_dist).numpy()


def uniform_noise(shape: Sequence[int], scale: float, seed: int, stream: int) -> np.ndarray:
    """Noise uniform in [-scale, scale] from (seed, stream)."""
    return tf.random.stateless_uniform(list(shape), tf.constant([seed, stream], tf.int64), -scale, scale).numpy()


def lerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points [steps, nz] on the straight line from z0 to z1, both ends included exactly."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    path = (1.0 - t) * np.float64(z0) + t * np.float64(z1)
    path[0], path[-1] = z0, z1  # exact ends, whatever the rounding
    return path.astype(np.float32)


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points on the great-circle arc from z0 to z1 (norms interpolated linearly), ends exact."""
    a, b = np.float64(z0), np.float64(z1)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:  # (anti)parallel: the arc is not defined, the line is the sensible answer
        return lerp(z0, z1, steps)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    path = (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    path[0], path[-1] = z0, z1
    return path.astype(np.float32)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "linear") -> np.ndarray:
    """Points from z0 to z1: method "linear" (the paper's) or "spherical" (slerp, better for normal z)."""
    if method == "linear":
        return lerp(z0, z1, steps)
    if method == "spherical":
        return slerp(z0, z1, steps)
    raise ValueError(f"interpolation method {method!r} must be 'linear' or 'spherical'")


def exemplar_mean(z: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """The mean z of some exemplars (the paper averages three: single samples are unstable)."""
    indices = list(indices)
    if not indices:
        raise ValueError("a concept needs at least one exemplar index")
    bad = [i for i in indices if not 0 <= i < len(z)]
    if bad:
        raise ValueError(f"exemplar indices {bad} are outside the sheet's 0..{len(z) - 1}")
    return np.mean(np.float64(z[indices]), axis=0).astype(np.float32)


def vector_arithmetic(z: np.ndarray, a: Sequence[int], b: Sequence[int], c: Sequence[int]) -> dict[str, np.ndarray]:
    """Y = mean(A) - mean(B) + mean(C) over sheet z; returns the three means and Y."""
    mean_a, mean_b, mean_c = exemplar_mean(z, a), exemplar_mean(z, b), exemplar_mean(z, c)
    return {"mean_a": mean_a, "mean_b": mean_b, "mean_c": mean_c, "y": mean_a - mean_b + mean_c}


def pixel_arithmetic(images: np.ndarray, a: Sequence[int], b: Sequence[int], c: Sequence[int]) -> np.ndarray:
    """The paper's baseline: the same arithmetic on the exemplars' mean images, clipped to [-1, 1]."""
    means = [np.mean(images[list(idx)], axis=0) for idx in (a, b, c)]
    return np.clip(means[0] - means[1] + means[2], -1.0, 1.0)


def run_sheet(generate: GenerateFn, nz: int, num: int, seed: int, z_dist: str) -> dict[str, np.ndarray]:
    """`num` samples with their z, numbered 0..num-1 so a person can pick exemplars by index."""
    z = sample_z(num, nz, seed, z_dist, STREAM_SHEET)
    return {"z": z, "images": generate(z), "seed": np.int64(seed), "z_dist": np.str_(z_dist)}


def run_interpolate(generate: GenerateFn, nz: int, rows: int, steps: int, seed: int, z_dist: str,
                    method: str = "linear") -> dict[str, np.ndarray]:
    """`rows` walks of `steps` points between random pairs of z (Fig. 4); z [rows, steps, nz]."""
    ends = sample_z(2 * rows, nz, seed, z_dist, STREAM_INTERPOLATE)
    return run_interpolate_between(generate, ends[0::2], ends[1::2], steps, method)


def run_interpolate_between(generate: GenerateFn, starts: np.ndarray, ends: np.ndarray, steps: int,
                            method: str = "linear") -> dict[str, np.ndarray]:
    """One walk of `steps` points per row from starts[r] to ends[r] (e.g. projected images); z [rows, steps, nz]."""
    rows, nz = starts.shape
    z = np.stack([interpolate(starts[r], ends[r], steps, method) for r in range(rows)])
    images = generate(z.reshape(rows * steps, nz))
    return {"z": z, "images": images.reshape((rows, steps) + images.shape[1:]), "method": np.str_(method)}


def run_arithmetic(generate: GenerateFn, sheet_z: np.ndarray, sheet_images: np.ndarray, a: Sequence[int],
                   b: Sequence[int], c: Sequence[int], noise: float = 0.25, seed: int = 0) -> dict[str, np.ndarray]:
    """Fig. 7: exemplars and their mean images, a 3x3 grid around G(Y) (Y in the centre), the pixel baseline."""
    result = vector_arithmetic(sheet_z, a, b, c)
    # 8 neighbours of Y: Y plus uniform noise in [-noise, noise] (paper: +-0.25); the centre cell is Y itself.
    offsets = uniform_noise([9, sheet_z.shape[1]], noise, seed, STREAM_ARITHMETIC_NOISE)
    offsets[4] = 0.0
    grid_z = result["y"][None] + offsets
    means_z = np.stack([result["mean_a"], result["mean_b"], result["mean_c"]])
    generated = generate(np.concatenate([grid_z, means_z], axis=0))
    result.update({
        "a": np.asarray(a), "b": np.asarray(b), "c": np.asarray(c),
        "grid_z": grid_z, "grid_images": generated[:9], "mean_images": generated[9:],
        "exemplar_images": np.stack([sheet_images[list(idx)] for idx in (a, b, c)]),
        "pixel_result": pixel_arithmetic(sheet_images, a, b, c), "noise": np.float32(noise),
    })
    return result


def attribute_vector(z: np.ndarray, source: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """Fig. 8's "turn" vector: mean z of the `target` exemplars minus mean z of the `source` ones."""
    return exemplar_mean(z, target) - exemplar_mean(z, source)


def walk(z_start: np.ndarray, vector: np.ndarray, steps: int, scale: float = 1.0) -> np.ndarray:
    """z_start [R, nz] + t * vector for `steps` values of t from 0 to `scale`: [R, steps, nz]."""
    t = np.linspace(0.0, scale, steps, dtype=np.float32)[None, :, None]
    return (z_start[:, None, :] + t * vector[None, None, :]).astype(np.float32)


def run_walk(generate: GenerateFn, sheet_z: np.ndarray, source: Sequence[int], target: Sequence[int], rows: int,
             steps: int, seed: int, z_dist: str, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Fig. 8: the attribute vector added in steps to `rows` random samples."""
    vector = attribute_vector(sheet_z, source, target)
    z_start = sample_z(rows, sheet_z.shape[1], seed, z_dist, STREAM_WALK)
    z = walk(z_start, vector, steps, scale)
    images = generate(z.reshape(rows * steps, -1))
    return {"vector": vector, "z": z, "images": images.reshape((rows, steps) + images.shape[1:]),
            "from": np.asarray(source), "to": np.asarray(target), "scale": np.float32(scale)}
