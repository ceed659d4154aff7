"""Every TFDS recipe runs on mock data (tfds.testing.mock_data) with images of known content: the crop region,
the padding, the channel count and the [-1, 1] range are what input_pipeline promises for each dataset."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dcgan_tf import input_pipeline as ip
from dcgan_tf.config import TFDS_DATASETS, Config

QUADRANTS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [230, 230, 30]], np.uint8)
OUTSIDE = np.array([255, 0, 255], np.uint8)  # magenta: must never reach the output


@contextlib.contextmanager
def serving(image):
    """TFDS mocked so that every split holds exactly this one (PNG-encoded) image."""
    encoded = tf.io.encode_png(image).numpy()

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
        return tf.data.Dataset.from_tensors({"image": encoded})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield


def pipeline_output(dataset, image, image_size, channels=0):
    """The first training batch's first image for a dataset made of `image`, and the Source's channels."""
    config = Config(dataset=dataset, image_size=image_size, channels=channels, batch_size=1, train_steps=1)
    with serving(image):
        source = ip.make_source(config)
        batch = next(iter(ip.make_dataset(config.replace(channels=source.channels), source=source))).numpy()
    assert batch.dtype == np.float32 and batch.min() >= -1 and batch.max() <= 1
    return batch[0], source.channels


def quadrant_image(height, width, top, left, side):
    """OUTSIDE everywhere but a side x side square at (top, left) split into four coloured quadrants."""
    image = np.tile(OUTSIDE, (height, width, 1))
    half = side // 2
    for i, (y, x) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
        image[top + y:top + y + half, left + x:left + x + half] = QUADRANTS[i]
    return image


def assert_quadrants(output):
    """Each output quadrant is its colour (scaled to [-1, 1]) away from the centre lines: no OUTSIDE anywhere."""
    size = output.shape[0]
    inner = size // 2 - size // 8  # stay clear of the blur across the quadrant boundaries
    expected = QUADRANTS / 127.5 - 1
    corners = [output[:inner, :inner], output[:inner, -inner:], output[-inner:, :inner], output[-inner:, -inner:]]
    for corner, colour in zip(corners, expected):
        np.testing.assert_allclose(corner, np.broadcast_to(colour, corner.shape), atol=1.5 / 127.5)


def test_every_tfds_dataset_has_a_test_here():
    tested = {"celeb_a", "lsun/bedroom", "imagenet_resized/64x64", "imagenet_resized/32x32", "cifar10",
              "svhn_cropped", "mnist", "fashion_mnist"}
    assert tested == set(TFDS_DATASETS)


def test_celeb_a_is_the_108_centre_crop_of_the_218x178_face_resized():
    # The crop starts at row (218 - 108) // 2 = 55, column (178 - 108) // 2 = 35; OUTSIDE all around it.
    output, channels = pipeline_output("celeb_a", quadrant_image(218, 178, 55, 35, 108), 16)
    assert channels == 3 and output.shape == (16, 16, 3)
    assert_quadrants(output)


def test_celeb_a_crop_is_not_the_short_side_square():
    # A 178x178 centre square (the other recipe) would start at row 20: content there must not show.
    image = quadrant_image(218, 178, 55, 35, 108)
    image[20:55] = 0
    image[163:198] = 0
    output, _ = pipeline_output("celeb_a", image, 16)
    assert output.min() > -0.9  # no black from outside the 108x108 crop


@pytest.mark.parametrize("height, width", [(40, 60), (60, 40)])
def test_lsun_bedroom_is_the_short_side_centre_square_resized(height, width):
    side = min(height, width)
    image = quadrant_image(height, width, (height - side) // 2, (width - side) // 2, side)
    output, channels = pipeline_output("lsun/bedroom", image, 16)
    assert channels == 3 and output.shape == (16, 16, 3)
    assert_quadrants(output)


def test_imagenet_64_resized_to_32():
    output, channels = pipeline_output("imagenet_resized/64x64", quadrant_image(64, 64, 0, 0, 64), 32)
    assert channels == 3 and output.shape == (32, 32, 3)
    assert_quadrants(output)


@pytest.mark.parametrize("dataset", ["imagenet_resized/32x32", "cifar10", "svhn_cropped", "imagenet_resized/64x64"])
def test_native_size_rgb_is_passed_through_exactly(dataset):
    size = 64 if dataset.endswith("64x64") else 32
    image = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    output, channels = pipeline_output(dataset, image, size)
    assert channels == 3
    np.testing.assert_array_equal(output, image / np.float32(127.5) - 1)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_mnist_like_28_is_zero_padded_to_32_one_channel(dataset):
    image = np.random.default_rng(2).integers(1, 256, (28, 28, 1), dtype=np.uint8)
    output, channels = pipeline_output(dataset, image, 32)
    assert channels == 1 and output.shape == (32, 32, 1)
    np.testing.assert_array_equal(output[2:30, 2:30], image / np.float32(127.5) - 1)  # centred, untouched
    border = np.ones((32, 32, 1), bool)
    border[2:30, 2:30] = False
    assert (output[border] == -1).all()  # 2 black pixels on every side


def test_rgb_dataset_converted_to_one_channel():
    image = np.tile(np.array([100, 150, 200], np.uint8), (32, 32, 1))
    output, channels = pipeline_output("cifar10", image, 32, channels=1)
    assert channels == 1 and output.shape == (32, 32, 1)
    gray = tf.image.rgb_to_grayscale(image).numpy()
    np.testing.assert_array_equal(output, gray / np.float32(127.5) - 1)
