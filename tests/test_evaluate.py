"""Evaluation: the paper's D features, the L2-SVM protocol, FID/KID math, the in-training FID callback, the CLI."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from sklearn.svm import LinearSVC

from dcgan_tf import checkpointing, train
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.evaluation import reports, svm
from dcgan_tf.evaluation.callback import BEST_FILE, FIDCallback, make_fid_callback, read_best
from dcgan_tf.evaluation.features import build_feature_extractor, discriminator_features, pooled_feature_dims
from dcgan_tf.gan import build_gan
from dcgan_tf.input_pipeline import make_dataset
from dcgan_tf.models import build_discriminator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------------
# Discriminator features.


def test_paper_imagenet_32x32_discriminator_gives_28672_features():
    # Paper section 5.1: 28672 = 16 * (256 + 512 + 1024), i.e. ndf=256 at 32x32 (three layers ending in 1024 maps).
    config = Config(image_size=32, channels=3, ndf=256)
    assert pooled_feature_dims(config) == 28_672
    assert pooled_feature_dims(config.replace(ndf=128)) == 14_336  # not the paper's net
    extractor = build_feature_extractor(build_discriminator(config))
    assert extractor.output_shape == (None, 28_672)
    assert extractor(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 28_672)


def test_features_are_every_conv_layer_max_pooled_to_4x4():
    config = Config(image_size=16, channels=1, ndf=8)
    d = build_discriminator(config)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
    features = discriminator_features(d, images)
    assert features.shape == (3, (8 + 16) * 16) == (3, pooled_feature_dims(config))
    conv0 = keras.Model(d.input, d.get_layer("conv0_lrelu").output)(images).numpy()  # [3, 8, 8, 8]
    conv1 = keras.Model(d.input, d.get_layer("conv1_lrelu").output)(images, training=False).numpy()  # [3,4,4,16]
    pooled0 = conv0.reshape(3, 4, 2, 4, 2, 8).max(axis=(2, 4))  # 2x2 windows -> 4x4 grid
    np.testing.assert_allclose(features[:, :128], pooled0.reshape(3, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[:, 128:], conv1.reshape(3, -1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# L2-SVM protocol.


def blobs(n_per_class, centres, rng, noise=0.5):
    x = np.concatenate([c + noise * rng.standard_normal((n_per_class, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), n_per_class)
    return x.astype(np.float32), y


def test_svm_separates_separable_toy_data_and_picks_c_on_validation():
    rng = np.random.default_rng(0)
    centres = 4 * np.eye(3, 20)
    train, val, test = (blobs(n, centres, rng) for n in (30, 50, 100))
    result = svm.evaluate_features(train, val, test, c_grid=(1e-3, 1e-1, 1.0))
    assert result.test_accuracy == 1.0 and result.validation_accuracy == 1.0
    assert set(result.validation_accuracy_by_c) == {"0.001", "0.1", "1"} and result.best_c in (1e-3, 1e-1, 1.0)
    assert result.feature_dims == 20 and result.train_examples == 90
    # Labels unrelated to the inputs: nothing to learn, so accuracy is near chance (1/3), far below 1.
    shuffled = svm.evaluate_features((train[0], rng.permutation(train[1])), val, test, c_grid=(1.0,))
    assert shuffled.test_accuracy < 0.7


@pytest.mark.parametrize("num_classes", [2, 3])
def test_svm_solves_the_same_problem_as_sklearn_linear_svc(num_classes):
    # Same objective as LinearSVC(loss="squared_hinge", penalty="l2"), whose intercept penalty a large
    # intercept_scaling makes negligible: the weights must agree.
    rng = np.random.default_rng(1)
    x, y = blobs(60, rng.standard_normal((num_classes, 6)), rng, noise=1.0)
    ours = svm.fit_l2_svm(x, y, c=0.1, tol=1e-12, max_iter=5000)
    theirs = LinearSVC(C=0.1, loss="squared_hinge", intercept_scaling=100, tol=1e-8, max_iter=100_000).fit(x, y)
    coef = theirs.coef_.T if num_classes > 2 else np.concatenate([-theirs.coef_.T, theirs.coef_.T], axis=1)
    np.testing.assert_allclose(ours.weights, coef, atol=2e-3)
    assert np.mean(ours.predict(x) == theirs.predict(x)) == 1.0


def test_protocol_split_is_disjoint_and_class_balanced():
    labels = np.repeat(np.arange(4), 50)
    split = svm.make_protocol_split(labels, validation_examples=40, labels_per_class=5, seed=1)
    assert len(split.validation) == 40 and len(split.train) == 20
    assert not set(split.train) & set(split.validation)
    assert np.bincount(labels[split.train]).tolist() == [5, 5, 5, 5]
    assert len(svm.make_protocol_split(labels, 40, train_examples=100).train) == 100
    with pytest.raises(ValueError, match="labels_per_class"):
        svm.make_protocol_split(labels, 40, labels_per_class=100)


def planted_features(config, separable):
    """A stand-in for discriminator_features: one-hot labels (+ noise) of the report's own images, looked up by
    their pixels, or the same noise alone. The report must reach 100% with the first, ~chance with the second."""
    from dcgan_tf.evaluation import data as data_lib

    label_of = {}
    for split in ("train", "test"):
        images, labels = data_lib.load_labeled(config, split, 200)
        label_of.update({image.tobytes(): int(label) for image, label in zip(images, labels)})
    rng = np.random.default_rng(0)

    def features(discriminator, images, batch_size=256):
        pixels = np.round((np.asarray(images) + 1) * 127.5).astype(np.uint8)
        labels = np.array([label_of[image.tobytes()] for image in pixels])
        noise = rng.normal(0, 0.1, (len(images), 3)).astype(np.float32)
        return noise + (np.eye(3, dtype=np.float32)[labels] if separable else 0)

    return features


def test_feature_svm_report_separates_planted_separable_features(tiny_config, monkeypatch):
    d = build_discriminator(tiny_config)
    options = dict(labels_per_class=10, validation_examples=60, test_examples=60, c_grid=(0.01, 1.0))
    monkeypatch.setattr(reports, "discriminator_features", planted_features(tiny_config, separable=True))
    report = reports.feature_svm_report(tiny_config, d, **options)
    assert set(report["results"]) == {"dcgan_d", "pixels", "random_d"}
    assert report["protocol"]["train_examples"] == 30  # 10 per class, 3 shapes
    assert report["results"]["pixels"]["feature_dims"] == 16 * 16 * 3
    # Labels travel with their images through the split, the extractors and the SVM: separable means 100%.
    assert report["results"]["dcgan_d"]["test_accuracy"] == 1.0
    assert report["results"]["random_d"]["test_accuracy"] == 1.0  # the same stand-in extractor
    monkeypatch.setattr(reports, "discriminator_features", planted_features(tiny_config, separable=False))
    noise = reports.feature_svm_report(tiny_config, d, baselines=(), **options)
    assert noise["results"]["dcgan_d"]["test_accuracy"] < 0.7  # 3 classes: chance is about 1/3


def test_feature_svm_report_uses_the_papers_pooled_d_features(tiny_config):
    report = reports.feature_svm_report(tiny_config, build_discriminator(tiny_config), labels_per_class=10,
                                        validation_examples=60, test_examples=60, c_grid=(1.0,), baselines=())
    assert report["results"]["dcgan_d"]["feature_dims"] == pooled_feature_dims(tiny_config)


# ---------------------------------------------------------------------------------------------------------
# FID and KID.


def test_frechet_distance_matches_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # Diagonal covariances: |mu1-mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) = 5 + (4 + 1 + 0) = 10.
    assert fid_lib.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(10.0)
    # Full, non-commuting covariances: the trace term against scipy's general matrix square root.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    expected = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_lib.frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected, rel=1e-6)


def test_fid_of_samples_approaches_the_closed_form_and_real_vs_real_is_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 3))
    y = np.array([1.0, 0.0, -2.0]) + rng.standard_normal((40_000, 3)) * np.array([2.0, 1.0, 0.5])
    closed = 1 + 4 + (1 + 4 - 4) + 0 + (1 + 0.25 - 1)  # |mu|^2 + sum (1 + s^2 - 2s) = 5 + 1 + 0 + 0.25
    assert fid_lib.fid_from_features(x, y) == pytest.approx(closed, abs=0.05)
    assert fid_lib.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    assert fid_lib.fid_from_features(x[:20_000], x[20_000:]) < 0.01  # two samples of one distribution


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, same_std = fid_lib.kernel_inception_distance(x, y, num_subsets=20, subset_size=300)
    shifted, _ = fid_lib.kernel_inception_distance(x, y + 0.5, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: centred on 0 (may be slightly negative)
    assert shifted > 0.05 and shifted > 10 * abs(same)


def test_inception_without_weights_file_names_the_fixes(tmp_path):
    with pytest.raises(fid_lib.EvaluationError, match="does not exist.*inception_v3_weights"):
        fid_lib.load_inception(str(tmp_path / "missing.h5"))
    with pytest.raises(fid_lib.EvaluationError, match="train-classifier"):
        fid_lib.make_extractor("classifier")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A FID classifier trained for one epoch on 128 synthetic 16x16 RGB images: (path, train_classifier's result)."""
    folder = tmp_path_factory.mktemp("classifier")
    path = str(folder / "clf.keras")
    config = Config(dataset="synthetic", image_size=16, channels=3, verbose=0)
    return path, fid_lib.train_classifier(config, path, epochs=1, batch_size=32, train_limit=128, test_limit=64)


def test_classifier_extractor_trains_saves_and_checks_shapes(classifier):
    path, result = classifier
    folder = os.path.dirname(path)
    assert os.path.exists(path) and not [p for p in os.listdir(folder) if ".tmp-" in p]
    assert result["train_examples"] == 128 and 0.0 <= result["test_accuracy"] <= 1.0
    extractor = fid_lib.ClassifierExtractor(path)
    images = np.zeros((5, 16, 16, 3), np.uint8)
    assert extractor(images).shape == (5, 128)
    with pytest.raises(fid_lib.EvaluationError, match="image_size"):
        extractor(np.zeros((2, 32, 32, 3), np.float32))


def pooled_pixels(images):
    """A tiny, fixed feature extractor for tests: 4x4 average-pooled grayscale pixels (16 dims)."""
    images = np.asarray(images, np.float32).mean(axis=-1)
    n, s = images.shape[0], images.shape[1]
    return images.reshape(n, 4, s // 4, 4, s // 4).mean(axis=(2, 4)).reshape(n, 16)


def test_fid_report_of_a_generator_with_floor_and_untrained_baseline(tiny_config):
    gan = build_gan(tiny_config)
    report = reports.fid_report(tiny_config, gan.generator, pooled_pixels, num_samples=64, bn_samples=16,
                                kid_subsets=5)
    for key in ("generated", "real_vs_real", "untrained"):
        assert set(report[key]) == {"fid", "kid", "kid_std", "precision", "recall"}
        assert np.isfinite(report[key]["fid"]) and 0 <= report[key]["recall"] <= 1
    assert report["real_vs_real"]["fid"] < report["untrained"]["fid"]


def test_export_and_run_generate_the_same_images(tiny_config, tmp_path):
    # `fid --export_dir` and `fid --model_dir` must measure the same generator (both re-estimate BatchNorm).
    from dcgan_tf import export

    gan = build_gan(tiny_config.replace(batch_size=64))
    config = tiny_config.replace(batch_size=64)
    export.export_generator(gan, config, str(tmp_path / "exports"), bn_samples=128)
    served, served_config = fid_lib.load_exported_generator(str(tmp_path / "exports"))
    assert served_config.nz == config.nz and served_config.image_size == 16
    local = fid_lib.inference_generator(gan.generator, config, bn_samples=128)
    images = [fid_lib.generate_images(g, 8, config.nz, config.z_dist, seed=3) for g in (served, local)]
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    with pytest.raises(fid_lib.EvaluationError, match="python -m dcgan_tf.export"):
        fid_lib.load_exported_generator(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------
# The FID callback.


def read_scalars(log_dir, tag):
    """(step, value) of every `tag` scalar in the event files under log_dir."""
    found = []
    for name in sorted(os.listdir(log_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.tag == tag:
                    found.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(found)


def test_callback_logs_fid_to_tensorboard_during_fit_and_keeps_best(tiny_config, tmp_path):
    gan = build_gan(tiny_config)
    real = make_dataset(tiny_config.replace(seed=5))
    log_dir, best_dir = str(tmp_path / "fid"), str(tmp_path / "run" / "best")
    callback = FIDCallback(tiny_config, real, pooled_pixels, every_steps=2, num_samples=32, log_dir=log_dir,
                           best_dir=best_dir, bn_samples=16)
    gan.fit(make_dataset(tiny_config), steps_per_epoch=4, epochs=1, verbose=0, callbacks=[callback])
    logged = read_scalars(log_dir, "fid")
    assert [step for step, _ in logged] == [2, 4]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in callback.history], rtol=1e-5)
    for name in ("precision", "recall"):  # coverage next to FID, at the same steps
        values = read_scalars(log_dir, name)
        assert [step for step, _ in values] == [2, 4] and all(0 <= v <= 1 for _, v in values)
    assert read_scalars(log_dir, "recall")[-1][1] == pytest.approx(callback.coverage["recall"])
    best = read_best(best_dir)
    assert best["fid"] == pytest.approx(min(v for _, v in callback.history))
    _, restored = checkpointing.load_run(best_dir)  # best_dir is itself a loadable run
    assert int(restored.step.numpy()) == best["step"]


@pytest.mark.slow
def test_callback_works_under_a_two_replica_strategy(tiny_config, tmp_path):
    # train.py builds the GAN in a MirroredStrategy scope when there are several devices (conftest: 2 CPUs).
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    gan = train.build_in_scope(tiny_config, strategy)
    callback = FIDCallback(tiny_config, make_dataset(tiny_config.replace(seed=5)), pooled_pixels, 2, 32,
                           str(tmp_path / "fid"), str(tmp_path / "best"), bn_samples=16)
    gan.fit(make_dataset(tiny_config), steps_per_epoch=4, epochs=1, verbose=0, callbacks=[callback])
    assert [step for step, _ in callback.history] == [2, 4]
    assert read_best(str(tmp_path / "best"))["step"] in (2, 4)


def test_callback_keeps_the_best_not_the_last_checkpoint_across_resumes(tiny_config, tmp_path):
    gan = build_gan(tiny_config)
    log_dir, best_dir = str(tmp_path / "fid"), str(tmp_path / "best")

    def drive(callback, fids, first_step):
        """Run the callback's hooks as fit would, over len(fids) * 2 steps, with scripted FID values."""
        values = iter(fids)
        callback.compute_fid = lambda: next(values)
        callback.set_model(gan)
        gan.step.assign(first_step)
        callback.on_train_begin()
        for batch in range(2 * len(fids)):
            gan.step.assign(first_step + batch + 1)  # what the train step would do
            callback.on_train_batch_end(batch)
        callback.on_train_end()

    drive(FIDCallback(tiny_config, None, pooled_pixels, 2, 8, log_dir, best_dir), [5.0, 3.0, 4.0], first_step=0)
    assert read_scalars(log_dir, "fid") == [(2, 5.0), (4, 3.0), (6, 4.0)]
    assert read_best(best_dir)["step"] == 4 and read_best(best_dir)["fid"] == 3.0
    # A resumed run starts from the recorded best: a worse FID does not replace it, a better one does.
    resumed = FIDCallback(tiny_config, None, pooled_pixels, 2, 8, log_dir, best_dir)
    assert resumed.best["fid"] == 3.0
    drive(resumed, [3.5, 2.5], first_step=6)
    assert read_best(best_dir)["step"] == 10 and read_best(best_dir)["fid"] == 2.5
    _, restored = checkpointing.load_run(best_dir)
    assert int(restored.step.numpy()) == 10
    assert os.listdir(os.path.join(best_dir, "checkpoints")).count("checkpoint") == 1
    assert not [p for p in os.listdir(best_dir) if ".tmp-" in p] and BEST_FILE in os.listdir(best_dir)


def test_make_fid_callback_wires_a_run_and_fails_early_without_its_extractor(tiny_config, classifier):
    callback = make_fid_callback(tiny_config, every_steps=2, num_samples=16, extractor="classifier",
                                 classifier_path=classifier[0])
    assert callback.log_dir == os.path.join(tiny_config.model_dir, "train")
    assert callback.best_dir == os.path.join(tiny_config.model_dir, "best") and callback.every == 2
    with pytest.raises(fid_lib.EvaluationError, match="train-classifier"):
        make_fid_callback(tiny_config, 2, 16, extractor="classifier", classifier_path="/nonexistent/clf.keras")


def test_train_with_fid_every_logs_fid_and_keeps_the_best_run(tiny_config, classifier):
    from dcgan_tf import train

    config = tiny_config.replace(fid_every=2, fid_samples=16, fid_classifier_path=classifier[0])
    train.train(config)
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(config.model_dir, "train", "events.out.tfevents.*")):
        tags |= {v.tag for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert {"fid", "d_loss", "samples"} <= tags
    assert read_best(os.path.join(config.model_dir, "best"))["step"] in (2, 4)
    with pytest.raises(ConfigError, match="fid_classifier_path"):
        train.train(tiny_config.replace(fid_every=2))


# ---------------------------------------------------------------------------------------------------------
# The command line, end to end on a saved tiny run.


@pytest.mark.slow
def test_cli_fid_prints_json(tiny_config, classifier, tmp_path):
    # One process, run as users run it (TensorFlow's import dominates its time); `features` shares the same
    # main() and is covered in-process by test_feature_svm_report_on_synthetic_shapes.
    gan = build_gan(tiny_config)
    checkpointing.save_config(tiny_config)
    checkpointing.make_manager(gan, tiny_config.model_dir, 1).save()
    out = tmp_path / "fid.json"
    run = subprocess.run(
        [sys.executable, "-m", "dcgan_tf.evaluate", "fid", f"--model_dir={tiny_config.model_dir}",
         "--extractor=classifier", f"--classifier_path={classifier[0]}", "--num_samples=40", "--kid_subsets=3",
         "--bn_samples=16", f"--output={out}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    printed = json.loads(run.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["step"] == 0 and printed["dataset"] == "synthetic" and printed["num_samples"] == 40
    assert {"generated", "real_vs_real", "untrained"} <= set(printed)
    assert printed["real_vs_real"]["fid"] < printed["untrained"]["fid"]
    assert {"precision", "recall"} <= set(printed["generated"])
    assert printed["real_vs_real"]["recall"] > printed["untrained"]["recall"]


@pytest.mark.slow
def test_cli_fid_reports_the_ema_generator_and_the_best_step(tiny_config, classifier, tmp_path):
    from dcgan_tf import train

    config = tiny_config.replace(fid_every=2, fid_samples=16, fid_classifier_path=classifier[0], g_ema=True)
    train.train(config)
    best = read_best(os.path.join(config.model_dir, "best"))
    run = subprocess.run(
        [sys.executable, "-m", "dcgan_tf.evaluate", "fid", f"--model_dir={config.model_dir}",
         "--extractor=classifier", f"--classifier_path={classifier[0]}", "--num_samples=40", "--kid_subsets=3",
         "--bn_samples=16", "--baselines="],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    printed = json.loads(run.stdout)
    assert printed["step"] == 4 and printed["generator"] == "ema"
    assert printed["best_step"]["step"] == best["step"] and printed["best_step"]["generator"] == "ema"
    assert printed["best_step"]["in_training_fid"] == pytest.approx(best["fid"])
    assert np.isfinite(printed["best_step"]["fid"]) and np.isfinite(printed["generated"]["fid"])
    if best["step"] == 4:  # the same weights and z: the same FID
        assert printed["best_step"]["fid"] == pytest.approx(printed["generated"]["fid"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Improved precision and recall (Kynkaanniemi et al. 2019) on planted feature distributions.


def planted_classes(num: int, classes, seed: int, dims: int = 2, spread: float = 0.3) -> np.ndarray:
    """`num` feature vectors from well-separated Gaussian clusters, one per class in `classes`.

    Low-dimensional, where k=3 balls cover a fresh sample of the same distribution almost fully (in many
    dimensions they cover less: there a same-distribution recall is itself below 1)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, 5, (10, dims))  # the same 10 class centres every call
    labels = rng.choice(list(classes), num)
    return centres[labels] + rng.normal(0, spread, (num, dims))


def test_precision_recall_of_a_copy_is_one_and_mode_dropping_halves_recall():
    real = planted_classes(3000, range(10), seed=0)
    copy = fid_lib.precision_recall(real, real.copy())
    assert copy == {"precision": 1.0, "recall": 1.0}
    dropped = fid_lib.precision_recall(real, planted_classes(3000, range(5), seed=1))  # half the classes
    assert dropped["recall"] == pytest.approx(0.5, abs=0.05)
    assert dropped["precision"] > 0.95  # what it draws is realistic: only coverage is lost
    fresh = fid_lib.precision_recall(real, planted_classes(3000, range(10), seed=2))
    assert fresh["precision"] > 0.95 and fresh["recall"] > 0.95
    # Samples off the data (every cluster shifted far away): precision and recall drop to zero.
    off = fid_lib.precision_recall(real, planted_classes(3000, range(10), seed=3) + 50.0)
    assert off == {"precision": 0.0, "recall": 0.0}


def test_knn_radius_is_the_kth_neighbour_excluding_the_point_itself():
    points = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    np.testing.assert_array_equal(fid_lib.knn_radii(points, k=1, batch_size=2), [1.0, 1.0, 4.0, 16.0, 64.0])
    np.testing.assert_array_equal(fid_lib.knn_radii(points, k=3), [49.0, 36.0, 16.0, 49.0, 196.0])
    with pytest.raises(ValueError, match="needs more than 3 samples"):
        fid_lib.precision_recall(points[:3], points)


def test_fid_real_images_come_from_the_split_asked_for(tiny_config, classifier, monkeypatch):
    # `evaluate fid --split=test`: e.g. a model trained on a slice of the train split, scored against test images.
    from dcgan_tf import evaluate

    checkpointing.save_config(tiny_config)
    checkpointing.make_manager(build_gan(tiny_config), tiny_config.model_dir, 1).save()
    seen = {}
    monkeypatch.setattr(reports, "fid_report", lambda *args, **kwargs: seen.update(kwargs) or {})
    for split in ("test", None):
        options = evaluate.Options(model_dir=tiny_config.model_dir, extractor="classifier",
                                   classifier_path=classifier[0], best=False, bn_samples=0,
                                   **({"split": split} if split else {}))
        evaluate.run_fid(options)
        assert seen["split"] == (split or "train")
