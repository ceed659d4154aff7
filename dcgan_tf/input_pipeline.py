"""tf.data pipelines: TFDS datasets, a folder of images, and the built-in synthetic shapes.

Every training pipeline yields float32 batches [B, S, S, C] scaled to [-1, 1] (the paper's only
pre-processing), is deterministic given the seed, and can start at any step (`start_step`) so that a resumed
run sees exactly the data an uninterrupted run would have seen.

The order: pass (epoch) e over N examples visits them in a permutation seeded by (seed, e), computed per
position with `tf.random.experimental.index_shuffle`, so position p of the endless stream is example
perm_{p // N}(p % N). Where examples can be read by index (the synthetic set, folders, and any dataset small
enough to be kept decoded in memory) a resume at step k starts reading at position k x batch at once: its cost
does not depend on k. TFDS data above the memory limit is read sequentially (TFRecord has no random access):
each pass is cut into blocks of `shuffle_buffer` consecutive records, each block permuted by its own seed, and a
resume reads (without decoding) the skipped part of the current pass only: at most one pass of encoded records,
however long the run (docs/scale.md, "Data order, and resuming at any step").
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from dcgan_tf.config import Config

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# First bytes of each supported format: files without one are skipped before tf.data ever sees them.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a")
# Cache decoded, resized images in memory when they take less than this.
CACHE_LIMIT_BYTES = 2 * 1024**3
# The built-in synthetic set: each shape in its own saturated colour (RGB 0-255) on one dark background. Few,
# well-separated modes with crisp edges, so that a small DCGAN learns them in minutes on a CPU (the quickstart).
# Every shape colour is brighter (luma > 140) and the background darker (luma < 40) than middle grey, so the shape
# is exactly where the luma is above it (experiments/ablation.synthetic_masks relies on that).
SYNTHETIC_SHAPES = ("circle", "square", "triangle")
SYNTHETIC_COLOURS = ((255, 100, 70), (70, 210, 90), (80, 160, 255))  # orange-red circle, green square, blue triangle
SYNTHETIC_BACKGROUND = (24, 26, 38)
SYNTHETIC_RADIUS = (0.22, 0.30)  # shape size range, a fraction of the image side
SYNTHETIC_CENTRE = (0.40, 0.60)  # centre range: every shape lies wholly inside the image (extent <= 0.4 side)
# Second word of the seed of the data order, apart from the seeds of z and the synthetic images.
_ORDER_STREAM = 0x0DE7
# Second word of the seed of --mirror's flips.
_MIRROR_STREAM = 0x0F11
# Where TFDS downloads a dataset whose builder lists no URLs (its prepared copies on Google Cloud Storage).
_TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 5.0


class DatasetError(RuntimeError):
    """The data cannot be read; the message names the dataset, where it was looked for and the fixes."""


@dataclasses.dataclass
class Source:
    """Undecoded records plus how to turn one into a uint8 image [S, S, C] at the requested size."""

    records: tf.data.Dataset
    decode: Callable[[tf.Tensor], tf.Tensor]
    num_examples: int | None  # None = infinite
    channels: int  # channels of the decoded images (after conversion)
    # Random access, index -> record (folders); None when the records can only be read in order (TFDS).
    record_at: Callable[[tf.Tensor], tf.Tensor] | None = None
    # Decoded images kept in memory per (shards, shard), filled by the first make_dataset that needs them.
    decoded: dict = dataclasses.field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------------------------
# Image operations shared by every source.


def scale_to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the paper's only pre-processing."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Any of gray, gray+alpha, RGB, RGBA [H, W, c] -> [H, W, channels] (1 or 3); alpha is dropped."""
    c = tf.shape(image)[-1]
    rgb = tf.cond(c < 3, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    rgb.set_shape([None, None, 3])
    return tf.image.rgb_to_grayscale(rgb) if channels == 1 else rgb


def center_crop(image: tf.Tensor, size: int | None = None) -> tf.Tensor:
    """Crop the centre square of side `size` (default: the short side)."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1]) if size is None else size
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    return image[top:top + side, left:left + side]


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize a square uint8 image to size x size (antialiased when shrinking), back to uint8."""
    resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def fit_small_image(image: tf.Tensor, size: int, native: int) -> tf.Tensor:
    """MNIST-like 28x28 -> 32x32 by zero padding (the usual recipe), any other size by resizing."""
    if 0 < size - native <= 4:
        pad = size - native
        return tf.pad(image, [[pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
    return resize(image, size)


# ---------------------------------------------------------------------------------------------------------
# The built-in synthetic dataset: a coloured shape on a plain background, fully determined by (seed, index).


def render_synthetic(seed: int, index: tf.Tensor, size: int, channels: int = 3) -> dict[str, tf.Tensor]:
    """Example `index` of the synthetic set: {"image": uint8 [S,S,C], "mask": bool [S,S], "label": int32}.

    One shape (SYNTHETIC_SHAPES[label]) in its colour on the plain background, at a random position and size.
    """
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])

    def draw(shape, i, lo=0.0, hi=1.0):
        return tf.random.stateless_uniform(shape, seed=key + [0, i * 2**40], minval=lo, maxval=hi)

    cy, cx = tf.unstack(draw([2], 3, *SYNTHETIC_CENTRE) * size)
    radius = draw([], 4, *SYNTHETIC_RADIUS) * size
    label = tf.random.stateless_uniform([], seed=key + [0, 5 * 2**40], maxval=len(SYNTHETIC_SHAPES), dtype=tf.int32)
    ys, xs = tf.meshgrid(tf.range(size, dtype=tf.float32) + 0.5, tf.range(size, dtype=tf.float32) + 0.5,
                         indexing="ij")
    dy, dx = ys - cy, xs - cx
    # About equal visual weight: a circle of radius r, a square of half-side 1.05r, an upright equilateral
    # triangle of circumradius R = 1.45r centred on its bounding box (y grows downwards:
    # apex at -0.75R, base at +0.75R, sloped sides sqrt(3)|dx| - (dy - R/4) = R). Extent at most 1.26r.
    half_side = 1.05 * radius
    tri = 1.45 * radius
    ty = dy - tri / 4
    masks = tf.stack([dy**2 + dx**2 <= radius**2,
                      tf.maximum(tf.abs(dy), tf.abs(dx)) <= half_side,
                      (tf.abs(dx) * 3**0.5 - ty <= tri) & (ty <= tri / 2)])
    mask = tf.gather(masks, label)
    colour = tf.gather(tf.constant(SYNTHETIC_COLOURS, tf.uint8), label)
    image = tf.where(mask[..., None], colour, tf.constant(SYNTHETIC_BACKGROUND, tf.uint8))
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    return {"image": image, "mask": mask, "label": label}


def synthetic_examples(seed: int, size: int, channels: int = 3, start: int = 0) -> tf.data.Dataset:
    """Infinite dataset of synthetic example dicts (image, mask, label) from index `start` on."""
    return tf.data.Dataset.range(start, 2**62).map(
        lambda i: render_synthetic(seed, i, size, channels), num_parallel_calls=AUTOTUNE
    )


def synthetic_source(config: Config, channels: int) -> Source:
    """The synthetic set as a Source whose records are example indices."""
    return Source(
        records=tf.data.Dataset.range(2**62),
        decode=lambda i: render_synthetic(config.seed, i, config.image_size, channels)["image"],
        num_examples=None,
        channels=channels,
    )


# ---------------------------------------------------------------------------------------------------------
# A folder of the user's images.


def list_images(root: str) -> tuple[list[str], int]:
    """Image files under `root` (sorted) that start like a jpg/png/bmp/gif, and how many were skipped."""
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root!r} does not exist or is not a directory; pass "
                           "--dataset=folder:/path/to/a/directory/of/images")
    paths, skipped = [], 0
    for dirpath, _, filenames in sorted(os.walk(root)):
        for name in sorted(filenames):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                head = f.read(8)
            if head.startswith(_MAGIC):
                paths.append(path)
            else:
                skipped += 1
    return paths, skipped


def folder_source(config: Config, root: str) -> Source:
    """Images under `root`: decoded, converted to the requested channels, centre-cropped and resized."""
    paths, skipped = list_images(root)
    if skipped:
        logging.warning("Skipped %d unreadable image file(s) under %s (not a jpg/png/bmp/gif).", skipped, root)
    if not paths:
        raise DatasetError(
            f"no readable images in folder {root!r} ({skipped} corrupt file(s) skipped). Put .jpg, .png, .bmp "
            "or .gif files (subfolders are searched) there, or pick a TFDS dataset with --dataset"
        )
    logging.info("Found %d images under %s.", len(paths), root)
    channels = config.channels or 3
    all_paths = tf.constant(paths)

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        image = convert_channels(image, channels)
        return resize(center_crop(image), config.image_size)

    return Source(tf.data.Dataset.from_tensor_slices(all_paths), decode, len(paths), channels,
                  record_at=lambda index: tf.gather(all_paths, index))


# ---------------------------------------------------------------------------------------------------------
# TFDS datasets.


def download_hosts(builder) -> list[tuple[str, int]]:
    """(host, port) of every server TFDS downloads this dataset from, read from the builder's checksums file."""
    hosts = set()
    for url in builder.url_infos or {}:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    return sorted(hosts) or [_TFDS_DOWNLOAD_HOST]


def unreachable_host(hosts: list[tuple[str, int]]) -> str | None:
    """The first of `hosts` that refuses a TCP connection within seconds ("host:port (why)"), None if all accept.

    TFDS retries a failing download for minutes; one quick connection to each of the dataset's own servers
    tells at once that the download cannot work (no network, a firewall, a host that is gone).
    """
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                pass
        except OSError as e:
            return f"{host}:{port} ({e.strerror or e})"
    return None


def missing_dataset_error(name: str, data_dir: str | None, reason: str) -> DatasetError:
    """The one clear error for a TFDS dataset that is not prepared and cannot be downloaded."""
    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
    fixes = [
        f"prepare it on a machine with network access (python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\") and pass --data_dir=DIR",
        "train on your own images with --dataset=folder:/path/to/images",
        "or try the built-in data with --dataset=synthetic",
    ]
    if name == "celeb_a":
        fixes.insert(1, "celeb_a's Google Drive download often fails: put img_align_celeba.zip, "
                        "list_eval_partition.txt, list_attr_celeba.txt, list_landmarks_align_celeba.txt and "
                        f"identity_CelebA.txt in {data_dir or '~/tensorflow_datasets'}/downloads/manual and run again")
    if name.startswith("lsun"):
        fixes.insert(1, "lsun also needs tensorflow-io (pip install tensorflow-io)")
    return DatasetError(f"dataset {name!r} is not in {where}: {reason}. Fixes:\n  - " + "\n  - ".join(fixes))


def tfds_builder(name: str, data_dir: str | None):
    """The TFDS builder for `name`, or a clear error for a name TFDS does not know."""
    import tensorflow_datasets as tfds  # imported here: slow, and not needed for folder/synthetic data

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetError(f"TFDS does not know the dataset {name!r}: {e}") from None


def prepare_tfds(builder, name: str, data_dir: str | None, download: bool = True) -> None:
    """Download and prepare a dataset that is not on disk, if the network is there; else one clear error."""
    if not download:
        raise missing_dataset_error(name, data_dir, "it is not prepared there and downloading is off")
    blocked = unreachable_host(download_hosts(builder))
    if blocked:
        raise missing_dataset_error(name, data_dir, f"it is not prepared there and {blocked}, where TFDS downloads "
                                                    "it from, cannot be reached (no network?)")
    try:
        builder.download_and_prepare()
    except Exception as e:  # network, checksum (celeb_a's Drive quota page), missing manual files
        raise missing_dataset_error(name, data_dir, f"download_and_prepare failed ({type(e).__name__}: {e})") from e


def load_tfds_split(name: str, data_dir: str | None, split: str, download: bool = True, **kwargs):
    """(builder, builder.as_dataset(split, **kwargs)), preparing the data first when it is not on disk."""
    builder = tfds_builder(name, data_dir)
    try:
        return builder, builder.as_dataset(split=split, **kwargs)
    except AssertionError:  # TFDS's "could not find data in <data_dir>"
        prepare_tfds(builder, name, data_dir, download)
        return builder, builder.as_dataset(split=split, **kwargs)


def _tfds_recipe(name: str, size: int, native: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """The per-dataset geometry: celeb_a 108x108 centre crop, lsun short-side crop, small sets pad/resize."""
    if name == "celeb_a":  # the usual DCGAN face recipe: 108x108 centre crop of the 218x178 aligned faces
        return lambda image: resize(center_crop(image, 108), size)
    if name.startswith("lsun") or name.startswith("imagenet_resized"):
        return lambda image: resize(center_crop(image), size)
    return lambda image: fit_small_image(image, size, native)


def tfds_source(config: Config, split: str = "train", download: bool = True) -> Source:
    """A TFDS split as a Source of encoded images (decoded after shuffling, or cached decoded)."""
    import tensorflow_datasets as tfds

    builder, records = load_tfds_split(
        config.dataset, config.data_dir, split, download,
        shuffle_files=False,  # order comes from our seeded shuffle, so runs and resumes are reproducible
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    records = records.map(lambda ex: ex["image"])
    feature = builder.info.features["image"]
    native_channels = feature.shape[-1] or 3
    channels = config.channels or native_channels
    geometry = _tfds_recipe(config.dataset, config.image_size, feature.shape[0] or config.image_size)

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        image = feature.decode_example(encoded)
        if channels != native_channels:
            image = convert_channels(image, channels)
        return geometry(image)

    return Source(records, decode, _num_examples(builder, split, records), channels)


def _num_examples(builder, split: str, records: tf.data.Dataset) -> int:
    """The split's size from TFDS's metadata, else (data generated without it, e.g. mocked) by counting."""
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        known = int(records.cardinality())
        return known if known >= 0 else int(records.reduce(0, lambda n, _: n + 1))


def make_source(config: Config, split: str = "train", download: bool = True) -> Source:
    """The Source named by config.dataset."""
    if config.dataset == "synthetic":
        return synthetic_source(config, config.channels or 3)
    if config.dataset.startswith("folder:"):
        return folder_source(config, config.dataset[len("folder:"):])
    return tfds_source(config, split, download and config.download)


def resolve_channels(config: Config, download: bool = True) -> Config:
    """Config with channels set to the dataset's own when it was 0."""
    if config.channels:
        return config
    return config.replace(channels=make_source(config, download=download).channels)


# ---------------------------------------------------------------------------------------------------------
# The training pipeline.


def make_dataset(
    config: Config,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    source: Source | None = None,
) -> tf.data.Dataset:
    """Infinite, seeded batches of real images in [-1, 1], starting at `start_step`.

    With an `input_context` (multi-worker) each input pipeline reads its own shard and returns its
    per-replica batches; without one the batches are global and Keras splits them across replicas.
    """
    source = source or make_source(config)
    batch = config.batch_size
    shards, shard = 1, 0
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(config.batch_size)
        shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
    examples_per_step = batch * (1 if input_context is None else input_context.num_replicas_in_sync // shards)
    images = _image_stream(config, source, shards, shard, skip=start_step * examples_per_step)
    if config.mirror:
        images = mirrored(images, config.seed, shards, shard, skip=start_step * examples_per_step)
    ds = images.map(scale_to_unit_range, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _image_stream(config: Config, source: Source, shards: int, shard: int, skip: int) -> tf.data.Dataset:
    """This shard's endless, seeded stream of uint8 images, from position `skip` on (module docstring)."""
    if source.num_examples is None:  # synthetic: every index is already random; this shard's j-th is shard + j*shards
        return tf.data.Dataset.range(skip, 2**62).map(lambda j: source.decode(j * shards + shard),
                                                      num_parallel_calls=AUTOTUNE)
    size_bytes = (source.num_examples // shards) * config.image_size**2 * source.channels
    if size_bytes <= CACHE_LIMIT_BYTES:  # decode once, keep in memory, read by index
        images = decoded_images(source, shards, shard)
        return _permuted_positions(config.seed, int(images.shape[0]), skip).map(
            lambda index: tf.gather(images, index), num_parallel_calls=AUTOTUNE)
    if source.record_at is not None:  # too big to keep: read and decode each example by its index
        count = shard_size(source.num_examples, shards, shard)
        return _permuted_positions(config.seed, count, skip).map(
            lambda index: source.decode(source.record_at(index * shards + shard)),
            num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
    records = _blockwise_shuffled(config, _shard(source.records, shards, shard),
                                  shard_size(source.num_examples, shards, shard), skip)
    return records.map(source.decode, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)


def mirrored(images: tf.data.Dataset, seed: int, shards: int, shard: int,
             skip: int) -> tf.data.Dataset:
    """--mirror: each image of the stream flipped left-right with probability 1/2, seeded by its position in the
    stream (from `skip` on), so a resumed run flips exactly as an uninterrupted one."""
    positions = tf.data.Dataset.range(skip, 2**62)

    def flip(position: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        key = tf.random.experimental.stateless_fold_in(tf.constant([seed, _MIRROR_STREAM], tf.int64),
                                                       position * shards + shard)
        return tf.image.stateless_random_flip_left_right(image, key)

    return tf.data.Dataset.zip(positions, images).map(flip, num_parallel_calls=AUTOTUNE)


def _shard(records: tf.data.Dataset, shards: int, shard: int) -> tf.data.Dataset:
    """Records shard, shard + shards, shard + 2 shards, ... (all of them when there is one shard)."""
    return records.shard(shards, shard) if shards > 1 else records


def shard_size(num_examples: int, shards: int, shard: int) -> int:
    """How many of num_examples records `_shard` gives to `shard`."""
    return len(range(shard, num_examples, shards))


def pass_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The [2] stateless seed of pass `epoch` over the data."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, _ORDER_STREAM], tf.int64), epoch)


def _permuted_positions(seed: int, count: int, skip: int) -> tf.data.Dataset:
    """Example index at each stream position from `skip` on: pass p//count visits a seeded permutation."""
    if count <= 0:
        raise DatasetError("no decodable examples to train on: every image failed to decode")

    def index_at(position: tf.Tensor) -> tf.Tensor:
        epoch, offset = position // count, position % count
        return tf.random.experimental.index_shuffle(offset, pass_seed(seed, epoch), count - 1)

    return tf.data.Dataset.range(skip, 2**62).map(index_at, num_parallel_calls=AUTOTUNE)


def _blockwise_shuffled(config: Config, records: tf.data.Dataset, count: int, skip: int) -> tf.data.Dataset:
    """Sequential records, pass after pass, each block of shuffle_buffer records permuted; from `skip` on.

    Only the current pass's skipped blocks are read (not decoded) on a resume: at most one pass of records.
    """
    block = max(1, min(config.shuffle_buffer, count))
    first_epoch, offset = divmod(skip, count)
    first_block, within = divmod(offset, block)

    def one_pass(epoch: tf.Tensor, start_block: int = 0) -> tf.data.Dataset:
        blocks = records.skip(start_block * block).batch(block).enumerate(start_block)

        def permute(number: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
            n = tf.shape(items, out_type=tf.int64)[0]
            seed = tf.random.experimental.stateless_fold_in(pass_seed(config.seed, epoch), number)
            return tf.gather(items, tf.random.experimental.index_shuffle(tf.range(n), seed, n - 1))

        return blocks.map(permute).unbatch()

    first = one_pass(tf.constant(first_epoch, tf.int64), first_block).skip(within)
    rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(one_pass)
    return first.concatenate(rest)


def decoded_images(source: Source, shards: int = 1, shard: int = 0) -> tf.Tensor:
    """This shard's examples decoded once into memory, uint8 [n, S, S, C] (undecodable ones dropped)."""
    if (shards, shard) not in source.decoded:
        images = _shard(source.records, shards, shard).map(source.decode, num_parallel_calls=AUTOTUNE)
        parts = [batch.numpy() for batch in images.ignore_errors(log_warning=True).batch(1024)]
        if not parts:
            raise DatasetError("no decodable examples to train on: every image failed to decode")
        with tf.device("/cpu:0"):
            source.decoded[(shards, shard)] = tf.constant(np.concatenate(parts))
        logging.info("Kept %d decoded images in memory.", source.decoded[(shards, shard)].shape[0])
    return source.decoded[(shards, shard)]


def steps_per_epoch(config: Config, source: Source) -> int | None:
    """Global steps in one pass over the data (None for the infinite synthetic set)."""
    if source.num_examples is None:
        return None
    return max(1, source.num_examples // config.batch_size)
