"""--init_from: a new run starts at step 0 from another run's G, D and G's EMA; mismatches fail before the data."""

import json
import os

import numpy as np
import pytest

from dcgan_tf import checkpointing, cli, finetune
from dcgan_tf.config import ConfigError
from dcgan_tf.gan import build_gan
from dcgan_tf.train import train


@pytest.fixture
def origin(tiny_config):
    """A trained tiny run (4 steps, checkpoints at 2 and 4) and its config."""
    config = tiny_config.replace(model_dir=tiny_config.model_dir + "_origin")
    train(config)
    return checkpointing.read_run_config(config.model_dir)


def weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


def assert_same(a, b) -> None:
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_initialize_takes_g_d_and_ema_with_fresh_optimizers(tiny_config, origin):
    _, trained = checkpointing.load_run(origin.model_dir)
    config = finetune.resolve_init_from(tiny_config.replace(init_from=origin.model_dir))
    assert config.initialized_from["step"] == 4 and config.initialized_from["optimizers"] is False
    gan = build_gan(config)
    finetune.initialize(gan, config)
    assert_same(gan.generator, trained.generator)
    assert_same(gan.discriminator, trained.discriminator)
    assert_same(gan.generator_ema, trained.generator_ema)
    assert not np.array_equal(weights(gan.generator_ema)[0], weights(gan.generator)[0])  # the EMA, not G again
    assert int(gan.step.numpy()) == 0
    assert int(gan.g_optimizer.iterations.numpy()) == 0 and int(gan.d_optimizer.iterations.numpy()) == 0


def test_init_optimizers_and_a_named_step(tiny_config, origin):
    _, at_two = checkpointing.load_run(origin.model_dir, checkpoint_step=2)
    config = finetune.resolve_init_from(tiny_config.replace(init_from=f"{origin.model_dir}:2", init_optimizers=True))
    assert config.initialized_from["step"] == 2 and config.initialized_from["checkpoint"].endswith("ckpt-2")
    gan = build_gan(config)
    finetune.initialize(gan, config)
    assert_same(gan.generator, at_two.generator)
    assert int(gan.g_optimizer.iterations.numpy()) == 2 and int(gan.step.numpy()) == 0
    for a, b in zip(gan.g_optimizer.variables, at_two.g_optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_new_run_starts_at_step_zero_records_its_origin_and_resumes(tiny_config, monkeypatch):
    # A gray origin: the new run's --channels=0 (the synthetic set's own would be 3) takes its 1 channel, and the
    # same command must resume with it too.
    origin = tiny_config.replace(channels=1, model_dir=tiny_config.model_dir + "_gray")
    train(origin)
    calls = []
    real_initialize = finetune.initialize
    monkeypatch.setattr(finetune, "initialize", lambda gan, config: (calls.append(1), real_initialize(gan, config)))
    config = tiny_config.replace(init_from=origin.model_dir, train_steps=2, channels=0)
    gan = train(config)
    assert int(gan.step.numpy()) == 2 and calls == [1]
    steps = [checkpointing.checkpoint_step(p) for p in
             checkpointing.recovered_paths(os.path.join(config.model_dir, checkpointing.CHECKPOINT_SUBDIR))[0]]
    assert steps == [2]  # the new run's own steps, from 0
    with open(os.path.join(config.model_dir, "config.json")) as f:
        saved = json.load(f)
    assert saved["init_from"] == origin.model_dir and saved["channels"] == 1
    assert saved["initialized_from"]["model_dir"] == os.path.abspath(origin.model_dir)
    assert saved["initialized_from"]["step"] == 4
    # The same command with more steps resumes the new run at step 2: no second initialisation.
    gan = train(config.replace(train_steps=4))
    assert int(gan.step.numpy()) == 4 and calls == [1]
    with open(os.path.join(config.model_dir, "config.json")) as f:
        assert json.load(f)["initialized_from"]["step"] == 4  # still records where it started


@pytest.mark.parametrize("change, message", [
    ({"ngf": 16}, r"ngf: .* has 8, this run asks for 16 \(pass --ngf=8\)"),
    ({"image_size": 32}, r"image_size: .* has 16, this run asks for 32 \(pass --image_size=16\)"),
    ({"channels": 1}, r"channels: .* has 3, this run asks for 1 \(pass --channels=3\)"),
    ({"nz": 10, "ndf": 4}, r"nz: .*; ndf: .* \(pass --ndf=8\)"),
])
def test_architecture_mismatch_is_named_before_any_data_is_opened(tiny_config, origin, change, message):
    # The dataset does not exist: an error about it would mean the data was opened before the check.
    config = tiny_config.replace(init_from=origin.model_dir, dataset="folder:/nonexistent/images", **change)
    with pytest.raises(ConfigError, match="the networks differ.*" + message):
        train(config)
    assert not os.path.exists(os.path.join(config.model_dir, "config.json"))


def test_bad_init_from_values(tiny_config, origin, tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint of step 3; it has steps \[2, 4\]"):
        finetune.resolve_init_from(tiny_config.replace(init_from=f"{origin.model_dir}:3"))
    with pytest.raises(checkpointing.CheckpointError, match="not a dcgan_tf training run"):
        finetune.resolve_init_from(tiny_config.replace(init_from=str(tmp_path)))
    with pytest.raises(ConfigError, match="this run's own --model_dir"):
        finetune.resolve_init_from(origin.replace(init_from=origin.model_dir, model_dir=origin.model_dir + "/"))
    with pytest.raises(ConfigError, match="--init_optimizers needs --init_from"):
        finetune.resolve_init_from(tiny_config.replace(init_optimizers=True))
    with pytest.raises(ConfigError, match="must be a checkpoint step"):
        finetune.parse_init_from("/no/such/run:latest")
    assert finetune.parse_init_from("runs/a:500") == ("runs/a", 500)
    assert finetune.parse_init_from("runs/a") == ("runs/a", 0)


def test_init_from_is_a_training_flag_and_the_record_is_not():
    assert {"init_from", "init_optimizers"} <= set(cli.CONFIG_FLAGS)
    assert "initialized_from" not in cli.CONFIG_FLAGS
