"""DCGAN as a keras.Model: networks passed in, two optimizers in compile(), one train_step updating D then G;
`build_gan` makes one from a Config (the paper's networks and Adam).

The model owns its step counter (incremented once per train_step, whatever the optimizers do: under float16 loss
scaling an optimizer skips the steps whose gradients overflowed) and, optionally, an exponential moving average
of G's weights (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training").
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from dcgan_tf import augment as augment_lib
from dcgan_tf import kernels, models
from dcgan_tf.config import Config

# Paper section 4: Adam with learning rate 0.0002 and beta1 0.5.
PAPER_LEARNING_RATE = 2e-4
PAPER_BETA1 = 0.5
# EMA warm-up (as tf.train.ExponentialMovingAverage's num_updates): the decay at update t is
# min(decay, (1 + t) / (EMA_WARMUP + t)), so the average forgets the random initialisation within tens of steps.
EMA_WARMUP = 10.0
# Second words folded into the step's seed for the augmentation of each D input (z uses the step's seed itself).
AUGMENT_STREAMS = {"real": 0xA06, "fake": 0xA07, "g": 0xA08}


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
        generator_ema: keras.Model | None = None,
        ema_decay: float = 0.99,
        use_ema: bool | None = None,
        label_smoothing: float = 0.0,
        r1_gamma: float = 0.0,
        augment: augment_lib.Settings | None = None,
        **kwargs,
    ):
        """`generator_ema`: a second generator of G's architecture that holds the EMA of G's weights (None: no
        EMA); `use_ema`: whether outputs (`output_generator`: exports, grids, FID) come from it (default: if any).
        `label_smoothing`: D's target for real images is 1 - it (one-sided); `r1_gamma`: weight of the R1 penalty
        on real images (`real_logits_and_r1`). Both 0 in the paper. `augment`: the augmentation of D's inputs in
        train_step (None or mode "none": none, the paper)."""
        super().__init__(**kwargs)
        if not 0.0 <= label_smoothing < 1.0 or r1_gamma < 0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1) and r1_gamma={r1_gamma} >= 0")
        self.label_smoothing = label_smoothing
        self.r1_gamma = r1_gamma
        use_ema = generator_ema is not None if use_ema is None else use_ema
        if use_ema and generator_ema is None:
            raise ValueError("use_ema=True needs a generator_ema (pass one, or use_ema=False for the raw G)")
        if generator_ema is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in (0, 1) (e.g. 0.99)")
        self.generator = generator
        self.discriminator = discriminator
        self.generator_ema = generator_ema
        self.ema_decay = ema_decay
        self.use_ema = use_ema
        self.latent_dim = latent_dim
        self.z_dist = z_dist
        self.seed = seed
        # Completed train steps, and the RNG state of z. Only the first replica's increment is kept, as for
        # Keras's own optimizer.iterations, so every replica (and worker) holds the same count.
        self.step_counter = keras.Variable(0, dtype="int64", trainable=False, aggregation="only_first_replica",
                                           name="step")
        if generator_ema is not None:
            generator_ema.trainable = False  # only update_ema writes it; not in the model's trainable variables
            copy_weights(generator, generator_ema)  # the average starts at G's initial weights
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")
        self._init_augment(augment)
        # Both sub-networks are functional models built from keras.Input: nothing is left to build, and
        # fit() under a strategy fails on an "unbuilt" subclassed model ("Unable to automatically build the
        # model", keras#20164).
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
        # Built now: two lazily built optimizers fail on the first step under 2 replicas ("You must feed a value
        # for placeholder tensor"), and a checkpoint restores Adam's moments only into built optimizers (Keras
        # otherwise skips them: "Skipping variable loading for optimizer").
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """Trackers reset by Keras at each epoch."""
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker
                ] + self.augment_trackers

    @property
    def step(self) -> tf.Variable:
        """Number of completed train steps (counted by the model: an optimizer skips float16 overflow steps)."""
        return self.step_counter

    @property
    def output_generator(self) -> keras.Model:
        """The generator users get (exports, sample grids, FID, explore): G's EMA, or the raw G if use_ema is off."""
        return self.generator_ema if self.use_ema else self.generator

    @property
    def output_generator_name(self) -> str:
        """"ema" or "raw": which generator `output_generator` is, for logs, reports and file names."""
        return "ema" if self.use_ema else "raw"

    def ema_decay_at(self, updates: tf.Tensor) -> tf.Tensor:
        """The EMA decay used by update number `updates` (1, 2, ...): warmed up, then ema_decay."""
        t = tf.cast(updates, tf.float32)
        return tf.minimum(tf.constant(self.ema_decay, tf.float32), (1.0 + t) / (EMA_WARMUP + t))

    def update_ema(self) -> None:
        """ema <- ema - (1 - decay) (ema - G) for every float variable of G (weights and BatchNorm statistics).

        Runs in replica context inside train_step. Like Keras's optimizers, it moves to cross-replica context
        (merge_call) and updates each device's copy from that device's copy of G, so it works for mirrored
        variables of any aggregation, on one device, under MirroredStrategy and the multi-worker loop.
        """
        # .value: the tf.Variable (a DistributedVariable in a strategy scope) behind each Keras variable.
        pairs = [(e.value, g.value) for e, g in zip(self.generator_ema.weights, self.generator.weights)
                 if tf.as_dtype(e.dtype).is_floating]
        decay = self.ema_decay_at(self.step_counter.value + 1)

        def update_all(strategy: tf.distribute.Strategy, decay: tf.Tensor) -> None:
            for ema, source in pairs:
                strategy.extended.update(
                    ema, lambda e, g, d: e.assign_sub((1.0 - d) * (e - tf.cast(g, e.dtype))),
                    args=(source, decay), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(update_all, tf.distribute.get_strategy(), decay)

    def real_logits_and_r1(self, real: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """D's logits of real images, and each image's R1 penalty (r1_gamma / 2) |grad_x D(x)|^2 (None when off).

        R1 (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?"): the gradient of D's
        logit with respect to the real image, penalised on real data only; its gradient with respect to D's
        weights is a second derivative, so the inner tape runs under the caller's D tape.
        """
        if self.r1_gamma <= 0:
            return self.discriminator(self._augment(real, "real"), training=True), None
        real = tf.cast(real, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(real)
            # With augmentation D sees the augmented image and the gradient is taken w.r.t. the un-augmented one,
            # as StyleGAN2-ADA does (its R1 term runs D through the augment pipe).
            logits = self.discriminator(self._augment(real, "real"), training=True)
            total = tf.reduce_sum(tf.cast(logits, tf.float32))
        grads = tape.gradient(total, real)
        penalty = 0.5 * self.r1_gamma * tf.reduce_sum(tf.square(grads), axis=list(range(1, len(real.shape))))
        return logits, penalty

    def call(self, z: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Generate images in [-1, 1] from z."""
        return self.generator(z, training=training)

    def sample_z(self, num: int, seed: int) -> tf.Tensor:
        """z [num, latent_dim] from an integer seed, the same on every call (used for fixed-z grids)."""
        return sample_latent(num, self.latent_dim, tf.constant([seed, 0], tf.int64), self.z_dist)

    def _replica_rows(self, local_batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(first row, global batch size): where this replica's local batch sits in the global batch."""
        ctx = tf.distribute.get_replica_context()
        num_replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32) if ctx is not None else 0
        return replica_id * local_batch, local_batch * num_replicas

    def _step_seed(self) -> tf.Tensor:
        """The [2] stateless seed of this step's randomness, (seed, step + 1)."""
        return tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.step_counter.value, tf.int64) + 1])

    def _replica_z(self, local_batch: tf.Tensor) -> tf.Tensor:
        """This replica's slice of the global batch's z, drawn from (seed, step).

        Every replica draws the same global z and keeps its own slice: replicas get different z (keras.random
        with one SeedGenerator drew the same z on every replica), N replicas see exactly the z one replica
        would, and the RNG state is the step counter, so a restored checkpoint continues the same noise stream.
        """
        first, total = self._replica_rows(local_batch)
        z = sample_latent(total, self.latent_dim, self._step_seed(), self.z_dist)
        return z[first:first + local_batch]

    # --- Augmentation of D's inputs (dcgan_tf/augment.py); no-ops with augment "none" ------------------------

    def _init_augment(self, settings: augment_lib.Settings | None) -> None:
        """Keep the settings; for ADA, p and its sign accumulator (checkpointed) and the trackers of p and r_t."""
        self.augment = settings if settings is not None and settings.mode != "none" else None
        self.augment_trackers: list[keras.metrics.Metric] = []
        self.augment_p = self.ada_signs = None
        if self.augment is not None and self.augment.mode == "ada":
            # The same on every replica (each computes the same value from all-reduced signs), as the step.
            self.augment_p = keras.Variable(0.0, dtype="float32", trainable=False,
                                            aggregation="only_first_replica", name="augment_p")
            # [sum of sign(D(real)), images] since the last adjustment of p.
            self.ada_signs = keras.Variable([0.0, 0.0], dtype="float32", trainable=False,
                                            aggregation="only_first_replica", name="ada_signs")
            self.augment_trackers = [keras.metrics.Mean(name="augment_p"), keras.metrics.Mean(name="r_t")]

    def _augment(self, images: tf.Tensor, which: str) -> tf.Tensor:
        """`images` as D sees them in training: augmented per the settings, stateless from (seed, step, which)."""
        if self.augment is None:
            return images
        first, total = self._replica_rows(tf.shape(images)[0])
        seed = tf.random.experimental.stateless_fold_in(self._step_seed(), AUGMENT_STREAMS[which])
        p = self.augment_p.value if self.augment_p is not None else None
        return augment_lib.augment_images(images, self.augment.policy, seed, p, first, total)

    def _adapt_augment(self, real_logits: tf.Tensor) -> None:
        """ADA: add this step's signs of D(augmented real) to the sum; every ada_interval steps, adjust p."""
        if self.augment_p is None:
            return
        signs = tf.sign(tf.reshape(tf.cast(real_logits, tf.float32), [-1]))
        local = tf.stack([tf.reduce_sum(signs), tf.cast(tf.size(signs), tf.float32)])
        ctx = tf.distribute.get_replica_context()
        total = (ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
                 if ctx is not None and ctx.num_replicas_in_sync > 1 else local)
        summed = self.ada_signs.value + total
        settings = self.augment
        now = tf.equal((self.step_counter.value + 1) % settings.ada_interval, 0)
        p = self.augment_p.value
        new_p = tf.where(now, augment_lib.ada_adjust(p, summed[0], summed[1], settings.ada_target,
                                                     settings.ada_kimg), p)
        self.augment_p.assign(new_p)
        self.ada_signs.assign(tf.where(now, tf.zeros_like(summed), summed))
        self.augment_trackers[0].update_state(new_p)
        self.augment_trackers[1].update_state(local[0] / local[1])  # r_t of this replica's batch

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
                real_logits, r1_penalty = self.real_logits_and_r1(real)
                fake_logits = self.discriminator(self._augment(tf.stop_gradient(fake), "fake"), training=True)
                real_bce = _bce_per_example(real_logits, 1.0 - self.label_smoothing)  # one-sided smoothing
                fake_bce = _bce_per_example(fake_logits, 0.0)
                d_loss = average(real_bce) + average(fake_bce)
                if r1_penalty is not None:
                    d_loss += average(r1_penalty)
                scaled_d_loss = self.d_optimizer.scale_loss(d_loss)
            d_grads = d_tape.gradient(scaled_d_loss, self.discriminator.trainable_variables)
            with g_tape.stop_recording():
                self.d_optimizer.apply_gradients(zip(d_grads, self.discriminator.trainable_variables))
            # Non-saturating G loss (paper, after Goodfellow et al.): maximise log D(G(z)) with the updated D.
            g_bce = _bce_per_example(self.discriminator(self._augment(fake, "g"), training=True), 1.0)
            g_loss = average(g_bce)
            scaled_g_loss = self.g_optimizer.scale_loss(g_loss)
        g_grads = g_tape.gradient(scaled_g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(g_grads, self.generator.trainable_variables))
        if self.generator_ema is not None:
            self.update_ema()
        self._adapt_augment(real_logits)  # before the count: it reads this step's number
        # Counted here, not by an optimizer: a loss-scale-skipped step is still a step (its data and z were used).
        self.step_counter.assign_add(1)

        # Trackers see this replica's local means; Keras averages them across replicas when read.
        self.d_loss_tracker.update_state(tf.reduce_mean(real_bce) + tf.reduce_mean(fake_bce))
        self.g_loss_tracker.update_state(tf.reduce_mean(g_bce))
        self.d_real_tracker.update_state(tf.reduce_mean(tf.sigmoid(tf.cast(real_logits, tf.float32))))
        self.d_fake_tracker.update_state(tf.reduce_mean(tf.sigmoid(tf.cast(fake_logits, tf.float32))))
        return {m.name: m.result() for m in self.metrics}


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Set target's variables to source's (same architecture), e.g. to start G's EMA at G."""
    if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in target.weights]:
        raise ValueError(f"{target.name} and {source.name} have different architectures")
    for t, s in zip(target.weights, source.weights):
        t.assign(s)


def build_gan(config: Config, *, precision: str = "none", sync_batchnorm: bool = False,
              fast_kernels: bool = True, conv_forms: Mapping[str, str] | None = None) -> DCGAN:
    """The DCGAN for `config`, compiled with the paper's Adam (config's lr, beta1, beta2; D: d_learning_rate if set).

    `precision`, `sync_batchnorm`, `fast_kernels` and `conv_forms` say how the networks compute (see models.py); the
    caller resolves them (train.build_in_scope: from the resolved config and the strategy). The optimizers follow the
    run's own precision, `config.compute_precision`: under float16 they are wrapped for loss scaling, which the
    checkpoint holds, so a float32 rebuild of a float16 run (checkpointing.load_run) still restores every value.
    """
    keras.utils.set_random_seed(config.seed)  # the same seed gives the same initial weights
    options = dict(precision=precision, sync_batchnorm=sync_batchnorm, fast_kernels=fast_kernels,
                   conv_forms=conv_forms)
    with kernels.precision_policy(precision):
        generator = models.build_generator(config, **options)
        discriminator = models.build_discriminator(config, **options)
        # Built after G and D, so that G and D start from the same weights with or without it (it copies G's).
        generator_ema = (models.build_generator(config, name="generator_ema", **options)
                         if config.g_ema_decay > 0 else None)
        gan = DCGAN(generator, discriminator, config.nz, config.z_dist, config.seed, generator_ema=generator_ema,
                    ema_decay=config.g_ema_decay, use_ema=config.g_ema,
                    label_smoothing=config.label_smoothing, r1_gamma=config.r1_gamma,
                    augment=augment_settings(config))
        gan.compile(
            d_optimizer=_adam(config, fast_kernels, config.d_learning_rate or config.learning_rate),
            g_optimizer=_adam(config, fast_kernels, config.learning_rate),
            jit_compile=config.use_xla,
        )
    return gan


def augment_settings(config: Config) -> augment_lib.Settings:
    """The augmentation of D's inputs that `config` asks for (--augment, --augment_policy, --ada_*)."""
    return augment_lib.Settings(config.augment, augment_lib.parse_policy(config.augment_policy), config.ada_target,
                                float(config.ada_kimg), config.ada_interval)


def _adam(config: Config, fast_kernels: bool, learning_rate: float) -> keras.optimizers.Optimizer:
    """Adam (the fused update kernel with fast kernels) with the config's betas, loss-scaled under float16."""
    adam = kernels.FusedAdam if fast_kernels else keras.optimizers.Adam
    optimizer = adam(learning_rate, beta_1=config.beta1, beta_2=config.beta2)
    if config.compute_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
