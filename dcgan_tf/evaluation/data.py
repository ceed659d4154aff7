"""Labelled real images as numpy arrays, in the same geometry (size, channels) the GAN was trained on."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dcgan_tf.config import Config
from dcgan_tf.input_pipeline import (AUTOTUNE, DatasetError, load_tfds_split, make_source, render_synthetic,
                                     scale_to_unit_range, tfds_builder)

# The synthetic set is infinite; its "test" split starts at this index so it never overlaps "train".
SYNTHETIC_TEST_START = 10**9


def num_classes(config: Config) -> int:
    """Number of labels of config.dataset (synthetic: 3 shapes)."""
    if config.dataset == "synthetic":
        return 3
    if config.dataset.startswith("folder:"):
        raise DatasetError(_NO_LABELS.format(config.dataset))
    return tfds_builder(config.dataset, config.data_dir).info.features["label"].num_classes


_NO_LABELS = ("dataset {!r} has no labels: the SVM protocol and the classifier need a labelled TFDS dataset "
              "(cifar10, svhn_cropped, mnist, fashion_mnist) or 'synthetic'")


def load_labeled(config: Config, split: str = "train", limit: int = 0,
                 download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` (0 = all) examples of a split: uint8 images [N,S,S,C] at config's size, int64 labels [N]."""
    if config.dataset.startswith("folder:"):
        raise DatasetError(_NO_LABELS.format(config.dataset))
    if config.dataset == "synthetic":
        if limit <= 0:
            raise ValueError("the synthetic dataset is infinite: pass a positive limit")
        start = SYNTHETIC_TEST_START if split == "test" else 0
        examples = tf.data.Dataset.range(start, start + limit).map(
            lambda i: render_synthetic(config.seed, i, config.image_size, config.channels or 3),
            num_parallel_calls=AUTOTUNE).map(lambda ex: (ex["image"], ex["label"]))
    else:
        examples = _tfds_labeled(config, split, download)
        if limit > 0:
            examples = examples.take(limit)
    return _to_numpy(examples.batch(1024).prefetch(AUTOTUNE))


def _tfds_labeled(config: Config, split: str, download: bool) -> tf.data.Dataset:
    """(image, label) pairs of a TFDS split in file order, images decoded exactly as for training."""
    import tensorflow_datasets as tfds

    source = make_source(config, split, download)  # its decode() is the training geometry (pad/crop/resize)
    _, records = load_tfds_split(config.dataset, config.data_dir, split, download, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()},
                                 read_config=tfds.ReadConfig(try_autocache=False))
    return records.map(lambda ex: (source.decode(ex["image"]), ex["label"]), num_parallel_calls=AUTOTUNE,
                       deterministic=True)


def _to_numpy(batches: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (images, labels) batches into two numpy arrays."""
    images, labels = [], []
    for image_batch, label_batch in batches.as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise DatasetError("the split is empty")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def load_real_images(config: Config, num: int, split: str = "train", offset: int = 0,
                     download: bool = True) -> np.ndarray:
    """`num` real images (after skipping `offset`) as float32 [-1, 1]; any dataset, labelled or not."""
    source = make_source(config, split, download)
    if source.num_examples is not None and offset + num > source.num_examples:
        raise DatasetError(f"asked for {num} real images after the first {offset}, but split {split!r} of "
                           f"{config.dataset!r} has only {source.num_examples}; lower --num_samples")
    images = source.records.skip(offset).take(num).map(source.decode, num_parallel_calls=AUTOTUNE,
                                                       deterministic=True)
    batches = images.map(scale_to_unit_range).batch(1024).prefetch(AUTOTUNE)
    return np.concatenate(list(batches.as_numpy_iterator()))
