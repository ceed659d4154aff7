"""Bad inputs not covered elsewhere, each a clear message naming the fix (docs/scale.md, "Bad inputs", lists every
case and its test): image_size below 16, a flagfile with an unknown flag, a full disk while checkpointing, a broken
TF_CONFIG."""

import errno
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from dcgan_tf import callbacks, checkpointing, train
from dcgan_tf import config as config_lib
from dcgan_tf.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_image_size_below_16_is_rejected(tiny_config):
    with pytest.raises(ConfigError, match=r"image_size=8 must be a power of two >= 16 \(16, 32, 64"):
        train.train(tiny_config.replace(image_size=8))


@pytest.mark.slow
def test_flagfile_with_an_unknown_flag_names_it_the_file_and_the_fix(tmp_path):
    flagfile = tmp_path / "typo.cfg"
    flagfile.write_text("--dataset=synthetic\n--learning_rte=0.001\n")
    result = subprocess.run([sys.executable, "-m", "dcgan_tf.train", f"--flagfile={flagfile}", "--train_steps=1",
                             f"--model_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO), timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Unknown command line flag 'learning_rte'. Did you mean: learning_rate" in result.stderr
    assert f"Fix the flag in the command line or the flagfile {flagfile}" in result.stderr
    assert not (tmp_path / "run").exists()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny_config, monkeypatch):
    real_save = tf.train.CheckpointManager.save

    def save_on_a_full_disk(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number != 4:
            return real_save(manager, checkpoint_number=checkpoint_number, **kwargs)
        # What TF does on ENOSPC (measured on a tmpfs, docs/scale.md "Measured"): the shard's temporary file in
        # ckpt-4_temp/ fails with ResourceExhaustedError, the index still names the previous checkpoint.
        partial = os.path.join(manager.directory, "ckpt-4_temp", "part-00000-of-00001.data-00000-of-00001")
        os.makedirs(os.path.dirname(partial))
        with open(partial + ".tempstate123", "wb") as f:
            f.write(b"\0" * 100)
        raise tf.errors.ResourceExhaustedError(None, None, f"{partial}.tempstate123; No space left on device "
                                                           "[Op:SaveV2]")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save_on_a_full_disk)
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"checkpoint of step 4 .*No space left on device.*ckpt-2 is intact and stays the "
                             r"latest\. Free disk space .*re-run the same command"):
        train.train(tiny_config)
    ckpt_dir = os.path.join(tiny_config.model_dir, "checkpoints")
    assert sorted(os.listdir(ckpt_dir)) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    monkeypatch.undo()
    _, gan = checkpointing.load_run(tiny_config.model_dir)
    assert int(gan.step.numpy()) == 2


def test_disk_full_while_writing_a_sample_grid_is_the_same_clear_error(tiny_config, monkeypatch):
    write_png = callbacks.images_lib.write_png

    def write_on_a_full_disk(path, image):
        if path.endswith("step_00000004.png"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        write_png(path, image)

    monkeypatch.setattr(callbacks.images_lib, "write_png", write_on_a_full_disk)
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"the disk is full \(OSError: .*No space left on device.*ckpt-2 is intact"):
        train.train(tiny_config)


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}}', 'TF_CONFIG needs a "task"'),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "task index 2 is outside"),
])
def test_broken_tf_config_is_a_clear_error_before_waiting_for_peers(tiny_config, monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=message):
        train.train(tiny_config.replace(strategy="multi_worker"))


def test_networks_too_large_to_build_are_refused_before_any_work(tiny_config):
    # Before this check, image_size=1048576 passed validation and died after 21 s with ResourceExhaustedError.
    with pytest.raises(ConfigError, match=r"image_size=1048576 is above 1024, the largest these networks are built"):
        train.train(tiny_config.replace(image_size=2**20))
    with pytest.raises(ConfigError, match=r"ngf=1024 at image_size=64 gives a 4x4 layer of 8192 maps \(at most 4096: "
                                          r"its weights alone would need 2\.0 GiB\); use --ngf<=512 at this size"):
        train.train(tiny_config.replace(image_size=64, ngf=1024))
    with pytest.raises(ConfigError, match=r"ndf=64 at image_size=1024 gives a 4x4 layer of 8192 maps"):
        train.train(tiny_config.replace(image_size=1024, ngf=32, ndf=64))
    assert not os.path.exists(tiny_config.model_dir)  # refused before anything was written
    config_lib.validate(tiny_config.replace(image_size=64, ngf=512, ndf=512))  # the largest allowed: accepted
    config_lib.validate(tiny_config.replace(image_size=1024, ngf=32, ndf=32))
