"""Data sources: synthetic, folders of images, TFDS (mock data), scaling, determinism and resume offsets."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dcgan_tf import input_pipeline as ip
from dcgan_tf.config import Config


def first_batches(config, n, start_step=0, **kwargs):
    return [b.numpy() for b in ip.make_dataset(config, start_step=start_step, **kwargs).take(n)]


def test_synthetic_batches_are_scaled_seeded_and_resumable(tiny_config):
    batches = first_batches(tiny_config, 3)
    assert batches[0].shape == (8, 16, 16, 3) and batches[0].dtype == np.float32
    assert batches[0].min() >= -1 and batches[0].max() <= 1 and batches[0].min() < -0.5
    np.testing.assert_array_equal(batches[2], first_batches(tiny_config, 1, start_step=2)[0])
    assert not np.array_equal(batches[0], first_batches(tiny_config.replace(seed=1), 1)[0])


def test_synthetic_masks_match_the_drawn_shape():
    ex = ip.render_synthetic(0, 5, 32)
    image, mask = ex["image"].numpy(), ex["mask"].numpy()
    assert 0 < mask.mean() < 0.5
    inside, outside = image[mask], image[~mask]
    assert (inside == inside[0]).all() and (outside == outside[0]).all()  # two flat colours
    assert inside[0].astype(int).sum() > outside[0].astype(int).sum()  # bright shape on dark ground


def write_image(path, array):
    tf.io.write_file(path, tf.io.encode_png(array) if path.endswith(".png") else tf.io.encode_jpeg(array))


def test_folder_converts_channels_skips_corrupt_files_and_counts_them(tmp_path, caplog):
    rng = np.random.RandomState(0)
    os.makedirs(tmp_path / "sub")
    write_image(str(tmp_path / "gray.png"), rng.randint(0, 255, (40, 30, 1), dtype=np.uint8))
    write_image(str(tmp_path / "rgba.png"), rng.randint(0, 255, (20, 20, 4), dtype=np.uint8))
    write_image(str(tmp_path / "sub" / "rgb.jpg"), rng.randint(0, 255, (24, 48, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")
    config = Config(dataset=f"folder:{tmp_path}", image_size=16, channels=3, batch_size=3, train_steps=1)
    source = ip.make_source(config)
    assert source.num_examples == 3 and source.channels == 3
    batch = first_batches(config, 1, source=source)[0]
    assert batch.shape == (3, 16, 16, 3) and batch.min() >= -1 and batch.max() <= 1
    assert any("Skipped 1 unreadable" in r.getMessage() for r in caplog.records)
    gray = first_batches(config.replace(channels=1), 1)[0]
    assert gray.shape == (3, 16, 16, 1)


def test_empty_and_all_corrupt_folders_are_clear_errors(tmp_path):
    with pytest.raises(ip.DatasetError, match="no readable images"):
        ip.make_source(Config(dataset=f"folder:{tmp_path}", train_steps=1))
    (tmp_path / "a.jpg").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ip.DatasetError, match=r"no readable images .*1 corrupt"):
        ip.make_source(Config(dataset=f"folder:{tmp_path}", train_steps=1))
    with pytest.raises(ip.DatasetError, match="does not exist"):
        ip.make_source(Config(dataset=f"folder:{tmp_path}/missing", train_steps=1))


def test_tfds_mnist_like_is_padded_to_32_and_scaled():
    config = Config(dataset="mnist", image_size=32, batch_size=4, train_steps=1, shuffle_buffer=16)
    with tfds.testing.mock_data(num_examples=12):
        source = ip.make_source(config)
        assert source.channels == 1 and source.num_examples == 12
        batches = first_batches(config.replace(channels=1), 4, source=source)
    assert batches[0].shape == (4, 32, 32, 1)
    # Zero padding 28 -> 32: the 2-pixel border is black, i.e. -1 after scaling.
    assert (batches[0][:, :2] == -1).all() and (batches[0][:, :, -2:] == -1).all()
    assert batches[0].min() >= -1 and batches[0].max() <= 1


def test_tfds_celeb_a_recipe_crops_and_resizes():
    config = Config(dataset="celeb_a", image_size=16, batch_size=2, train_steps=1, shuffle_buffer=4)
    with tfds.testing.mock_data(num_examples=4):
        batch = first_batches(config.replace(channels=3), 1)[0]
    assert batch.shape == (2, 16, 16, 3)


def test_tfds_resume_offset_gives_the_same_batches():
    config = Config(dataset="cifar10", image_size=32, channels=3, batch_size=4, train_steps=1, shuffle_buffer=8)
    with tfds.testing.mock_data(num_examples=10):
        straight = first_batches(config, 5)
        resumed = first_batches(config, 2, start_step=3)
    np.testing.assert_array_equal(straight[3], resumed[0])
    np.testing.assert_array_equal(straight[4], resumed[1])


def test_missing_tfds_data_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ip, "_offline", lambda: True)  # never touch the network in tests
    config = Config(dataset="celeb_a", data_dir=str(tmp_path), train_steps=1)
    with pytest.raises(ip.DatasetError) as error:
        ip.make_source(config)
    message = str(error.value)
    assert "celeb_a" in message and str(tmp_path) in message and "--data_dir" in message
    assert "downloads/manual" in message and "folder:" in message


def test_input_context_shards_and_splits_the_batch(tiny_config):
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
                for i in range(2)]
    a, b = (first_batches(tiny_config, 1, input_context=c)[0] for c in contexts)
    assert a.shape == (4, 16, 16, 3) == b.shape
    assert not any(np.array_equal(x, y) for x in a for y in b)  # no image seen twice within a step
