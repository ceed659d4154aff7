"""The DCGAN train step: distribution equivalence, per-replica noise, losses and trackers."""

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import train
from dcgan_tf.config import Config
from dcgan_tf.distribute import new_mirrored_strategy
from dcgan_tf.gan import build_gan

REAL = np.random.RandomState(0).uniform(-1, 1, (8, 16, 16, 1)).astype("float32")


def train_weights(strategy, config, steps=2):
    """Train `steps` steps on REAL under `strategy`; return all weights and the last logs."""
    tf.keras.utils.set_random_seed(1)
    gan = train.build_in_scope(config, strategy)  # BatchNorm synchronised over 2 replicas, as training does
    history = gan.fit(tf.data.Dataset.from_tensors(REAL).repeat(), steps_per_epoch=steps, epochs=1, verbose=0,
                      shuffle=False)
    weights = [v.numpy() for v in gan.generator.weights + gan.discriminator.weights + gan.generator_ema.weights]
    return weights + [gan.step.numpy()], {k: v[-1] for k, v in history.history.items()}


def test_two_replicas_equal_one_replica_on_the_global_batch():
    # G, D, G's EMA and the step counter.
    config = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, sync_batchnorm=True,
                    train_steps=2)
    one, logs_one = train_weights(tf.distribute.get_strategy(), config)
    two, logs_two = train_weights(new_mirrored_strategy(["/cpu:0", "/cpu:1"]), config)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, two)) < 1e-5
    # The logged losses are true means, not 1/N of them (Keras's own losses divide by the replica count).
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert logs_one[name] == pytest.approx(logs_two[name], rel=1e-4), name


def test_training_changes_both_networks_and_logs_sane_values():
    config = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=1)
    tf.keras.utils.set_random_seed(1)
    gan = build_gan(config)
    before = [v.numpy() for v in gan.generator.trainable_weights + gan.discriminator.trainable_weights]
    logs = gan.fit(tf.data.Dataset.from_tensors(REAL).repeat(), steps_per_epoch=1, epochs=1, verbose=0).history
    after = [v.numpy() for v in gan.generator.trainable_weights + gan.discriminator.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert int(gan.step.numpy()) == 1 and int(gan.d_optimizer.iterations.numpy()) == 1
    assert 0 < logs["d_real"][0] < 1 and 0 < logs["d_fake"][0] < 1
    # At initialisation D outputs ~0.5 everywhere: d_loss ~ 2 log 2, g_loss ~ log 2.
    assert logs["d_loss"][0] == pytest.approx(2 * np.log(2), abs=0.3)
    assert logs["g_loss"][0] == pytest.approx(np.log(2), abs=0.3)


def test_replicas_draw_different_z_and_steps_draw_new_z():
    config = Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, batch_size=8, train_steps=1)
    strategy = new_mirrored_strategy(["/cpu:0", "/cpu:1"])
    gan = train.build_in_scope(config, strategy)
    per_replica = strategy.run(tf.function(lambda: gan._replica_z(tf.constant(4))))
    z0, z1 = (t.numpy() for t in strategy.experimental_local_results(per_replica))
    assert z0.shape == (4, 16) and not np.allclose(z0, z1)
    assert z0.min() >= -1 and z0.max() <= 1  # uniform [-1, 1] as in the paper
    # One replica with the global batch draws exactly the two halves, in order.
    single = build_gan(config)
    np.testing.assert_array_equal(single._replica_z(tf.constant(8)).numpy(), np.concatenate([z0, z1]))
    single.step.assign_add(1)
    assert not np.allclose(single._replica_z(tf.constant(8)).numpy(), np.concatenate([z0, z1]))


def test_normal_z_option():
    gan = build_gan(Config(image_size=16, channels=1, ngf=8, ndf=8, nz=16, z_dist="normal", train_steps=1))
    z = gan.sample_z(4096, seed=3).numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05 and z.min() < -2
    np.testing.assert_array_equal(z, gan.sample_z(4096, seed=3).numpy())
