"""Runs and exports written by an earlier version keep working: tests/data/run_v0.1.0 was written by dcgan_tf 0.1.0
(before the re-layering of the models, kernels and flags; its README says how), and the current code must restore
and resume that run, and serve that export, with the outputs that version computed."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dcgan_tf import checkpointing, export, train

OLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "run_v0.1.0")


@pytest.fixture
def expected():
    with np.load(os.path.join(OLD, "expected.npz")) as data:
        return dict(data)


def test_an_old_runs_checkpoint_restores_with_the_same_outputs_and_resumes(tmp_path, expected, caplog):
    model_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(OLD, "run"), model_dir)
    config, gan = checkpointing.load_run(model_dir)
    assert int(gan.step.numpy()) == int(expected["step"]) == 4
    z = expected["z"]
    np.testing.assert_allclose(gan.generator_ema(z, training=False).numpy(), expected["run_ema"], atol=1e-5)
    np.testing.assert_allclose(gan.generator(z, training=False).numpy(), expected["run_raw"], atol=1e-5)
    np.testing.assert_allclose(gan.discriminator(expected["run_raw"], training=False).numpy(), expected["d_out"],
                               atol=1e-5)
    caplog.set_level("INFO", logger="absl")
    resumed = train.train(config.replace(model_dir=model_dir, export_dir="", train_steps=6, strategy="auto"))
    assert f"Training {model_dir} from step 4 to 6" in caplog.text and int(resumed.step.numpy()) == 6


def served_images(export_path, z):
    """serving_default on z and sample_seeds on [1, 2, 3] in TF Serving's session-based loader (import the
    MetaGraph, run its restore op, run the signatures by their tensor names)."""
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_path)
        default = meta.signature_def[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
        images = sess.run(default.outputs["images"].name, {default.inputs["z"].name: z})
        seeds = meta.signature_def["sample_seeds"]
        by_seed = sess.run(seeds.outputs["images"].name,
                           {seeds.inputs["seeds"].name: np.array([1, 2, 3], np.int64)})
    return images, by_seed


def test_an_old_export_serves_the_same_images(expected):
    images, by_seed = served_images(os.path.join(OLD, "export", "4"), expected["z"])
    np.testing.assert_array_equal(images, expected["export_default_images"])
    np.testing.assert_array_equal(by_seed, expected["export_seeds_images"])


def test_the_old_run_exported_by_the_current_code_serves_what_the_old_export_did(tmp_path, expected):
    """The export path (BatchNorm re-estimation, signatures, uint8 conversion) computes as 0.1.0's did."""
    model_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(OLD, "run"), model_dir)
    config, gan = checkpointing.load_run(model_dir)
    path = export.export_generator(gan, config, str(tmp_path / "export"))
    images, by_seed = served_images(path, expected["z"])
    # uint8 pixels: one level of rounding apart at most where float32 sums are ordered differently.
    assert np.abs(images.astype(int) - expected["export_default_images"].astype(int)).max() <= 1
    assert np.abs(by_seed.astype(int) - expected["export_seeds_images"].astype(int)).max() <= 1


def test_an_old_export_is_served_by_the_development_server_with_the_same_images(tmp_path, expected):
    """The old export through the development server's gRPC front end, with the project's client."""
    from serving import client
    from serving.dev_server.grpc_frontend import start_grpc_server
    from serving.dev_server.handlers import ModelServer
    from serving.dev_server.versions import ServedModel

    core = ModelServer([ServedModel("dcgan", os.path.join(OLD, "export"), 64, batch_size_inputs=("num_images",))])
    core.poll_all()
    assert core.models["dcgan"].current is not None, "the 0.1.0 export did not load"
    grpc_server, port = start_grpc_server(core, "127.0.0.1", 0, threads=2, max_message_mb=16)
    try:
        stub = client.make_stub(f"127.0.0.1:{port}")
        np.testing.assert_array_equal(client.generate(stub, expected["z"], model="dcgan"),
                                      expected["export_default_images"])
        images, _ = client.sample_seeds(stub, [1, 2, 3], model="dcgan")
        np.testing.assert_array_equal(images, expected["export_seeds_images"])
    finally:
        grpc_server.stop(grace=None)
