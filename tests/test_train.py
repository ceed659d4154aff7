"""Training runs end to end: outputs, TensorBoard, checkpoints, exact resume, CLI and its errors."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import checkpointing, train
from dcgan_tf.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def event_tags(log_dir):
    """{tag: [steps]} from the TensorBoard event files under log_dir."""
    tags = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def all_weights(model_dir):
    _, gan = checkpointing.load_run(model_dir)
    variables = gan.generator.weights + gan.discriminator.weights
    variables += gan.d_optimizer.variables + gan.g_optimizer.variables
    return [v.numpy() for v in variables]


def test_run_writes_events_samples_checkpoints_and_config(tiny_config):
    gan = train.train(tiny_config)
    run = tiny_config.model_dir
    assert int(gan.step.numpy()) == 4
    tags = event_tags(os.path.join(run, "train"))
    for tag in ("d_loss", "g_loss", "d_real", "d_fake", "images_per_sec", "samples"):
        assert tag in tags, tag
    assert tags["d_loss"] == [2, 4] and tags["samples"] == [2, 4]
    # The raw G's grid always, the EMA's too when it is the output generator (the default, issue 23).
    assert sorted(os.listdir(os.path.join(run, "samples"))) == ["step_00000002.png", "step_00000002_ema.png",
                                                                 "step_00000004.png", "step_00000004_ema.png"]
    grid = tf.io.decode_png(tf.io.read_file(os.path.join(run, "samples", "step_00000004.png")))
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 4 samples of 16x16 in a 2x2 grid, 2-pixel padding
    ckpt = tf.train.get_checkpoint_state(os.path.join(run, "checkpoints"))
    assert ckpt.model_checkpoint_path.endswith("ckpt-4")
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["ngf"] == 8 and saved["channels"] == 3 and saved["train_steps"] == 4


def test_resume_equals_an_uninterrupted_run(tiny_config, tmp_path):
    interrupted = tiny_config.replace(model_dir=str(tmp_path / "interrupted"))
    train.train(interrupted.replace(train_steps=2))
    resumed = train.train(interrupted)  # the same command again, now to step 4
    assert int(resumed.step.numpy()) == 4
    straight = tiny_config.replace(model_dir=str(tmp_path / "straight"))
    train.train(straight)
    for a, b in zip(all_weights(interrupted.model_dir), all_weights(straight.model_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The sample grid continues at the same fixed z: step 4's grid is identical in both runs.
    grids = [tf.io.read_file(os.path.join(d, "samples", "step_00000004.png")).numpy()
             for d in (interrupted.model_dir, straight.model_dir)]
    assert grids[0] == grids[1]


def test_resume_with_another_network_is_a_clear_error(tiny_config):
    train.train(tiny_config.replace(train_steps=1))
    with pytest.raises(ConfigError, match=r"ngf: checkpoint has 8, this run asks for 16.*--model_dir"):
        train.train(tiny_config.replace(ngf=16))


def test_epochs_on_a_finite_dataset(tmp_path, tiny_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        image = np.full((20, 20, 3), i * 10, np.uint8)
        tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image))
    config = tiny_config.replace(dataset=f"folder:{folder}", train_steps=0, epochs=2, checkpoint_every=100)
    gan = train.train(config)
    assert int(gan.step.numpy()) == 2 * (20 // 8)


def test_bad_settings_fail_before_any_work(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="power of two"):
        train.train(tiny_config.replace(image_size=48))
    with pytest.raises(ConfigError, match="unknown dataset 'celebA'"):
        train.train(tiny_config.replace(dataset="celebA"))
    with pytest.raises(ConfigError, match="no length"):
        train.train(tiny_config.replace(train_steps=0, epochs=0))
    with pytest.raises(ConfigError, match="infinite"):
        train.train(tiny_config.replace(train_steps=0, epochs=1))
    blocked = tmp_path / "file"
    blocked.write_text("a file where a directory should be")
    with pytest.raises(ConfigError, match="not writable"):
        train.train(tiny_config.replace(model_dir=str(blocked / "run")))
    assert not os.path.exists(tiny_config.model_dir) or not os.listdir(tiny_config.model_dir)


def test_batch_must_split_over_replicas_checked_before_the_data_is_opened(tiny_config, tmp_path):
    unopenable = f"folder:{tmp_path / 'missing'}"  # opening it would fail with a DatasetError
    with pytest.raises(ConfigError, match="does not split evenly over 2 replicas"):
        train.train(tiny_config.replace(batch_size=7, strategy="mirrored", dataset=unopenable))


def test_jit_compile_with_mirrored_cpus_is_a_clear_error_before_any_work(tiny_config, tmp_path):
    unopenable = f"folder:{tmp_path / 'missing'}"
    with pytest.raises(ConfigError, match=r"--jit_compile does not work with --strategy=mirrored over 2 CPU "
                                          r"devices.*drop --jit_compile"):
        train.train(tiny_config.replace(jit_compile=True, strategy="mirrored", dataset=unopenable))
    assert not os.path.exists(tiny_config.model_dir)


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "dcgan_tf.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_with_a_flagfile_trains_then_resumes(tmp_path):
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text("# a comment\n--dataset=synthetic\n--image_size=16\n--ngf=8\n--ndf=8\n--nz=16\n"
                        "--batch_size=8\n--train_steps=3\n--log_every=1\n--sample_every=3\n--checkpoint_every=3\n")
    model_dir = str(tmp_path / "run")
    first = run_cli(f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--verbose=0")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Trained steps 0 -> 3" in first.stderr
    again = run_cli(f"--flagfile={flagfile}", f"--model_dir={model_dir}", "--train_steps=5", "--verbose=0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from step 3 to 5" in again.stderr and "Trained steps 3 -> 5" in again.stderr


def test_a_resumed_run_keeps_its_own_settings_unless_the_command_sets_them(tmp_path, monkeypatch):
    # A run started under other defaults (here: an EMA decay of 0.5, G's raw outputs, label smoothing) is resumed
    # by re-running its command: what the command does not set comes from the run's config.json, not from
    # today's defaults, so a package upgrade cannot change a run half-way; a flag the command gives still wins.
    from absl import flags

    from dcgan_tf import cli
    from dcgan_tf.config import Config, save

    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    # The run was copied here from another folder: its config.json still names that one.
    save(Config(model_dir=str(tmp_path / "old"), g_ema=False, g_ema_decay=0.5, label_smoothing=0.1, train_steps=3),
         checkpointing.config_path(model_dir))

    def command(*args, model_dir_flag=True):
        flag_values = flags.FlagValues()
        cli.define_config_flags(flag_values=flag_values)
        flag_values(["train", *([f"--model_dir={model_dir}"] if model_dir_flag else []), *args])
        return train.config_from_command(flag_values)

    resumed = command("--train_steps=5")
    assert (resumed.g_ema, resumed.g_ema_decay, resumed.label_smoothing) == (False, 0.5, 0.1)
    assert resumed.train_steps == 5  # given: the command's value
    assert resumed.model_dir == model_dir  # where it was read from, not where it was first trained
    monkeypatch.chdir(tmp_path)  # the default --model_dir, not given, holding a copied run
    os.makedirs(Config().model_dir)
    save(Config(model_dir=str(tmp_path / "old"), g_ema_decay=0.5), checkpointing.config_path(Config().model_dir))
    by_default = command(model_dir_flag=False)
    assert (by_default.model_dir, by_default.g_ema_decay) == (Config().model_dir, 0.5)
    changed = command("--g_ema_decay=0.9", "--g_ema=true")
    assert (changed.g_ema, changed.g_ema_decay, changed.train_steps) == (True, 0.9, 3)
    fresh = tmp_path / "new"
    new_run = command(f"--model_dir={fresh}")  # no config.json there: the flags and their defaults
    assert (new_run.g_ema, new_run.g_ema_decay, new_run.label_smoothing) == (Config().g_ema, Config().g_ema_decay, 0.0)


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    # --download=false: the test never starts celeb_a's 1.4 GB download, even on a machine with network.
    missing = run_cli("--dataset=celeb_a", f"--data_dir={tmp_path}", "--train_steps=1", "--download=false",
                      f"--model_dir={tmp_path / 'run'}")
    assert missing.returncode != 0
    assert "error: dataset 'celeb_a' is not in" in missing.stderr and "Traceback" not in missing.stderr
    assert "downloading is off" in missing.stderr and "downloads/manual" in missing.stderr
    unknown = run_cli("--no_such_flag=1")
    assert unknown.returncode != 0 and "no_such_flag" in unknown.stderr
