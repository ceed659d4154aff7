"""Test set-up shared by every test file: 2 logical CPU devices (so 2-replica tests run without a GPU)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from dcgan_tf.config import Config  # noqa: E402

# Must happen before TensorFlow initialises its devices, i.e. before any test runs an op.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(autouse=True, scope="session")
def fresh_home(tmp_path_factory):
    """Every test, and every process a test starts, sees an empty home of its own: no cache or settings of the
    machine's user (e.g. --conv_kernels=auto's timing cache under ~/.cache) changes what a test computes, and no
    test writes into the user's home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    patch.delenv("XDG_CACHE_HOME", raising=False)
    yield
    patch.undo()


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    """A config small enough to train a few steps in seconds."""
    return Config(
        dataset="synthetic", image_size=16, channels=3, nz=16, ngf=8, ndf=8, batch_size=8, train_steps=4,
        log_every=2, sample_every=2, checkpoint_every=2, num_samples=4, model_dir=str(tmp_path / "run"),
        verbose=0,
        # float32 and no XLA whatever the machine: tests compare runs (1 vs 2 replicas, resumed vs straight,
        # fit vs the custom loop) to 1e-4, which bfloat16 rounding does not meet; `auto` has its own tests.
        mixed_precision="none", jit_compile="false",
        # The machine-independent conv forms: no timing, the same kernels on every machine (test_conv_forms.py
        # tests the timed choice).
        conv_kernels="size",
    )
