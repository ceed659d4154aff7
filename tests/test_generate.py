"""python -m dcgan_tf.generate: images by seed from a run, its export and the local server, pixel for pixel."""

import json
import logging as std_logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dcgan_tf import checkpointing, generate  # noqa: E402
from dcgan_tf.config import Config  # noqa: E402
from dcgan_tf.images import read_png  # noqa: E402
from dcgan_tf.train import train  # noqa: E402
from serving_toy import free_port, subprocess_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
NZ = 8
STEPS = 10
SEEDS = [0, 1, 2, 5, 42, 300]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Config:
    """A tiny synthetic run trained with --export_dir (exported at the end); its resolved config."""
    root = tmp_path_factory.mktemp("generate")
    config = Config(dataset="synthetic", image_size=16, channels=1, nz=NZ, ngf=8, ndf=8, batch_size=16,
                    train_steps=STEPS, model_dir=str(root / "run"), export_dir=str(root / "exports"), verbose=0,
                    mixed_precision="none", jit_compile="false")
    train(config)
    return checkpointing.read_run_config(config.model_dir)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """serving.local_server on loopback ports (gRPC and REST) serving the run's export."""
    root = tmp_path_factory.mktemp("server")
    ready, log = root / "ready.json", root / "server.log"
    command = [sys.executable, "-m", "serving.local_server", f"--model_base_path={run.export_dir}",
               "--model_name=dcgan", "--port=0", f"--rest_port={free_port()}", "--max_batch_size=4",
               f"--ready_file={ready}", "--grpc_threads=4"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=log_file,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"local server did not start (rc={process.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    ports = json.loads(ready.read_text())
    yield ports
    process.terminate()
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def opts(tmp_path, name: str, **changes) -> generate.Options:
    return generate.Options(outdir=str(tmp_path / name), seeds=",".join(map(str, SEEDS)), **changes)


def outputs(outdir: str) -> tuple[np.ndarray, dict]:
    """(the PNGs of SEEDS, z.npz) of one generate output folder."""
    images = np.stack([read_png(os.path.join(outdir, generate.seed_file(s))) for s in SEEDS])
    with np.load(os.path.join(outdir, generate.Z_FILE)) as data:
        return images, {k: data[k] for k in data.files}


# ---------------------------------------------------------------------------------------------------------
# The same seed, the same pixels, from every source.


@pytest.mark.slow  # trains a run, starts the server subprocess
def test_a_seed_gives_equal_pixels_from_run_export_and_server(run, server, tmp_path):
    from dcgan_tf.gan import sample_latent

    summaries = {
        "run": generate.run(opts(tmp_path, "run", model_dir=run.model_dir, batch_size=4)),
        "export": generate.run(opts(tmp_path, "export", export_dir=run.export_dir, batch_size=4)),
        "grpc": generate.run(opts(tmp_path, "grpc", server=f"{HOST}:{server['grpc_port']}", batch_size=4)),
        "rest": generate.run(opts(tmp_path, "rest", server=f"http://{HOST}:{server['rest_port']}", batch_size=4)),
    }
    reference, ref_z = outputs(str(tmp_path / "run"))
    assert reference.shape == (len(SEEDS), 16, 16, 1) and reference.std() > 0
    # z of seed s is DCGAN.sample_z(1, s): the stateless draw from [s, 0], as the export's sample_seeds.
    expected_z = np.concatenate([sample_latent(1, NZ, np.array([s, 0], np.int64), "uniform").numpy()
                                 for s in SEEDS])
    np.testing.assert_array_equal(ref_z["z"], expected_z)
    np.testing.assert_array_equal(ref_z["seeds"], SEEDS)
    for name in ("export", "grpc", "rest"):
        images, z = outputs(str(tmp_path / name))
        np.testing.assert_array_equal(images, reference, err_msg=name)
        np.testing.assert_array_equal(z["z"], ref_z["z"], err_msg=name)
        assert summaries[name]["num_images"] == len(SEEDS)
    assert "run" in str(ref_z["source"]) and "REST" in summaries["rest"]["source"]
    # Different seeds, different images (the seed reaches the generator).
    assert len({image.tobytes() for image in reference}) == len(SEEDS)


@pytest.mark.slow  # trains a run, starts the server subprocess
def test_truncation_scales_z_toward_zero_equally_everywhere(run, server, tmp_path):
    generate.run(opts(tmp_path, "full", model_dir=run.model_dir))
    generate.run(opts(tmp_path, "half_run", model_dir=run.model_dir, truncation=0.5))
    generate.run(opts(tmp_path, "half_grpc", server=f"{HOST}:{server['grpc_port']}", truncation=0.5,
                      batch_size=4))
    full, full_z = outputs(str(tmp_path / "full"))
    half, half_z = outputs(str(tmp_path / "half_run"))
    served, served_z = outputs(str(tmp_path / "half_grpc"))
    np.testing.assert_array_equal(half_z["z"], full_z["z"] * np.float32(0.5))
    assert np.abs(half_z["z"]).max() <= 0.5 and float(half_z["truncation"]) == 0.5
    np.testing.assert_array_equal(served, half)
    np.testing.assert_array_equal(served_z["z"], half_z["z"])
    assert not np.array_equal(half, full)


# ---------------------------------------------------------------------------------------------------------
# Outputs: files, grid, progress, overwrite.


@pytest.mark.slow  # trains a run
def test_grid_progress_and_overwrite(run, tmp_path, caplog):
    caplog.set_level(std_logging.INFO, logger="absl")  # absl logs through the standard "absl" logger
    summary = generate.run(generate.Options(model_dir=run.model_dir, seeds="0-9", outdir=str(tmp_path / "g"),
                                            grid=True, batch_size=4))
    messages = [record.getMessage() for record in caplog.records]
    names = sorted(os.listdir(tmp_path / "g"))
    assert names == sorted([generate.seed_file(s) for s in range(10)] + ["grid.png", "z.npz"])
    assert "seed0000.png" in names and summary["num_images"] == 10
    sheet = read_png(str(tmp_path / "g" / "grid.png"))
    assert sheet.shape[-1] == 3 and sheet.shape[0] > 4 * 16  # labelled, upscaled cells
    assert any("Generated 10/10 images" in m for m in messages), messages
    # A non-empty outdir is refused without --overwrite, before the model is opened; nothing changes.
    before = {n: os.path.getmtime(tmp_path / "g" / n) for n in names}
    with pytest.raises(generate.GenerateError, match="not empty.*--overwrite"):
        generate.run(generate.Options(model_dir="/nonexistent", seeds="3", outdir=str(tmp_path / "g")))
    assert {n: os.path.getmtime(tmp_path / "g" / n) for n in names} == before
    # With --overwrite the folder ends up holding exactly what z.npz lists.
    generate.run(generate.Options(model_dir=run.model_dir, seeds="3,4", outdir=str(tmp_path / "g"),
                                  overwrite=True))
    assert sorted(os.listdir(tmp_path / "g")) == ["seed0003.png", "seed0004.png", "z.npz"]
    with np.load(tmp_path / "g" / "z.npz") as data:
        assert list(data["seeds"]) == [3, 4]


@pytest.mark.slow  # trains a run
def test_checkpoint_step_and_unknown_step(run, tmp_path):
    steps = [checkpointing.checkpoint_step(p) for p in
             checkpointing.recovered_paths(os.path.join(run.model_dir, checkpointing.CHECKPOINT_SUBDIR))[0]]
    summary = generate.run(generate.Options(model_dir=run.model_dir, seeds="1", outdir=str(tmp_path / "a"),
                                            checkpoint_step=steps[-1]))
    assert f"step {steps[-1]}" in summary["source"]
    with pytest.raises(checkpointing.CheckpointError, match=f"no checkpoint of step 99999.*{steps[-1]}"):
        generate.run(generate.Options(model_dir=run.model_dir, seeds="1", outdir=str(tmp_path / "b"),
                                      checkpoint_step=99999))


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any heavy work.


def test_parse_seeds_ranges_and_lists():
    assert generate.parse_seeds("0-3,200,311") == [0, 1, 2, 3, 200, 311]
    assert generate.parse_seeds(" 7 ") == [7]
    assert generate.parse_seeds("5-5") == [5]


@pytest.mark.parametrize("text, message", [
    ("9-3", "ends before it starts; write it as 3-9"),
    ("1,x", "'x' is not a seed or a range"),
    ("", "'' is not a seed or a range"),
    ("-4", "'-4' is not a seed or a range"),
    ("1,,2", "'' is not a seed or a range"),
    ("0-3,2", r"seeds \[2\] more than once"),
    (f"{2**63}", "above the largest seed"),
    ("0-100000000", "more than 100000 images"),
])
def test_bad_seed_ranges_are_refused_with_the_fix(text, message):
    with pytest.raises(generate.GenerateError, match=message):
        generate.parse_seeds(text)


@pytest.mark.parametrize("psi", [0.0, -0.5, 1.5])
def test_truncation_outside_zero_one_is_refused(psi, tmp_path):
    with pytest.raises(generate.GenerateError, match=r"must be in \(0, 1\]"):
        generate.run(generate.Options(model_dir=str(tmp_path), seeds="1", outdir=str(tmp_path / "o"),
                                      truncation=psi))


def test_truncation_keeps_uniform_z_inside_its_support():
    z = np.random.RandomState(0).uniform(-1, 1, (100, 8)).astype(np.float32)
    for psi in (1.0, 0.7, 0.1):
        t = generate.truncate(z, psi)
        assert np.abs(t).max() <= psi and t.dtype == np.float32
        np.testing.assert_allclose(t, z * psi, rtol=1e-6)


def test_outdir_checks(tmp_path):
    generate.check_outdir(str(tmp_path / "new"), overwrite=False)  # a new folder is fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(generate.GenerateError, match="not empty"):
        generate.check_outdir(str(tmp_path / "full"), overwrite=False)
    generate.check_outdir(str(tmp_path / "full"), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(generate.GenerateError, match="is a file"):
        generate.check_outdir(str(tmp_path / "file"), overwrite=True)


def test_exactly_one_source(tmp_path):
    with pytest.raises(generate.GenerateError, match="exactly one of --model_dir, --export_dir, --server"):
        generate.run(generate.Options(seeds="1", outdir=str(tmp_path / "o")))
    with pytest.raises(generate.GenerateError, match="exactly one"):
        generate.run(generate.Options(seeds="1", outdir=str(tmp_path / "o"), model_dir="a", export_dir="b"))


@pytest.mark.slow  # a subprocess importing TensorFlow
def test_cli_reports_a_bad_seed_range_and_exits_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dcgan_tf.generate", "--seeds=10-2", f"--outdir={tmp_path}/o",
                             "--model_dir=/nonexistent"], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "error: --seeds=10-2: the range 10-2 ends before it starts; write it as 2-10" in result.stderr
    assert not os.path.exists(tmp_path / "o")
