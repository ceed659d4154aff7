"""Data sources: synthetic, folders of images, TFDS (mock data), scaling, determinism and resume offsets."""

import contextlib
import dataclasses
import os
import socket
import time

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


def test_tfds_resume_offset_gives_the_same_batches():
    config = Config(dataset="cifar10", image_size=32, channels=3, batch_size=4, train_steps=1, shuffle_buffer=8)
    with tfds.testing.mock_data(num_examples=10):
        straight = first_batches(config, 5)
        resumed = first_batches(config, 2, start_step=3)
    np.testing.assert_array_equal(straight[3], resumed[0])
    np.testing.assert_array_equal(straight[4], resumed[1])


def no_network(monkeypatch, reachable=()):
    """Sockets that connect only to `reachable` hosts (without touching the network) and a TFDS that would
    fail the test if it started a download; returns the list of hosts probed."""
    probed = []

    def create_connection(address, timeout=None, *args, **kwargs):
        probed.append(address[0])
        if address[0] not in reachable:
            raise ConnectionRefusedError(111, "Connection refused")
        return contextlib.nullcontext()

    def download_and_prepare(self, *args, **kwargs):
        raise AssertionError(f"the test started a download of {self.name}")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                        ("127.0.0.1", 443))])
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    return probed


def test_missing_tfds_data_offline_is_one_clear_error(tmp_path, monkeypatch):
    no_network(monkeypatch)
    config = Config(dataset="celeb_a", data_dir=str(tmp_path), train_steps=1)
    with pytest.raises(ip.DatasetError) as error:
        ip.make_source(config)
    message = str(error.value)
    assert "celeb_a" in message and str(tmp_path) in message and "--data_dir" in message
    assert "downloads/manual" in message and "folder:" in message


@pytest.mark.parametrize("dataset, host", [("celeb_a", "drive.google.com"), ("cifar10", "www.cs.toronto.edu"),
                                           ("lsun/bedroom", "dl.yf.io"), ("svhn_cropped", "ufldl.stanford.edu")])
def test_offline_is_decided_per_dataset_from_its_own_download_servers(tmp_path, monkeypatch, dataset, host):
    """Google Cloud Storage reachable but the dataset's own server not: a clear error naming that server, and
    no download started (TFDS would retry it for minutes)."""
    probed = no_network(monkeypatch, reachable={"storage.googleapis.com"})
    with pytest.raises(ip.DatasetError, match=rf"{host}:\d+ \(Connection refused\), where TFDS downloads it from, "
                                              r"cannot be reached"):
        ip.make_source(Config(dataset=dataset, data_dir=str(tmp_path), train_steps=1))
    assert host in probed


def test_reachable_download_servers_start_the_download(tmp_path, monkeypatch):
    probed = no_network(monkeypatch, reachable={"storage.googleapis.com"})
    with pytest.raises(ip.DatasetError, match="the test started a download of mnist"):
        ip.make_source(Config(dataset="mnist", data_dir=str(tmp_path), train_steps=1))
    assert probed == ["storage.googleapis.com"]


def test_download_off_fails_at_once_without_probing(tmp_path, monkeypatch):
    probed = no_network(monkeypatch)
    with pytest.raises(ip.DatasetError, match="downloading is off"):
        ip.make_source(Config(dataset="cifar10", data_dir=str(tmp_path), train_steps=1, download=False))
    assert probed == []


def test_input_context_shards_and_splits_the_batch(tiny_config):
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
                for i in range(2)]
    a, b = (first_batches(tiny_config, 1, input_context=c)[0] for c in contexts)
    assert a.shape == (4, 16, 16, 3) == b.shape
    assert not any(np.array_equal(x, y) for x in a for y in b)  # no image seen twice within a step


# ---------------------------------------------------------------------------------------------------------
# The data order: seeded permutation per pass, exact resume at a cost independent of the step.


def numbered_folder(path, count):
    """`count` 8x8 PNGs; image i has the constant value i in its first channel (so batches name their images)."""
    os.makedirs(path, exist_ok=True)
    for i in range(count):
        write_image(str(path / f"{i:04d}.png"), np.full((8, 8, 3), [i, 0, 0], np.uint8))
    return f"folder:{path}"


def image_ids(batch):
    """The image numbers in a batch of numbered_folder images (value i -> i/127.5 - 1)."""
    return [int(round((image[0, 0, 0] + 1) * 127.5)) for image in batch]


@pytest.mark.parametrize("cache_limit", [ip.CACHE_LIMIT_BYTES, 0], ids=["in_memory", "read_by_index"])
def test_folder_order_is_a_new_permutation_every_pass_and_resumes_exactly(tmp_path, monkeypatch, cache_limit):
    monkeypatch.setattr(ip, "CACHE_LIMIT_BYTES", cache_limit)
    config = Config(dataset=numbered_folder(tmp_path, 12), image_size=8, channels=3, batch_size=4, train_steps=1)
    source = ip.make_source(config)
    straight = [image_ids(b) for b in first_batches(config, 9, source=source)]  # 3 passes of 12 images
    passes = [sum(straight[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(p) == list(range(12)) for p in passes)  # every pass sees every image once
    assert passes[0] != passes[1] != passes[2] and passes[0] != list(range(12))  # reshuffled every pass
    for start in (1, 4, 8):
        assert [image_ids(b) for b in first_batches(config, 9 - start, start_step=start, source=source)] \
            == straight[start:]
    assert image_ids(first_batches(config.replace(seed=1), 3, source=source)[0]) != straight[0]


def counting(fn, counter):
    """fn, counting its calls (in graph: a tf.Variable incremented on every call)."""

    def counted(*args):
        with tf.control_dependencies([counter.assign_add(1)]):
            return tf.identity(fn(*args))

    return counted


def test_resume_reads_as_many_records_at_step_100k_as_at_step_1(tmp_path, monkeypatch):
    """A folder too big for memory: a resume reads one batch's images, not the 400,000 skipped ones."""
    monkeypatch.setattr(ip, "CACHE_LIMIT_BYTES", 0)
    config = Config(dataset=numbered_folder(tmp_path, 12), image_size=8, channels=3, batch_size=4, train_steps=1)
    source = ip.make_source(config)
    reads = {}
    for step in (1, 100_000):
        counter = tf.Variable(0, dtype=tf.int64)
        counted = dataclasses.replace(source, records=source.records.map(counting(tf.identity, counter)))
        if getattr(source, "record_at", None):  # random access by index
            counted.record_at = counting(source.record_at, counter)
        dataset = ip.make_dataset(config, start_step=step, source=counted)
        dataset = dataset.with_options(_sequential())
        next(iter(dataset))
        reads[step] = int(counter.numpy())
    # One batch plus what tf.data's parallel map reads ahead (seen: 7 to 10 under load), never more than one pass
    # of the 12 images; the old skip-based resume read 400,007 at step 100k.
    assert reads[1] <= 3 * config.batch_size and reads[100_000] <= 3 * config.batch_size, reads


def _sequential():
    """Options that make tf.data read no further ahead than it must (for counting reads)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.map_parallelization = False
    options.deterministic = True
    return options


def test_in_memory_resume_at_a_huge_step_does_not_walk_the_skipped_examples(tiny_config, tmp_path):
    """Data kept in memory: resuming at step 10^8 (4 x 10^8 examples later) takes as long as at step 1."""
    config = Config(dataset=numbered_folder(tmp_path, 12), image_size=8, channels=3, batch_size=4, train_steps=1)
    source = ip.make_source(config)
    first_batches(config, 1, source=source)  # decode into memory once
    start = time.perf_counter()
    late = first_batches(config, 1, start_step=10**8, source=source)[0]
    assert time.perf_counter() - start < 10
    epoch, offset = divmod(10**8 * 4, 12)
    order = tf.random.experimental.index_shuffle(tf.range(12, dtype=tf.int64), ip.pass_seed(0, epoch), 11)
    assert image_ids(late) == [int(order[offset + i]) for i in range(4)]


def test_tfds_too_big_for_memory_is_read_in_shuffled_blocks_and_resumes_exactly(monkeypatch):
    monkeypatch.setattr(ip, "CACHE_LIMIT_BYTES", 0)
    config = Config(dataset="cifar10", image_size=32, channels=3, batch_size=3, train_steps=1, shuffle_buffer=4)
    with tfds.testing.mock_data(num_examples=10):
        source = ip.make_source(config)
        every = np.stack([ip.scale_to_unit_range(source.decode(r)).numpy() for r in source.records])
        straight = np.concatenate(first_batches(config, 10, source=source))  # 3 passes of 10
        for start in (1, 3, 4, 7):  # inside a block, at a block start, across passes
            resumed = np.concatenate(first_batches(config, 10 - start, start_step=start, source=source))
            np.testing.assert_array_equal(resumed, straight[3 * start:])
    ids = [int(np.argmin([np.abs(e - image).sum() for e in every])) for image in straight]
    passes = [ids[0:10], ids[10:20], ids[20:30]]
    assert all(sorted(p) == list(range(10)) for p in passes) and passes[0] != passes[1]
    # Blocks of shuffle_buffer=4 consecutive records: 0-3, 4-7, 8-9, each permuted.
    assert all(sorted(p[0:4]) == [0, 1, 2, 3] and sorted(p[4:8]) == [4, 5, 6, 7] for p in passes)
