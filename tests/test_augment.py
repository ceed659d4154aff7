"""Augmentation of D's inputs (--augment=diffaugment|ada, dcgan_tf/augment.py) and --mirror: applied to real and
fake in both updates with G's gradient through it, stateless from (seed, step), exact on resume and across
replicas, ADA's p moving the right way and checkpointed, and never used by exports, grids, FID or explore."""

import logging as std_logging

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import augment, callbacks, checkpointing, custom_loop, export, input_pipeline, train
from dcgan_tf.config import ConfigError, validate
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.experiments import sources
from dcgan_tf.gan import AUGMENT_STREAMS, build_gan

ALL_OPS = augment.OPS


def images(n=8, size=16, channels=3, seed=0):
    return tf.random.stateless_uniform([n, size, size, channels], seed=[seed, 1], minval=-1.0, maxval=1.0)


def weights_of(gan):
    variables = gan.generator.weights + gan.discriminator.weights + gan.d_optimizer.variables
    variables += gan.g_optimizer.variables
    return [v.numpy() for v in variables]


def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


class SpyD:
    """Stands in for the discriminator in train_step: records every input, delegates to the real D."""

    def __init__(self, discriminator):
        self.discriminator = discriminator
        self.inputs = []

    def __call__(self, x, training=False):
        self.inputs.append(x)
        return self.discriminator(x, training=training)

    @property
    def trainable_variables(self):
        return self.discriminator.trainable_variables


def test_real_and_fake_are_augmented_in_both_updates_and_g_gradient_flows_through(tiny_config):
    gan = build_gan(tiny_config.replace(augment="diffaugment"))
    spy = SpyD(gan.discriminator)
    object.__setattr__(gan, "discriminator", spy)  # around Keras's attribute tracking: train_step reads it
    real = images()
    z = gan._replica_z(8)
    fake = gan.generator(z, training=True)  # train_step's fake (the same weights and z, before any update)
    step_seed = tf.constant([tiny_config.seed, 1], tf.int64)

    def expected(x, which):
        seed = tf.random.experimental.stateless_fold_in(step_seed, AUGMENT_STREAMS[which])
        return augment.augment_images(x, ALL_OPS, seed).numpy()

    with tf.GradientTape(persistent=True) as tape:
        gan.train_step(real)
    d_real, d_fake, g_fake = spy.inputs
    np.testing.assert_allclose(d_real.numpy(), expected(real, "real"), atol=1e-6)
    np.testing.assert_allclose(d_fake.numpy(), expected(fake, "fake"), atol=1e-5)
    np.testing.assert_allclose(g_fake.numpy(), expected(fake, "g"), atol=1e-5)
    assert np.abs(d_real.numpy() - real.numpy()).max() > 0.1  # really augmented
    assert np.abs(d_fake.numpy() - g_fake.numpy()).max() > 0.1  # each D call its own draw
    g_vars = gan.generator.trainable_variables
    through = tape.gradient(g_fake, g_vars, output_gradients=tf.ones_like(g_fake))
    assert all(g is not None for g in through) and max(float(tf.reduce_max(tf.abs(g))) for g in through) > 0
    assert all(g is None for g in tape.gradient(d_fake, g_vars, output_gradients=tf.ones_like(d_fake)))  # D's update: stop_gradient

    plain = build_gan(tiny_config)  # --augment=none: D sees the images as they are
    spy = SpyD(plain.discriminator)
    object.__setattr__(plain, "discriminator", spy)
    plain.train_step(real)
    np.testing.assert_array_equal(spy.inputs[0].numpy(), real.numpy())


@pytest.mark.parametrize("policy", [("translation",), ("cutout",), ("translation", "cutout")])
def test_geometric_ops_are_linear_maps_whose_gradient_is_their_transpose(policy):
    x, w = images(seed=1), images(seed=2)
    seed = tf.constant([3, 4], tf.int64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = augment.augment_images(x, policy, seed)
        loss = tf.reduce_sum(y * w)
    grad = tape.gradient(loss, x)
    # f(x) = A x: <A^T w, x> = <w, A x>, and the augmented images keep only pixels of x (or zeros).
    np.testing.assert_allclose(float(tf.reduce_sum(grad * x)), float(loss), rtol=1e-4)
    assert 0 < float(tf.reduce_sum(tf.abs(grad))) < float(tf.reduce_sum(tf.abs(w)))


def test_same_seed_same_augmentation_other_step_differs_and_replica_slices_agree():
    x = images()
    seed = tf.constant([0, 1], tf.int64)
    first = augment.augment_images(x, ALL_OPS, seed).numpy()
    np.testing.assert_array_equal(first, augment.augment_images(x, ALL_OPS, seed).numpy())
    assert np.abs(first - augment.augment_images(x, ALL_OPS, tf.constant([0, 2], tf.int64)).numpy()).max() > 0.1
    # Replica 1 of 2 holds rows 4..7 of the global batch: it augments them exactly as one replica would.
    half = augment.augment_images(x[4:], ALL_OPS, seed, offset=4, total=8).numpy()
    np.testing.assert_allclose(half, first[4:], atol=1e-6)
    # ADA: p = 0 leaves every image alone, p = 1 is DiffAugment.
    np.testing.assert_allclose(augment.augment_images(x, ALL_OPS, seed, probability=0.0).numpy(), x.numpy(),
                               atol=1e-6)
    at_one = augment.augment_images(x, ALL_OPS, seed, probability=1.0).numpy()
    np.testing.assert_allclose(at_one, first, atol=1e-6)


def test_every_precision_keeps_the_dtype():
    for dtype in (tf.float32, tf.bfloat16, tf.float16):
        y = augment.augment_images(tf.cast(images(), dtype), ALL_OPS, tf.constant([0, 1], tf.int64), 0.5)
        assert y.dtype == dtype and bool(tf.reduce_all(tf.math.is_finite(tf.cast(y, tf.float32))))


@pytest.mark.parametrize("speed", [dict(mixed_precision="bfloat16"), dict(mixed_precision="float16"),
                                   dict(jit_compile="true")])
def test_ada_trains_in_every_precision_and_under_xla(tiny_config, speed):
    gan = train.train(tiny_config.replace(augment="ada", ada_kimg=1, ada_interval=2, train_steps=2, **speed))
    # One adjustment at step 2, by +-8 x 2 / 1000 from 0 (clipped at 0).
    assert float(gan.augment_p.numpy()) in (0.0, pytest.approx(0.016))
    assert all(np.isfinite(w).all() for w in weights_of(gan))


AUGMENTED = dict(augment="ada", ada_kimg=1, ada_interval=3, mirror=True)  # p moves 8 x 3 / 1000 per adjustment


def test_resume_equals_an_uninterrupted_run_with_augmentation(tiny_config, tmp_path):
    config = tiny_config.replace(**AUGMENTED)
    interrupted = config.replace(model_dir=str(tmp_path / "interrupted"))
    train.train(interrupted.replace(train_steps=2))  # stops between two adjustments of p
    resumed = train.train(interrupted)
    straight = train.train(config.replace(model_dir=str(tmp_path / "straight")))
    assert largest_difference(weights_of(resumed), weights_of(straight)) < 1e-5
    assert float(straight.augment_p.numpy()) > 0
    assert float(resumed.augment_p.numpy()) == float(straight.augment_p.numpy())
    np.testing.assert_array_equal(resumed.ada_signs.numpy(), straight.ada_signs.numpy())
    _, loaded = checkpointing.load_run(str(tmp_path / "straight"))
    assert float(loaded.augment_p.numpy()) == float(straight.augment_p.numpy())  # p is in the checkpoint


@pytest.mark.parametrize("mode", ["diffaugment", "ada"])
def test_two_replicas_match_one_with_augmentation(tiny_config, tmp_path, mode):
    config = tiny_config.replace(**{**AUGMENTED, "augment": mode}, train_steps=3)
    one = train.train(config.replace(model_dir=str(tmp_path / "one"), strategy="default"))
    two = train.train(config.replace(model_dir=str(tmp_path / "two"), strategy="mirrored"))
    assert largest_difference(weights_of(one), weights_of(two)) < 1e-4
    if mode == "ada":
        assert float(one.augment_p.numpy()) == pytest.approx(float(two.augment_p.numpy())) and one.augment_p > 0


def test_custom_loop_step_equals_fit_with_ada(tiny_config, tmp_path):
    # The multi-worker loop runs gan.train_step under strategy.run (custom_loop.make_step_function): the same
    # update as fit() under two replicas, ADA's all-reduced signs included.
    config = tiny_config.replace(**AUGMENTED, train_steps=3, strategy="mirrored")
    by_fit = train.train(config.replace(model_dir=str(tmp_path / "fit")))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    gan = train.build_in_scope(config, strategy)
    source = input_pipeline.make_source(config)
    iterator = iter(custom_loop.distributed_dataset(config, strategy, 0, source))
    step = custom_loop.make_step_function(gan, strategy)
    for _ in range(3):
        logs = step(iterator)
    assert set(logs) >= {"augment_p", "r_t"}
    assert largest_difference(weights_of(by_fit), weights_of(gan)) < 1e-4
    assert float(gan.augment_p.numpy()) == pytest.approx(float(by_fit.augment_p.numpy()))


def planted(tiny_config, logit_bias, p=0.0):
    """An ADA model whose D is made to say "real" (bias > 0) or "fake" (bias < 0) to everything, p preset."""
    gan = build_gan(tiny_config.replace(augment="ada", ada_kimg=1, ada_interval=2))
    gan.discriminator.get_layer("logit").bias.assign([logit_bias])
    gan.augment_p.assign(p)
    return gan


def test_ada_p_rises_on_an_overfitting_d_and_falls_when_r_t_is_below_target(tiny_config):
    rising = planted(tiny_config, 50.0)
    for _ in range(4):
        logs = rising.train_step(images())
    # r_t = 1 > 0.6: two adjustments of + 8 x 2 / 1000.
    assert float(rising.augment_p.numpy()) == pytest.approx(0.032)
    assert float(logs["r_t"]) == 1.0
    falling = planted(tiny_config, -50.0, p=0.5)
    for _ in range(4):
        falling.train_step(images())
    assert float(falling.augment_p.numpy()) == pytest.approx(0.5 - 0.032)
    clipped = planted(tiny_config, -50.0, p=0.01)
    for _ in range(2):
        clipped.train_step(images())
    assert float(clipped.augment_p.numpy()) == 0.0


def test_exports_grids_fid_and_explore_never_augment(tiny_config, tmp_path, monkeypatch):
    config = tiny_config.replace(augment="diffaugment", train_steps=2)
    gan = train.train(config)

    def refuse(*args, **kwargs):
        raise AssertionError("augmentation used outside train_step")

    monkeypatch.setattr(augment, "augment_images", refuse)
    with pytest.raises(AssertionError, match="outside train_step"):  # the spy is live: training would trip it
        gan.train_step(images())
    z = gan.sample_z(4, seed=1)
    path = export.export_generator(gan, config, str(tmp_path / "export"), bn_samples=16)
    served = sources.from_export_dir(path, config.z_dist, 4).generate(z.numpy())
    explored = sources.from_model_dir(config.model_dir, 4, bn_samples=16).generate(z.numpy())
    np.testing.assert_allclose(served, explored, atol=1e-5)  # the same inference G, no augmentation anywhere
    fid_g = fid_lib.inference_generator(gan.output_generator, config, 16)
    assert fid_lib.generate_images(fid_g, 4, config.nz, config.z_dist, 0).shape == (4, 16, 16, 3)
    grid = callbacks.SampleGrid(tf.summary.create_file_writer(str(tmp_path / "tb")), 1, z, str(tmp_path / "s"))
    grid.set_model(gan)
    grid.on_step(2, {})
    _ = gan.discriminator(images(), training=False)  # `evaluate features` reads D directly


def test_mirror_flips_about_half_the_images_and_resumes_exactly(tiny_config):
    config = tiny_config.replace(batch_size=16)
    plain = next(iter(input_pipeline.make_dataset(config))).numpy()
    mirrored = next(iter(input_pipeline.make_dataset(config.replace(mirror=True)))).numpy()
    flipped = [not np.array_equal(a, b) for a, b in zip(plain, mirrored)]
    for a, b, was_flipped in zip(plain, mirrored, flipped):
        np.testing.assert_array_equal(b, a[:, ::-1] if was_flipped else a)
    assert 3 <= sum(flipped) <= 13
    stream = input_pipeline.make_dataset(config.replace(mirror=True, batch_size=8))
    second = list(stream.take(3))[2].numpy()
    resumed = next(iter(input_pipeline.make_dataset(config.replace(mirror=True, batch_size=8), start_step=2)))
    np.testing.assert_array_equal(resumed.numpy(), second)


def test_small_dataset_without_augmentation_says_so_and_names_the_flag(tiny_config, caplog):
    small = input_pipeline.Source(tf.data.Dataset.range(1), lambda x: x, 2000, 3)
    with caplog.at_level(std_logging.WARNING):
        train.warn_if_small(tiny_config.replace(dataset="folder:/data"), small)
    assert "only 2000 images" in caplog.text and "--augment=diffaugment" in caplog.text
    caplog.clear()
    with caplog.at_level(std_logging.WARNING):
        train.warn_if_small(tiny_config.replace(augment="ada"), small)
        train.warn_if_small(tiny_config, input_pipeline.Source(small.records, small.decode, 60_000, 3))
        train.warn_if_small(tiny_config, input_pipeline.Source(small.records, small.decode, None, 3))
    assert "only" not in caplog.text


@pytest.mark.parametrize("changes, message", [
    (dict(augment="diffaug"), "augment='diffaug' must be one of none, diffaugment, ada"),
    (dict(augment_policy="color,flip"), "unknown ops ['flip']"),
    (dict(augment_policy=""), "no ops"),
    (dict(ada_target=1.5), "ada_target=1.5 must be in (0, 1)"),
    (dict(ada_kimg=0), "must be positive"),
])
def test_bad_augmentation_settings_are_clear_errors(tiny_config, changes, message):
    with pytest.raises(ConfigError) as error:
        validate(tiny_config.replace(**changes))
    assert message in str(error.value)
