"""The two evaluation protocols end to end, each returning a JSON-able dict: feature SVM and FID/KID."""

from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import keras
import numpy as np
from absl import logging

from dcgan_tf.config import Config
from dcgan_tf.evaluation import data as data_lib
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.evaluation import svm as svm_lib
from dcgan_tf.evaluation.features import discriminator_features, pixel_features
from dcgan_tf.files import atomic_write
from dcgan_tf.models import build_discriminator, build_generator

FEATURE_BASELINES = ("pixels", "random_d")
FID_BASELINES = ("real", "untrained")
# Offset of the seed of the baselines' random networks from the run's seed: other weights than the run's init.
RANDOM_INIT_SEED_OFFSET = 7919


def write_json(path: str, record: dict) -> None:
    """Write a JSON result atomically (temporary file + rename)."""
    with atomic_write(path) as f:
        json.dump(record, f, indent=2, sort_keys=True)


def random_discriminator(config: Config, seed: int) -> keras.Model:
    """The run's discriminator architecture with fresh N(0, 0.02) weights (the paper's "random filters")."""
    keras.utils.set_random_seed(seed)
    return build_discriminator(config)


def _check_baselines(baselines: Sequence[str], known: Sequence[str]) -> None:
    """Reject unknown baseline names."""
    unknown = sorted(set(baselines) - set(known))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(known)}")


def _train_pool_size(config: Config, validation_examples: int, labels_per_class: int, train_examples: int) -> int:
    """How much of the train split to read: all of a TFDS split (0); a bounded prefix of the infinite synthetic one."""
    if config.dataset != "synthetic":
        return 0
    labelled = train_examples or labels_per_class * data_lib.num_classes(config) * 4 or 5000
    return validation_examples + labelled


def feature_svm_report(config: Config, discriminator: keras.Model, labels_per_class: int = 0,
                       train_examples: int = 0, validation_examples: int = 10_000, test_examples: int = 0,
                       baselines: Sequence[str] = FEATURE_BASELINES, c_grid=svm_lib.DEFAULT_C_GRID,
                       seed: int = 0, batch_size: int = 256) -> dict:
    """The paper's protocol: pooled D features -> L2-SVM (C on validation) -> test accuracy; same for baselines."""
    _check_baselines(baselines, FEATURE_BASELINES)
    start = time.time()
    pool = _train_pool_size(config, validation_examples, labels_per_class, train_examples)
    train_images, train_labels = data_lib.load_labeled(config, "train", pool)
    test_images, test_labels = data_lib.load_labeled(config, "test", test_examples or pool)
    split = svm_lib.make_protocol_split(train_labels, validation_examples, labels_per_class, train_examples, seed)
    logging.info("SVM protocol: %d labelled training, %d validation, %d test images.", len(split.train),
                 len(split.validation), len(test_images))
    extractors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "dcgan_d": lambda x: discriminator_features(discriminator, x, batch_size)}
    if "pixels" in baselines:
        extractors["pixels"] = pixel_features
    if "random_d" in baselines:
        random_d = random_discriminator(config, config.seed + RANDOM_INIT_SEED_OFFSET)
        extractors["random_d"] = lambda x: discriminator_features(random_d, x, batch_size)
    results = {}
    for name, extract in extractors.items():
        results[name] = svm_lib.evaluate_features(
            (extract(fid_lib.as_unit_range(train_images[split.train])), train_labels[split.train]),
            (extract(fid_lib.as_unit_range(train_images[split.validation])), train_labels[split.validation]),
            (extract(fid_lib.as_unit_range(test_images)), test_labels), c_grid).to_dict()
        logging.info("%s: test accuracy %.4f", name, results[name]["test_accuracy"])
    return {
        "protocol": {"labels_per_class": labels_per_class, "train_examples": len(split.train),
                     "validation_examples": len(split.validation), "test_examples": len(test_images),
                     "c_grid": list(c_grid), "seed": seed},
        "results": results,
        "seconds": round(time.time() - start, 1),
    }


def fid_report(config: Config, generator: Callable | np.ndarray, extractor: fid_lib.Extractor, num_samples: int = 10_000,
               baselines: Sequence[str] = FID_BASELINES, bn_samples: int = 0, kid_subsets: int = fid_lib.KID_SUBSETS,
               seed: int = 0, split: str = "train", others: dict[str, Callable] | None = None) -> dict:
    """FID/KID of `generator` (z -> [-1, 1] images) vs num_samples real images; optional floor and untrained G.

    Baselines: "real" compares num_samples other real images of the same split (the floor a perfect generator
    would reach with this many samples); "untrained" a generator of the same architecture at initialisation.
    `others`: more generators compared with the same real images and z, reported under their names.
    `generator` may also be an array of num_samples images in [-1, 1] made elsewhere (fid.load_samples).
    """
    _check_baselines(baselines, FID_BASELINES)
    start = time.time()
    need = num_samples * (2 if "real" in baselines else 1)
    real = data_lib.load_real_images(config, need, split)
    reference = extractor(real[:num_samples])

    def against_reference(images: np.ndarray) -> dict:
        scores = fid_lib.compare_features(reference, extractor(images), kid_subsets, seed)
        if hasattr(extractor, "class_fractions"):  # a classifier also says which classes the images cover
            scores["class_fractions"] = extractor.class_fractions(images)
        return scores

    def generated_by(g: Callable | np.ndarray) -> np.ndarray:
        if isinstance(g, np.ndarray):
            return g[:num_samples]
        return fid_lib.generate_images(g, num_samples, config.nz, config.z_dist, seed)

    report = {"num_samples": num_samples, "split": split, "generated": against_reference(generated_by(generator))}
    for name, other in (others or {}).items():
        report[name] = against_reference(generated_by(other))
    if "real" in baselines:
        report["real_vs_real"] = against_reference(real[num_samples:])
    if "untrained" in baselines:
        keras.utils.set_random_seed(config.seed + RANDOM_INIT_SEED_OFFSET)
        untrained = fid_lib.inference_generator(build_generator(config), config, bn_samples)
        report["untrained"] = against_reference(generated_by(untrained))
    report["seconds"] = round(time.time() - start, 1)
    return report
