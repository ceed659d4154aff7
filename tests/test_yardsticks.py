"""The second, independent FID yardstick (the resnet classifier), extractor selection, and scoring .npy samples."""

import numpy as np
import pytest
import tensorflow as tf
from absl import app

from dcgan_tf import evaluate
from dcgan_tf.config import Config
from dcgan_tf.evaluation import data as data_lib
from dcgan_tf.evaluation import fid as fid_lib

CONFIG = Config(dataset="synthetic", image_size=16, channels=3, verbose=0)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """{architecture: path} of both classifiers, each trained for one epoch on 128 synthetic 16x16 RGB images."""
    folder = tmp_path_factory.mktemp("yardsticks")
    paths = {}
    for architecture in fid_lib.ARCHITECTURES:
        paths[architecture] = str(folder / f"{architecture}.keras")
        result = fid_lib.train_classifier(CONFIG, paths[architecture], epochs=1, batch_size=32, train_limit=128,
                                          test_limit=64, architecture=architecture)
        assert result["architecture"] == architecture and result["feature_dims"] == 128
    return paths


def test_the_two_classifiers_share_no_layer_and_each_extractor_checks_its_architecture(classifiers):
    cnn = tf.keras.models.load_model(classifiers["cnn"])
    resnet = tf.keras.models.load_model(classifiers["resnet"])
    assert (cnn.name, resnet.name) == (fid_lib.ARCHITECTURES["cnn"], fid_lib.ARCHITECTURES["resnet"])
    # Different networks: residual blocks with BatchNorm vs a plain CNN with a dense feature layer.
    assert any(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in resnet.layers)
    assert not any(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in cnn.layers)
    assert {layer.name for layer in cnn.layers} & {layer.name for layer in resnet.layers} <= {"images", "logits",
                                                                                             "features"}
    images = np.random.default_rng(0).uniform(-1, 1, (6, 16, 16, 3)).astype(np.float32)
    for kind, architecture in fid_lib.CLASSIFIER_EXTRACTORS.items():
        extractor = fid_lib.make_extractor(kind, classifier_path=classifiers[architecture])
        assert extractor(images).shape == (6, 128)
    with pytest.raises(fid_lib.EvaluationError, match="'cnn' classifier, not a 'resnet'"):
        fid_lib.make_extractor("resnet", classifier_path=classifiers["cnn"])
    with pytest.raises(fid_lib.EvaluationError, match="'resnet' classifier, not a 'cnn'"):
        fid_lib.make_extractor("classifier", classifier_path=classifiers["resnet"])
    with pytest.raises(fid_lib.EvaluationError, match="--architecture=resnet"):
        fid_lib.make_extractor("resnet")
    with pytest.raises(fid_lib.EvaluationError, match="unknown classifier architecture"):
        fid_lib.train_classifier(CONFIG, "/tmp/never.keras", architecture="vit")


def test_shift_flip_augment_moves_a_pixel_by_at_most_the_shift_and_pads_with_background():
    images = -np.ones((64, 16, 16, 1), np.float32)
    images[:, 8, 5] = 1.0  # one bright pixel, 5 from the left border: a flip moves it to column 10
    out = fid_lib.shift_flip_augment(tf.constant(images), tf.constant([3, 4], tf.int64), max_shift=3).numpy()
    assert out.shape == images.shape and set(np.unique(out)) <= {-1.0, 1.0}
    rows, cols = np.nonzero(out[..., 0] == 1.0)[1:]
    assert len(rows) == 64  # the pixel is never shifted out (it is >= 3 from every border)
    assert np.all(np.abs(rows - 8) <= 3)
    near_left, near_right = np.abs(cols - 5) <= 3, np.abs(cols - 10) <= 3
    assert np.all(near_left | near_right) and near_left.any() and near_right.any()  # both flips happen
    assert len({(r, c) for r, c in zip(rows, cols)}) > 8  # and many shifts
    again = fid_lib.shift_flip_augment(tf.constant(images), tf.constant([3, 4], tf.int64), max_shift=3).numpy()
    np.testing.assert_array_equal(out, again)  # stateless: the seed decides


def test_load_samples_accepts_the_peers_layouts_and_names_what_is_wrong(tmp_path):
    rng = np.random.default_rng(0)
    floats = rng.uniform(-1, 1, (10, 16, 16)).astype(np.float32)  # [N, S, S] as the PyTorch peer writes for gray
    np.save(tmp_path / "gray.npy", floats)
    loaded = fid_lib.load_samples(str(tmp_path / "gray.npy"), 8, (16, 16, 1))
    assert loaded.shape == (8, 16, 16, 1) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[..., 0], floats[:8])
    np.save(tmp_path / "u8.npy", np.full((4, 16, 16, 3), 255, np.uint8))
    assert np.allclose(fid_lib.load_samples(str(tmp_path / "u8.npy"), 4, (16, 16, 3)), 1.0)
    with pytest.raises(fid_lib.EvaluationError, match=r"expected \[N, 16, 16, 3\]"):
        fid_lib.load_samples(str(tmp_path / "gray.npy"), 8, (16, 16, 3))
    with pytest.raises(fid_lib.EvaluationError, match="fewer than --num_samples=11"):
        fid_lib.load_samples(str(tmp_path / "gray.npy"), 11, (16, 16, 1))
    np.save(tmp_path / "wide.npy", floats * 255)
    with pytest.raises(fid_lib.EvaluationError, match=r"outside \[-1, 1\]"):
        fid_lib.load_samples(str(tmp_path / "wide.npy"), 8, (16, 16, 1))
    with pytest.raises(fid_lib.EvaluationError, match="does not exist"):
        fid_lib.load_samples(str(tmp_path / "missing.npy"), 8, (16, 16, 1))


@pytest.mark.parametrize("extractor", ["classifier", "resnet"])
def test_fid_of_a_samples_file_goes_through_the_one_evaluate_path(classifiers, tmp_path, extractor):
    # Real images that are not the reference (the next 64 of the split) score exactly as the real-vs-real
    # floor, which compares the same images; noise scores far worse. Both extractors, one code path.
    num = 64
    others = data_lib.load_real_images(CONFIG, num, offset=num)
    np.save(tmp_path / "real.npy", others)
    np.save(tmp_path / "noise.npy", np.random.default_rng(1).uniform(-1, 1, others.shape).astype(np.float32))
    path = classifiers[fid_lib.CLASSIFIER_EXTRACTORS[extractor]]

    def score(name: str) -> dict:
        return evaluate.run_fid(evaluate.Options(
            samples=str(tmp_path / name), dataset="synthetic", image_size=16, channels=3, extractor=extractor,
            classifier_path=path, num_samples=num, kid_subsets=3))

    real = score("real.npy")
    assert real["generator"] == "samples" and real["extractor"] == extractor and "untrained" not in real
    assert real["generated"]["fid"] == pytest.approx(real["real_vs_real"]["fid"], rel=1e-6)
    assert score("noise.npy")["generated"]["fid"] > 3 * real["generated"]["fid"]
    fractions = real["generated"]["class_fractions"]  # which classes the samples cover, by the classifier
    assert len(fractions) == data_lib.num_classes(CONFIG) and sum(fractions) == pytest.approx(1.0, abs=1e-3)


def test_class_fractions_count_the_classifiers_decisions(classifiers):
    extractor = fid_lib.make_extractor("resnet", classifier_path=classifiers["resnet"])
    images = data_lib.load_real_images(CONFIG, 30)
    decided = np.argmax(extractor.classifier.predict(images, verbose=0), axis=1)
    expected = np.bincount(decided, minlength=3) / 30
    np.testing.assert_allclose(extractor.class_fractions(images), expected, atol=1e-4)


def test_fid_sources_are_exclusive_and_samples_need_a_dataset(tmp_path):
    with pytest.raises(app.UsageError, match="exactly one of"):
        evaluate.run_fid(evaluate.Options(model_dir="x", samples="y.npy", extractor="classifier"))
    with pytest.raises(app.UsageError, match="--samples needs --dataset"):
        evaluate.run_fid(evaluate.Options(samples="y.npy", extractor="inception", inception_weights=str(tmp_path / "none.h5")))
