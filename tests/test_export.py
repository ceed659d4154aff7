"""Export of the generator for TF Serving: layout, signatures, BatchNorm re-estimation, atomicity, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import checkpointing, export
from dcgan_tf.config import Config
from dcgan_tf.images import to_uint8
from dcgan_tf.models import build_gan

REPO = Path(__file__).resolve().parents[1]
STEP = 7
NZ = 8


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that imports this repository."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def tiny_config(**changes) -> Config:
    """A tiny DCGAN config (16x16 gray, nz=8)."""
    return Config(image_size=16, channels=1, ngf=8, ndf=8, nz=NZ, batch_size=16, train_steps=1).replace(**changes)


@pytest.fixture(scope="module")
def gan_and_config():
    """An untrained tiny DCGAN whose step counter says STEP."""
    config = tiny_config()
    gan = build_gan(config)
    gan.step.assign(STEP)
    return gan, config


@pytest.fixture(scope="module")
def exported(gan_and_config, tmp_path_factory):
    """The tiny DCGAN exported with the trained moving averages (bn_samples=0), so it equals G(z, training=False)."""
    gan, config = gan_and_config
    base = tmp_path_factory.mktemp("exports")
    return export.export_generator(gan, config, str(base), bn_samples=0)


def test_layout_signatures_and_config_asset(exported, gan_and_config):
    gan, config = gan_and_config
    base = os.path.dirname(exported)
    assert os.path.basename(exported) == str(STEP)  # version = training step
    assert os.listdir(base) == [str(STEP)]  # no temporary sibling left behind
    assert os.path.exists(os.path.join(exported, "saved_model.pb"))
    assert os.path.exists(os.path.join(exported, export.WARMUP_FILE))

    loaded = tf.saved_model.load(exported)
    assert set(loaded.signatures.keys()) == {"serving_default", "sample"}
    default = loaded.signatures["serving_default"]
    assert default.structured_input_signature[1] == {"z": tf.TensorSpec([None, NZ], tf.float32, name="z")}
    outputs = default.structured_outputs
    assert (outputs["images"].dtype, outputs["images"].shape.as_list()) == (tf.uint8, [None, 16, 16, 1])
    assert (outputs["images_float"].dtype, outputs["images_float"].shape.as_list()) == (tf.float32, [None, 16, 16, 1])
    sample_inputs = loaded.signatures["sample"].structured_input_signature[1]
    assert (sample_inputs["num_images"].dtype, sample_inputs["num_images"].shape.rank) == (tf.int32, 0)
    assert (sample_inputs["seed"].dtype, sample_inputs["seed"].shape.rank) == (tf.int64, 0)
    assert set(loaded.signatures["sample"].structured_outputs) == {"images", "images_float", "z"}

    asset = export.read_export_config(exported)
    assert {k: asset[k] for k in ("nz", "image_size", "channels", "z_dist", "step", "version")} == {
        "nz": NZ, "image_size": 16, "channels": 1, "z_dist": config.z_dist, "step": STEP, "version": STEP}
    assert asset["config"]["ngf"] == 8


def test_images_match_generator_and_do_not_depend_on_batch(exported, gan_and_config):
    gan, _ = gan_and_config
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    z = np.random.RandomState(0).uniform(-1, 1, (6, NZ)).astype(np.float32)
    batch = serve(z=tf.constant(z))
    expected = gan.generator(z, training=False).numpy()
    np.testing.assert_allclose(batch["images_float"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(batch["images"].numpy(), to_uint8(expected))
    alone = serve(z=tf.constant(z[2:3]))["images_float"].numpy()  # inference mode: no batch statistics
    np.testing.assert_allclose(alone[0], batch["images_float"].numpy()[2], atol=1e-6)


def test_sample_signature_is_reproducible_and_uses_sample_z(exported, gan_and_config):
    gan, _ = gan_and_config
    sample = tf.saved_model.load(exported).signatures["sample"]
    first = sample(num_images=tf.constant(5), seed=tf.constant(11, tf.int64))
    again = sample(num_images=tf.constant(5), seed=tf.constant(11, tf.int64))
    other = sample(num_images=tf.constant(5), seed=tf.constant(12, tf.int64))
    np.testing.assert_array_equal(first["z"].numpy(), gan.sample_z(5, 11).numpy())
    np.testing.assert_array_equal(first["images"].numpy(), again["images"].numpy())
    assert not np.array_equal(first["z"].numpy(), other["z"].numpy())
    np.testing.assert_allclose(first["images_float"].numpy(),
                               gan.generator(first["z"], training=False).numpy(), atol=1e-6)


def test_nonfinite_z_is_rejected_in_the_graph(exported):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="z must be finite"):
        serve(z=tf.constant(np.full((1, NZ), np.nan, np.float32)))


def test_batchnorm_is_reestimated_on_a_copy(tmp_path):
    config = tiny_config()
    gan = build_gan(config)
    for layer in gan.generator.layers:  # moving averages far from the real statistics (e.g. lagging in a GAN)
        if hasattr(layer, "moving_mean"):
            layer.moving_mean.assign(layer.moving_mean + 3.0)
            layer.moving_variance.assign(layer.moving_variance * 20.0)
    before = [w.copy() for w in gan.generator.get_weights()]
    precise = export.export_generator(gan.generator, config, str(tmp_path), version=1, bn_samples=512)
    stale = export.export_generator(gan.generator, config, str(tmp_path), version=2, bn_samples=0)
    for old, new in zip(before, gan.generator.get_weights()):  # the training run's generator is untouched
        np.testing.assert_array_equal(old, new)

    z = gan.sample_z(config.batch_size, seed=3)
    training_mode = gan.generator(z, training=True).numpy()  # what training-time samples look like

    def error(path: str) -> float:
        served = tf.saved_model.load(path).signatures["serving_default"](z=z)["images_float"].numpy()
        return float(np.abs(served - training_mode).mean())

    assert error(precise) < 0.2 * error(stale), (error(precise), error(stale))
    assert export.read_export_config(precise)["batchnorm_samples"] == 512


def test_existing_version_is_never_overwritten(exported, gan_and_config):
    gan, config = gan_and_config
    base = os.path.dirname(exported)
    fingerprint = Path(exported, "saved_model.pb").read_bytes()
    with pytest.raises(export.ExportError, match=f"{STEP} already exists.*--version={STEP + 1}"):
        export.export_generator(gan, config, base, bn_samples=0)
    assert Path(exported, "saved_model.pb").read_bytes() == fingerprint
    # A bare generator has no step: it gets the next integer.
    path = export.export_generator(gan.generator, config, base, bn_samples=0)
    assert os.path.basename(path) == str(STEP + 1)
    shutil.rmtree(path)


def test_failed_export_leaves_no_version_behind(gan_and_config, tmp_path, monkeypatch):
    gan, config = gan_and_config

    def half_written_save(obj, path, signatures=None):
        os.makedirs(os.path.join(path, "variables"))
        Path(path, "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", half_written_save)
    with pytest.raises(export.ExportError, match="disk full"):
        export.export_generator(gan, config, str(tmp_path), bn_samples=0)
    assert os.listdir(tmp_path) == []  # neither a version nor the temporary folder


def test_mismatched_config_is_refused(gan_and_config, tmp_path):
    gan, config = gan_and_config
    with pytest.raises(export.ExportError, match="does not match the config"):
        export.export_generator(gan, config.replace(nz=NZ + 1), str(tmp_path))


@pytest.mark.slow
def test_round_trip_in_a_fresh_process_and_saved_model_cli(exported, gan_and_config, tmp_path):
    gan, _ = gan_and_config
    z = np.random.RandomState(1).uniform(-1, 1, (4, NZ)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    reload_script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = serve(z=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['images_float'].numpy()); np.save(sys.argv[4], out['images'].numpy())\n"
    )
    cli = shutil.which("saved_model_cli")
    cli_command = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    # Both children import TensorFlow (seconds each): run them side by side.
    reload = subprocess.Popen([sys.executable, "-c", reload_script, exported, str(tmp_path / "z.npy"),
                               str(tmp_path / "float.npy"), str(tmp_path / "uint8.npy")],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    show = subprocess.Popen(cli_command + ["show", "--dir", exported, "--all"], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reload_out, _ = reload.communicate(timeout=120)
    show_out, _ = show.communicate(timeout=120)

    assert reload.returncode == 0, reload_out[-3000:]
    expected = gan.generator(z, training=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "float.npy"), expected, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "uint8.npy"), to_uint8(expected))

    assert show.returncode == 0, show_out[-3000:]
    for text in ("signature_def['serving_default']", "signature_def['sample']", "inputs['z']",
                 "inputs['num_images']", "inputs['seed']", "outputs['images']", "outputs['images_float']",
                 "outputs['z']", "DT_UINT8", "DT_INT64", "shape: (-1, 8)", "shape: (-1, 16, 16, 1)"):
        assert text in show_out, text


@pytest.mark.slow
def test_cli_exports_the_latest_checkpoint_of_a_run(tmp_path):
    config = tiny_config(model_dir=str(tmp_path / "run"))
    gan = build_gan(config)
    gan.step.assign(5)
    checkpointing.save_config(config)
    checkpointing.make_manager(gan, config.model_dir, 1).save()
    base = tmp_path / "exports"
    result = subprocess.run([sys.executable, "-m", "dcgan_tf.export", f"--model_dir={config.model_dir}",
                             f"--export_dir={base}", "--bn_samples=32"], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"export_path": str(base / "5"), "version": 5, "step": 5}
    served = tf.saved_model.load(summary["export_path"]).signatures["sample"](
        num_images=tf.constant(2), seed=tf.constant(0, tf.int64))
    assert served["images"].shape == (2, 16, 16, 1)
    assert export.read_export_config(summary["export_path"])["batchnorm_samples"] == 32
