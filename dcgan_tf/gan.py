"""DCGAN as a keras.Model: networks passed in, two optimizers in compile(), one train_step updating D then G."""

from __future__ import annotations

import keras
import tensorflow as tf

# Paper section 4: Adam with learning rate 0.0002 and beta1 0.5.
PAPER_LEARNING_RATE = 2e-4
PAPER_BETA1 = 0.5


def sample_latent(num: int, latent_dim: int, seed: tf.Tensor, z_dist: str = "uniform") -> tf.Tensor:
    """Draw z [num, latent_dim] deterministically from a [2] integer seed (stateless, so XLA/replica safe)."""
    shape = tf.stack([num, latent_dim])
    if z_dist == "uniform":  # paper: z ~ U[-1, 1]^100
        return tf.random.stateless_uniform(shape, seed=seed, minval=-1.0, maxval=1.0)
    if z_dist == "normal":
        return tf.random.stateless_normal(shape, seed=seed)
    raise ValueError(f"z_dist={z_dist!r} must be 'uniform' or 'normal'")


def _bce_per_example(logits: tf.Tensor, target: float) -> tf.Tensor:
    """Binary cross-entropy of each logit against a constant target, shape [B]."""
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), target), logits=logits)


class DCGAN(keras.Model):
    """Generator + discriminator trained adversarially; `call(z)` generates images."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        latent_dim: int = 100,
        z_dist: str = "uniform",
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.z_dist = z_dist
        self.seed = seed
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")
        # Both sub-networks are functional models built from keras.Input: nothing is left to build, and
        # fit() under a strategy fails on an "unbuilt" subclassed model (PITFALLS 1, keras#20164).
        self.built = True

    def compile(
        self,
        d_optimizer: keras.optimizers.Optimizer | None = None,
        g_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs,
    ) -> None:
        """Set both optimizers (default: the paper's Adam) and build their slots now."""
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer or keras.optimizers.Adam(PAPER_LEARNING_RATE, beta_1=PAPER_BETA1)
        self.g_optimizer = g_optimizer or keras.optimizers.Adam(PAPER_LEARNING_RATE, beta_1=PAPER_BETA1)
        # Lazily built optimizers fail on the first step under 2 replicas (PITFALLS 2), and a checkpoint can
        # only restore Adam's moments into built optimizers (PITFALLS 8).
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Trackers reset by Keras at each epoch."""
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker]

    @property
    def step(self) -> tf.Variable:
        """Number of completed train steps (G's optimizer counts one update per step)."""
        return self.g_optimizer.iterations

    def call(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Generate images in [-1, 1] from z."""
        return self.generator(z, training=training)

    def sample_z(self, num: int, seed: int) -> tf.Tensor:
        """z [num, latent_dim] from an integer seed, the same on every call (used for fixed-z grids)."""
        return sample_latent(num, self.latent_dim, tf.constant([seed, 0], tf.int64), self.z_dist)

    def _replica_z(self, local_batch: tf.Tensor) -> tf.Tensor:
        """This replica's slice of the global batch's z, drawn from (seed, step).

        Every replica draws the same global z and keeps its own slice: replicas get different z
        (PITFALLS 4), N replicas see exactly the z one replica would, and the RNG state is the step counter,
        so a restored checkpoint continues the same noise stream.
        """
        ctx = tf.distribute.get_replica_context()
        num_replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if ctx is not None else 0
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.step, tf.int64) + 1])
        z = sample_latent(local_batch * num_replicas, self.latent_dim, seed, self.z_dist)
        return z[replica_id * local_batch:(replica_id + 1) * local_batch]

    def train_step(self, data) -> dict[str, tf.Tensor]:
        """One D update (real vs fake) then one G update (non-saturating loss) on a batch of real images."""
        real = data[0] if isinstance(data, (tuple, list)) else data
        local_batch = tf.shape(real)[0]
        ctx = tf.distribute.get_replica_context()
        global_batch = local_batch * (ctx.num_replicas_in_sync if ctx is not None else 1)

        def average(per_example: tf.Tensor) -> tf.Tensor:
            # Mean over the GLOBAL batch: replicas' gradients are summed, so N replicas = 1 replica.
            return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

        z = self._replica_z(local_batch)
        with tf.GradientTape() as g_tape:
            fake = self.generator(z, training=True)  # one G forward, reused by both updates
            with g_tape.stop_recording(), tf.GradientTape() as d_tape:
                real_logits = self.discriminator(real, training=True)
                fake_logits = self.discriminator(tf.stop_gradient(fake), training=True)
                real_bce, fake_bce = _bce_per_example(real_logits, 1.0), _bce_per_example(fake_logits, 0.0)
                d_loss = average(real_bce) + average(fake_bce)
                scaled_d_loss = self.d_optimizer.scale_loss(d_loss)
            d_grads = d_tape.gradient(scaled_d_loss, self.discriminator.trainable_variables)
            with g_tape.stop_recording():
                self.d_optimizer.apply_gradients(zip(d_grads, self.discriminator.trainable_variables))
            # Non-saturating G loss (paper, after Goodfellow et al.): maximise log D(G(z)) with the updated D.
            g_bce = _bce_per_example(self.discriminator(fake, training=True), 1.0)
            g_loss = average(g_bce)
            scaled_g_loss = self.g_optimizer.scale_loss(g_loss)
        g_grads = g_tape.gradient(scaled_g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(g_grads, self.generator.trainable_variables))

        # Trackers see this replica's local means; Keras averages them across replicas when read.
        self.d_loss_tracker.update_state(tf.reduce_mean(real_bce) + tf.reduce_mean(fake_bce))
        self.g_loss_tracker.update_state(tf.reduce_mean(g_bce))
        self.d_real_tracker.update_state(tf.reduce_mean(tf.sigmoid(tf.cast(real_logits, tf.float32))))
        self.d_fake_tracker.update_state(tf.reduce_mean(tf.sigmoid(tf.cast(fake_logits, tf.float32))))
        return {m.name: m.result() for m in self.metrics}
