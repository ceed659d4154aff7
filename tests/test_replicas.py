"""Several replicas train the paper's model: BatchNorm over the global batch by default (as on one device),
per-replica statistics only with --sync_batchnorm=false."""

import numpy as np

from dcgan_tf import checkpointing, train


def trained_weights(config, name, tmp_path, **changes):
    """G and D weights after train.train(config with changes) in tmp_path/name."""
    gan = train.train(config.replace(model_dir=str(tmp_path / name), **changes))
    return [v.numpy() for v in gan.generator.weights + gan.discriminator.weights]


def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_two_replicas_match_one_by_default_and_differ_without_sync(tiny_config, tmp_path):
    config = tiny_config.replace(train_steps=3, checkpoint_every=100, sample_every=100, log_every=100)
    one = trained_weights(config, "one", tmp_path, strategy="default")
    two = trained_weights(config, "two", tmp_path, strategy="mirrored")  # 2 CPU replicas (tests/conftest.py)
    assert largest_difference(one, two) < 1e-4  # the paper's BatchNorm over 8 images, not 4 per replica
    unsynced = trained_weights(config, "unsynced", tmp_path, strategy="mirrored", sync_batchnorm=False)
    assert largest_difference(one, unsynced) > 1e-3  # each replica normalised over its own 4 images
    assert checkpointing.read_run_config(str(tmp_path / "two")).sync_batchnorm
