"""A damaged checkpoint folder loses nothing that can be read: a missing, unreadable or wrong index is rebuilt
from the ckpt-N files, a save killed at any point resumes from the newest complete checkpoint, and only provable
leftovers of an interrupted save are deleted (dcgan_tf/checkpointing.py, docs/scale.md)."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from dcgan_tf import checkpointing, train
from dcgan_tf.config import Config, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLER = os.path.join(REPO, "tests", "helpers", "kill_during_save.py")


def ckpt_files(model_dir):
    """The ckpt-N.* files of a run, sorted."""
    return sorted(n for n in os.listdir(os.path.join(model_dir, "checkpoints")) if n.startswith("ckpt-"))


def indexed_steps(model_dir):
    """Steps the index lists, oldest first (TensorFlow's own reader of the index)."""
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    return [checkpointing.checkpoint_step(p) for p in state.all_model_checkpoint_paths] if state else []


def variable_folder(tmp_path, steps, keep=10):
    """A checkpoint folder with ckpt-N for each step, written by tf.train.CheckpointManager (fast: one variable)."""
    variable = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path / "checkpoints"), keep,
                                         checkpoint_name="ckpt")
    for step in steps:
        variable.assign(float(step))
        manager.save(checkpoint_number=step)
    return str(tmp_path / "checkpoints"), variable


@pytest.mark.parametrize("damage", ["garbage", "removed"])
def test_a_damaged_or_missing_index_resumes_from_the_newest_checkpoint_and_deletes_nothing(tiny_config, caplog,
                                                                                           damage):
    train.train(tiny_config)  # checkpoints at steps 2 and 4
    index = os.path.join(tiny_config.model_dir, "checkpoints", "checkpoint")
    before = ckpt_files(tiny_config.model_dir)
    if damage == "garbage":
        with open(index, "w") as f:
            f.write("garbage\n")
    else:
        os.remove(index)
    caplog.set_level("INFO", logger="absl")
    gan = train.train(tiny_config.replace(train_steps=6))
    assert "Training " + tiny_config.model_dir + " from step 4 to 6" in caplog.text
    assert "Recovered the checkpoint index" in caplog.text and "Removed" not in caplog.text
    assert int(gan.step.numpy()) == 6 and indexed_steps(tiny_config.model_dir) == [2, 4, 6]
    assert set(before) <= set(ckpt_files(tiny_config.model_dir))


@pytest.mark.parametrize("content, why", [
    ("", "lists no checkpoint"),  # TensorFlow's own reader raises ValueError on this one
    ('model_checkpoint_path: "ckpt-9"\n', "lists no readable checkpoint"),
    (b"\xff\xfe\x00garbage", "is unreadable"),
])
def test_recovered_paths_rebuild_an_index_that_lists_nothing_readable(tmp_path, content, why):
    directory, variable = variable_folder(tmp_path, [3, 5, 7])
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(os.path.join(directory, "checkpoint"), mode) as f:
        f.write(content)
    paths, what = checkpointing.recovered_paths(directory)
    assert [checkpointing.checkpoint_step(p) for p in paths] == [3, 5, 7] and why in what
    variable.assign(0.0)
    assert checkpointing.restore_latest(tf.train.Checkpoint(v=variable), directory).endswith("ckpt-7")
    assert float(variable.numpy()) == 7.0
    checkpointing.recover(str(tmp_path))
    assert tf.train.get_checkpoint_state(directory).model_checkpoint_path.endswith("ckpt-7")
    assert checkpointing.recovered_paths(directory)[1] == ""  # repaired: nothing left to recover


def test_only_provable_leftovers_are_deleted(tmp_path, caplog):
    directory, _ = variable_folder(tmp_path, [2, 4, 6])
    os.remove(os.path.join(directory, "checkpoint"))  # and the index is gone too
    data = os.path.join(directory, "ckpt-4.data-00000-of-00001")
    os.rename(os.path.join(directory, "ckpt-4.index"), os.path.join(directory, "ckpt-4.index.bak"))
    with open(os.path.join(directory, "ckpt-9.data-00000-of-00001"), "w") as f:  # a merge killed before its index
        f.write("x")
    with open(os.path.join(directory, "ckpt-8.index"), "w") as f:  # an index cut short while being written
        f.write("x")
    os.makedirs(os.path.join(directory, "ckpt-10_temp"))
    open(os.path.join(directory, "checkpoint.tmp0123abcd"), "w").close()
    caplog.set_level("INFO", logger="absl")
    checkpointing.recover(str(tmp_path))
    left = sorted(os.listdir(directory))
    # ckpt-4 cannot be read (no index) but is older than the newest readable one: kept, named in a warning.
    assert left == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-4.data-00000-of-00001",
                    "ckpt-4.index.bak", "ckpt-6.data-00000-of-00001", "ckpt-6.index"], left
    assert os.path.exists(data) and "['ckpt-4']" in caplog.text and "cannot be read" in caplog.text
    assert indexed_steps(str(tmp_path)) == [2, 6]


def test_a_truncated_config_json_names_the_file_and_the_fix(tiny_config):
    train.train(tiny_config)
    path = os.path.join(tiny_config.model_dir, "config.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[:len(text) // 2])
    for load in (lambda: train.train(tiny_config.replace(train_steps=6)),
                 lambda: checkpointing.load_run(tiny_config.model_dir)):
        with pytest.raises(ConfigError, match=r"config\.json is damaged \(JSONDecodeError.*delete it and re-run the "
                                              r"same training command"):
            load()
    with open(path, "w") as f:
        json.dump([1, 2], f)
    with pytest.raises(ConfigError, match="holds a JSON list, not a config object"):
        Config.from_json_file(path)
    os.remove(path)  # the fix the message names: the run resumes, nothing lost
    assert int(train.train(tiny_config.replace(train_steps=6)).step.numpy()) == 6


def run_killed(model_dir, point, step):
    """Train with checkpoints every 2 steps (2 kept), SIGKILLed at `point` of the save of `step`."""
    flags = ["--dataset=synthetic", "--image_size=16", "--ngf=8", "--ndf=8", "--nz=16", "--batch_size=8",
             "--num_samples=4", "--log_every=1000", "--sample_every=1000", "--verbose=0", "--mixed_precision=none",
             "--jit_compile=false", "--checkpoint_every=2", "--keep_checkpoints=2", "--train_steps=100",
             f"--model_dir={model_dir}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, KILLER, point, str(step), *flags], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]  # killed where asked, not finished or failed


@pytest.mark.slow
@pytest.mark.parametrize("point, damage, resumes_from", [
    ("before_index", None, 6),  # ckpt-6 complete, the index still at [2, 4]: it is added, not deleted
    ("after_index", None, 6),  # the index lists [2, 4, 6], ckpt-2 not yet swept
    ("during_sweep", None, 6),  # ckpt-2.index deleted, its data not yet
    ("before_index", "no_index", 4),  # the merge killed after renaming ckpt-6's data, before writing its index
    ("after_index", "truncated_data", 4),  # the index lists ckpt-6, but its data is cut short
])
def test_a_save_killed_at_any_point_resumes_from_the_newest_complete_checkpoint(tiny_config, caplog, point,
                                                                                damage, resumes_from):
    model_dir = tiny_config.model_dir
    run_killed(model_dir, point, 6)
    directory = os.path.join(model_dir, "checkpoints")
    if damage == "no_index":  # states inside TensorFlow's C++ merge, which no Python hook reaches
        os.remove(os.path.join(directory, "ckpt-6.index"))
    elif damage == "truncated_data":
        with open(os.path.join(directory, "ckpt-6.data-00000-of-00001"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)
    caplog.set_level("INFO", logger="absl")
    config = tiny_config.replace(train_steps=8, checkpoint_every=2, keep_checkpoints=2, sample_every=1000)
    gan = train.train(config)
    assert f"from step {resumes_from} to 8" in caplog.text, caplog.text[-3000:]
    assert int(gan.step.numpy()) == 8 and indexed_steps(model_dir) == [6, 8]
    assert ckpt_files(model_dir) == ["ckpt-6.data-00000-of-00001", "ckpt-6.index", "ckpt-8.data-00000-of-00001",
                                     "ckpt-8.index"]
