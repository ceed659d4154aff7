"""What a user sees of a run: plain log lines off a terminal, scalars at the last step, a quiet start, and
TensorBoard's HParams table, layer tables and profile, each read back with TensorBoard's own readers."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, event_accumulator, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.util import tensor_util
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from werkzeug import test as werkzeug_test
from werkzeug import wrappers

from dcgan_tf import callbacks as callbacks_lib
from dcgan_tf import startup
from dcgan_tf.config import ConfigError, validate
from dcgan_tf.evaluation import fid as fid_lib
from dcgan_tf.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALARS = ("d_loss", "g_loss", "d_real", "d_fake")
TINY_FLAGS = ["--dataset=synthetic", "--image_size=16", "--nz=16", "--ngf=8", "--ndf=8", "--batch_size=8",
              "--log_every=50", "--sample_every=50", "--checkpoint_every=50", "--num_samples=4"]


def load_run(log_dir: str) -> event_accumulator.EventAccumulator:
    """TensorBoard's own reader over one run folder (all of it: size_guidance 0 = keep everything)."""
    accumulator = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
    return accumulator.Reload()


def scalar_steps(accumulator: event_accumulator.EventAccumulator, tag: str) -> list[int]:
    """The steps at which `tag` was written (TF2 scalars are stored as tensors)."""
    return [event.step for event in accumulator.Tensors(tag)]


@pytest.mark.slow
def test_piped_cli_run_logs_plain_lines_quietly_and_writes_scalars_at_the_last_step(tmp_path):
    """20-like short run with log_every=50, stdout+stderr to pipes (not a terminal), TF_CPP_MIN_LOG_LEVEL unset."""
    model_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    result = subprocess.run([sys.executable, "-m", "dcgan_tf.train", *TINY_FLAGS, "--train_steps=6",
                             f"--model_dir={model_dir}"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Readable line by line: no progress-bar control codes or carriage returns.
    assert "\x1b" not in output and "\r" not in output and "\b" not in output, output
    # Quiet start: nothing at warning level or above, no oneDNN/CUDA chatter (TensorFlow's own startup lines; our
    # conv-forms line names oneDNN's conv as a form, which is not chatter).
    noisy = [line for line in result.stderr.splitlines()
             if re.match(r"^[WEF]\d{4} ", line) or re.search(r"warning|oneDNN custom|cuda|cuInit", line, re.IGNORECASE)]
    assert not noisy, result.stderr
    # One line names the strategy and the devices.
    strategy_lines = [line for line in result.stderr.splitlines() if "Strategy " in line]
    assert len(strategy_lines) == 1 and "replica(s) on CPU:0" in strategy_lines[0], result.stderr
    # A progress line at the last step, although it is not a multiple of log_every.
    progress = re.search(r"step 6/6 \(100%\) d_loss [\d.]+ g_loss [\d.]+ D\(x\) [\d.]+ D\(G\(z\)\) [\d.]+ \| "
                         r"[\d.]+ images/s \| ETA 0:00:00", result.stderr)
    assert progress, result.stderr
    run = load_run(str(model_dir / "train"))
    for tag in SCALARS:
        assert scalar_steps(run, tag) == [6], tag


def test_user_log_level_is_respected_and_real_problems_still_show():
    """The filter hides exactly the healthy CPU-only start-up lines; TF_CPP_MIN_LOG_LEVEL=N shows level >= N."""
    captured = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796058799.037414    4965 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1796058799.095049    4965 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
        "E0000 00:00:1796058801.664750    4965 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)\n"
        "W0000 00:00:1796058801.700000    4965 some_op.cc:12] a real warning\n"
        "something printed without a prefix\n"
    )
    default = startup.filter_startup_log(captured, None, driver=False)
    assert default == ("W0000 00:00:1796058801.700000    4965 some_op.cc:12] a real warning\n"
                       "something printed without a prefix\n")
    with_driver = startup.filter_startup_log(captured, None, driver=True)
    assert "failed call to cuInit" in with_driver  # with an NVIDIA driver, cuInit failing is a real problem
    assert startup.filter_startup_log(captured, "0", driver=False) == captured
    errors_only = startup.filter_startup_log(captured, "2", driver=False)
    assert "cuInit" in errors_only and "real warning" not in errors_only and "oneDNN" not in errors_only


def test_progress_line_only_off_a_terminal_unless_asked():
    assert callbacks_lib.progress_bar_verbose(1, stdout_is_terminal=True) == 1
    assert callbacks_lib.progress_bar_verbose(1, stdout_is_terminal=False) == 0
    assert callbacks_lib.progress_bar_verbose(2, stdout_is_terminal=True) == 0
    assert not callbacks_lib.wants_progress_log(1, stdout_is_terminal=True)
    assert callbacks_lib.wants_progress_log(1, stdout_is_terminal=False)
    assert callbacks_lib.wants_progress_log(2, stdout_is_terminal=True)
    assert not callbacks_lib.wants_progress_log(0, stdout_is_terminal=False)


@pytest.mark.parametrize("bad", ["5", "3,2", "0,4", "a,b", "1,2,3"])
def test_bad_profile_steps_are_clear_errors(tiny_config, bad):
    with pytest.raises(ConfigError, match="profile_steps"):
        validate(tiny_config.replace(profile_steps=bad))


def session_groups(logdir: str) -> dict:
    """The HParams plugin's /session_groups answer, through TensorBoard's data provider and WSGI routes."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer,
                                    data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir))
    client = werkzeug_test.Client(application.TensorBoardWSGI([hparams_plugin.HParamsPlugin(context)]),
                                  wrappers.Response)
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [],
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}
    response = client.post("/data/plugin/hparams/session_groups", data=json.dumps(request),
                           content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data(as_text=True))


@pytest.mark.slow
def test_tensorboard_shows_hparams_with_final_metrics_layer_tables_and_a_profile(tiny_config, tmp_path):
    runs = tmp_path / "runs"
    classifier = str(tmp_path / "clf.keras")  # a tiny FID feature extractor, so the table gets an FID too
    fid_lib.train_classifier(tiny_config.replace(image_size=16), classifier, epochs=1, batch_size=32,
                             train_limit=64, test_limit=32)
    configs = [tiny_config.replace(model_dir=str(runs / "a"), train_steps=5, log_every=3, profile_steps="2,3",
                                   fid_every=5, fid_samples=16, fid_classifier_path=classifier),
               tiny_config.replace(model_dir=str(runs / "b"), train_steps=3, log_every=3, learning_rate=1e-3)]
    gans = [train(config) for config in configs]

    # HParams: one row per run, its config, and the last value of each loss (step 5 = the partial window).
    groups = {group["name"]: group for group in session_groups(str(runs))["sessionGroups"]}
    assert set(groups) == {"a", "b"}  # named by the run folder, holding the session model_dir/train
    assert [session["name"] for session in groups["a"]["sessions"]] == ["a/train"]
    assert groups["a"]["hparams"]["learning_rate"] == pytest.approx(2e-4)
    assert groups["b"]["hparams"]["learning_rate"] == pytest.approx(1e-3)
    assert groups["a"]["hparams"]["dataset"] == "synthetic"
    # What `auto` became on this machine is a column too (the config's `resolved` dict, one column per key).
    assert groups["a"]["hparams"]["resolved.mixed_precision"] in ("none", "bfloat16", "float16")
    metrics = {m["name"]["tag"]: m for m in groups["a"]["metricValues"]}
    run_a = load_run(str(runs / "a" / "train"))
    for tag in SCALARS:
        assert scalar_steps(run_a, tag) == [3, 5]
        assert metrics[tag]["trainingStep"] == 5
        last = tensor_util.make_ndarray(run_a.Tensors(tag)[-1].tensor_proto)
        assert metrics[tag]["value"] == pytest.approx(float(last))

    assert metrics["fid"]["trainingStep"] == 5 and metrics["fid"]["value"] >= 0
    assert "fid" not in {m["name"]["tag"] for m in groups["b"]["metricValues"]}  # b computed none

    # Layer tables of G and D as TensorBoard text, with totals equal to the networks' parameter counts.
    for tag, network in (("generator", gans[0].generator), ("discriminator", gans[0].discriminator)):
        text = tensor_util.make_ndarray(run_a.Tensors(tag)[0].tensor_proto).item().decode()
        assert "| layer | type | output shape | parameters |" in text
        assert f"| **total** | | | {network.count_params():,} (" in text
        assert len(text.splitlines()) == len(network.layers) + 3

    # The profile of steps 2..3 (only asked of run a).
    profiles = glob.glob(str(runs / "a" / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(profiles) == 1
    space = xplane_pb2.XSpace()  # the trace format the profile plugin reads
    with open(profiles[0], "rb") as f:
        space.ParseFromString(f.read())
    events = {meta.name for plane in space.planes for meta in plane.event_metadata.values()}
    assert any("discriminator" in name and "Conv2D" in name for name in events)  # the training step's ops
    assert not glob.glob(str(runs / "b" / "train" / "plugins" / "profile" / "*"))


@pytest.mark.slow
def test_sigterm_flushes_the_scalars_of_the_partial_window(tmp_path):
    model_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen([sys.executable, "-m", "dcgan_tf.train", *TINY_FLAGS, "--train_steps=100000",
                                "--sample_every=1", f"--model_dir={model_dir}"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        grid = model_dir / "samples" / "step_00000003.png"  # a grid every step marks progress
        for _ in range(1500):
            if grid.exists() or process.poll() is not None:
                break
            time.sleep(0.2)
        assert grid.exists(), "training did not reach step 3"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    stopped = int(re.search(r"SIGTERM received: stopping after step (\d+)", stderr).group(1))
    assert re.search(rf"step {stopped}/100000 \(0%\) d_loss", stderr), stderr[-3000:]
    run = load_run(str(model_dir / "train"))
    for tag in SCALARS:
        assert scalar_steps(run, tag) == [stopped], tag  # log_every=50 was never reached


def test_tensorflow_python_log_lines_print_once_and_info_only_when_asked():
    import logging

    for min_level, level in ((None, logging.WARNING), ("0", logging.INFO)):
        logger = logging.getLogger(f"test-tensorflow-{min_level}")
        logger.setLevel(logging.INFO)
        logger.addHandler(logging.StreamHandler())  # what TensorFlow adds: a second copy of every line
        startup.quiet_tensorflow_python_logger(logger, min_level)
        assert not logger.handlers and logger.propagate and logger.level == level
