"""Export of the generator for TF Serving: layout, signatures, BatchNorm re-estimation, atomicity, CLI."""

from __future__ import annotations

import dataclasses
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
from dcgan_tf.gan import build_gan
from dcgan_tf.images import to_uint8

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
    assert set(loaded.signatures.keys()) == {"serving_default", "sample", "sample_seeds"}
    default = loaded.signatures["serving_default"]
    assert default.structured_input_signature[1] == {"z": tf.TensorSpec([None, NZ], tf.float32, name="z")}
    outputs = default.structured_outputs
    assert (outputs["images"].dtype, outputs["images"].shape.as_list()) == (tf.uint8, [None, 16, 16, 1])
    assert (outputs["images_float"].dtype, outputs["images_float"].shape.as_list()) == (tf.float32, [None, 16, 16, 1])
    sample_inputs = loaded.signatures["sample"].structured_input_signature[1]
    assert (sample_inputs["num_images"].dtype, sample_inputs["num_images"].shape.rank) == (tf.int32, 0)
    assert (sample_inputs["seed"].dtype, sample_inputs["seed"].shape.rank) == (tf.int64, 0)
    assert set(loaded.signatures["sample"].structured_outputs) == {"images", "images_float", "z"}
    seeds = loaded.signatures["sample_seeds"]
    assert seeds.structured_input_signature[1] == {"seeds": tf.TensorSpec([None], tf.int64, name="seeds")}
    assert {k: v.shape.as_list() for k, v in seeds.structured_outputs.items()} == {
        "images": [None, 16, 16, 1], "images_float": [None, 16, 16, 1], "z": [None, NZ]}

    asset = export.read_export_config(exported)
    assert {k: asset[k] for k in ("nz", "image_size", "channels", "z_dist", "step", "version")} == {
        "nz": NZ, "image_size": 16, "channels": 1, "z_dist": config.z_dist, "step": STEP, "version": STEP}
    assert asset["max_images"] == export.DEFAULT_MAX_IMAGES
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

    def half_written_save(obj, path, **kwargs):
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


# ---------------------------------------------------------------------------------------------------------
# The export in the tools TF Serving users run: saved_model_cli and TF Serving's session-based loader.

# Loads a version the way TF Serving's C++ LoadSavedModel does (import the MetaGraph, restore, init op) and runs
# every signature by its SignatureDef tensor names, then replays assets.extra/tf_serving_warmup_requests.
SESSION_LOADER_CHILD = """
import json, os, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

export_dir, inputs_path, out_path = sys.argv[1:4]
inputs = dict(np.load(inputs_path))
results, report = {}, {"warmup": [], "errors": {}}

def run(sess, signature, feeds):
    fetches = {key: info.name for key, info in signature.outputs.items()}
    return sess.run(fetches, {signature.inputs[key].name: value for key, value in feeds.items()})

with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    signatures = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir).signature_def
    report["signatures"] = sorted(signatures)
    feeds = {"serving_default": {"z": inputs["z"]},
             "sample": {"num_images": np.int32(inputs["num_images"]), "seed": np.int64(inputs["seed"])},
             "sample_seeds": {"seeds": inputs["seeds"]}}
    for name, feed in feeds.items():
        if name in signatures:
            for key, value in run(sess, signatures[name], feed).items():
                results[name + "/" + key] = value
    too_many = {"sample": {"num_images": np.int32(inputs["too_many"]), "seed": np.int64(0)},
                "sample_seeds": {"seeds": np.arange(inputs["too_many"], dtype=np.int64)}}
    for name, feed in too_many.items():
        try:
            run(sess, signatures[name], feed)
            report["errors"][name] = "no error"
        except (tf.errors.OpError, KeyError) as e:
            report["errors"][name] = type(e).__name__ + ": " + str(e)
    warmup = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    for record in tf.compat.v1.io.tf_record_iterator(warmup):
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        outputs = run(sess, signatures[name], {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        report["warmup"].append([name, {k: list(v.shape) for k, v in outputs.items()}])
np.savez(out_path, **results)
print(json.dumps(report))
"""

Z = np.random.RandomState(1).uniform(-1, 1, (4, NZ)).astype(np.float32)
NUM_IMAGES, SEED, SEEDS = 3, 11, np.array([5, 11, 5, 0], np.int64)


def saved_model_cli() -> list[str]:
    """The saved_model_cli command of this environment."""
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or shutil.which("saved_model_cli")
    return [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@dataclasses.dataclass
class ToolRuns:
    """What saved_model_cli and the session loader produced from one export, in fresh processes."""

    cli_default: subprocess.CompletedProcess
    cli_sample: subprocess.CompletedProcess
    cli_show: subprocess.CompletedProcess
    session: subprocess.CompletedProcess
    out: Path

    def cli_output(self, name: str, key: str) -> np.ndarray:
        return np.load(self.out / f"cli_{name}" / f"{key}.npy")

    def session_report(self) -> dict:
        assert self.session.returncode == 0, self.session.stdout[-4000:]
        return json.loads(self.session.stdout.strip().splitlines()[-1])

    def session_outputs(self) -> dict[str, np.ndarray]:
        self.session_report()
        return dict(np.load(self.out / "session.npz"))


def run_tools(export_dir: str, out: Path, too_many: int) -> ToolRuns:
    """saved_model_cli run (both signatures), saved_model_cli show and the session loader, side by side."""
    np.save(out / "z.npy", Z)
    np.savez(out / "inputs.npz", z=Z, num_images=NUM_IMAGES, seed=SEED, seeds=SEEDS, too_many=too_many)
    run = [*saved_model_cli(), "run", "--dir", export_dir, "--tag_set", "serve", "--overwrite"]
    commands = {
        "cli_default": run + ["--signature_def", "serving_default", "--inputs", f"z={out / 'z.npy'}",
                              "--outdir", str(out / "cli_serving_default")],
        "cli_sample": run + ["--signature_def", "sample", "--input_exprs", f"num_images={NUM_IMAGES};seed={SEED}",
                             "--outdir", str(out / "cli_sample")],
        "cli_show": [*saved_model_cli(), "show", "--dir", export_dir, "--all"],
        "session": [sys.executable, "-c", SESSION_LOADER_CHILD, export_dir, str(out / "inputs.npz"),
                    str(out / "session.npz")],
    }
    # Each child imports TensorFlow (seconds): run them side by side.
    children = {name: subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
                for name, command in commands.items()}
    done = {}
    for name, child in children.items():
        stdout, _ = child.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(child.args, child.returncode, stdout)
    return ToolRuns(**done, out=out)


@pytest.fixture(scope="module")
def tool_runs(exported, tmp_path_factory) -> ToolRuns:
    """The tools run on the module's export (bn_samples=0, so it equals G(z, training=False))."""
    asset = export.read_export_config(exported)
    return run_tools(exported, tmp_path_factory.mktemp("tools"), asset.get("max_images", 1024) + 1)


@pytest.mark.slow
def test_saved_model_cli_runs_both_signatures_like_the_generator(tool_runs, gan_and_config):
    gan, _ = gan_and_config
    assert tool_runs.cli_default.returncode == 0, tool_runs.cli_default.stdout[-4000:]
    assert tool_runs.cli_sample.returncode == 0, tool_runs.cli_sample.stdout[-4000:]
    expected = gan.generator(Z, training=False).numpy()
    np.testing.assert_allclose(tool_runs.cli_output("serving_default", "images_float"), expected, atol=1e-5)
    np.testing.assert_array_equal(tool_runs.cli_output("serving_default", "images"), to_uint8(expected))
    z = gan.sample_z(NUM_IMAGES, SEED).numpy()
    np.testing.assert_array_equal(tool_runs.cli_output("sample", "z"), z)
    np.testing.assert_allclose(tool_runs.cli_output("sample", "images_float"),
                               gan.generator(z, training=False).numpy(), atol=1e-5)

    show = tool_runs.cli_show
    assert show.returncode == 0, show.stdout[-3000:]
    for text in ("signature_def['serving_default']", "signature_def['sample']", "signature_def['sample_seeds']",
                 "inputs['z']", "inputs['num_images']", "inputs['seed']", "inputs['seeds']", "outputs['images']",
                 "outputs['images_float']", "outputs['z']", "DT_UINT8", "DT_INT64", "shape: (-1, 8)",
                 "shape: (-1, 16, 16, 1)"):
        assert text in show.stdout, text


@pytest.mark.slow
def test_session_loader_runs_every_signature_like_the_generator(tool_runs, gan_and_config):
    gan, _ = gan_and_config
    outputs = tool_runs.session_outputs()
    signatures = [name for name in tool_runs.session_report()["signatures"] if not name.startswith("__")]
    assert signatures == sorted(export.SIGNATURES)  # (TF adds __saved_model_init_op)
    expected = gan.generator(Z, training=False).numpy()
    np.testing.assert_allclose(outputs["serving_default/images_float"], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["serving_default/images"], to_uint8(expected))
    z = gan.sample_z(NUM_IMAGES, SEED).numpy()
    np.testing.assert_array_equal(outputs["sample/z"], z)
    np.testing.assert_allclose(outputs["sample/images_float"], gan.generator(z, training=False).numpy(), atol=1e-5)
    # sample_seeds: one image per seed, z of seed s = sample_z(1, s), whatever else is in the batch.
    seed_z = np.concatenate([gan.sample_z(1, int(s)).numpy() for s in SEEDS])
    np.testing.assert_array_equal(outputs["sample_seeds/z"], seed_z)
    np.testing.assert_array_equal(outputs["sample_seeds/images"][0], outputs["sample_seeds/images"][2])
    np.testing.assert_array_equal(outputs["sample_seeds/images"][1], outputs["sample/images"][0])
    np.testing.assert_allclose(outputs["sample_seeds/images_float"], gan.generator(seed_z, training=False).numpy(),
                               atol=1e-5)


@pytest.mark.slow
def test_session_loader_replays_the_warmup_requests(tool_runs):
    warmup = tool_runs.session_report()["warmup"]
    assert [name for name, _ in warmup] == list(export.BATCHABLE_SIGNATURES)  # no scalar-input `sample`
    for _, shapes in warmup:
        assert shapes["images"] == [1, 16, 16, 1]


@pytest.mark.slow
def test_sample_over_the_export_maximum_is_refused_by_the_graph(tool_runs):
    errors = tool_runs.session_report()["errors"]
    maximum = export.DEFAULT_MAX_IMAGES
    assert errors["sample"].startswith("InvalidArgumentError"), errors
    assert f"num_images must be <= {maximum}" in errors["sample"] and "--max_images=N" in errors["sample"]
    assert errors["sample_seeds"].startswith("InvalidArgumentError"), errors
    assert f"the number of seeds must be <= {maximum}" in errors["sample_seeds"]


def _session_loader_images(path: str, z: np.ndarray) -> np.ndarray:
    """serving_default's images_float through TF Serving's session-based loader, in this process."""
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def["serving_default"]
        return session.run(signature.outputs["images_float"].name, {signature.inputs["z"].name: z})


@pytest.mark.slow
def test_mixed_precision_generators_export_float32_graphs_that_the_tools_run(tmp_path):
    served = {}
    for precision in ("float16", "bfloat16"):
        config = tiny_config(mixed_precision=precision)
        gan = build_gan(config, precision=config.compute_precision)
        assert gan.generator.layers[1].compute_dtype == precision
        path = export.export_generator(gan, config, str(tmp_path / precision), bn_samples=0, max_images=4)
        if precision == "float16":  # saved_model_cli in a fresh process (one TF import: the other in-process)
            np.save(tmp_path / "z.npy", Z)
            result = subprocess.run(
                [*saved_model_cli(), "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                 "serving_default", "--inputs", f"z={tmp_path / 'z.npy'}", "--outdir", str(tmp_path / "out")],
                env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            assert result.returncode == 0, result.stdout[-4000:]
            served[precision] = np.load(tmp_path / "out" / "images_float.npy")
        else:
            served[precision] = _session_loader_images(path, Z)
        assert served[precision].dtype == np.float32
        reference = export.inference_copy(gan.generator, config)  # the float32 copy the export serves
        np.testing.assert_allclose(served[precision], reference(Z, training=False).numpy(), atol=1e-5)
        # ... which is the mixed-precision generator up to its rounding.
        np.testing.assert_allclose(served[precision], gan.generator(Z, training=False).numpy().astype(np.float32),
                                   atol=0.05)


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
