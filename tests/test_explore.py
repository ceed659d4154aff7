"""The paper's experiments (dcgan_tf.experiments, python -m dcgan_tf.explore): the math, then the commands."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dcgan_tf import checkpointing, explore, input_pipeline  # noqa: E402
from dcgan_tf.config import Config  # noqa: E402
from dcgan_tf.evaluation.data import load_real_images  # noqa: E402
from dcgan_tf.experiments import ablation, dviz, figures, latent, memorization, sources  # noqa: E402
from dcgan_tf.images import read_png, to_uint8  # noqa: E402
from dcgan_tf.gan import build_gan  # noqa: E402

NZ = 8
# Gray 16x16 synthetic shapes; 200 steps of this tiny GAN draw bright blobs on dark backgrounds (about 3 s).
CONFIG = Config(dataset="synthetic", image_size=16, channels=1, nz=NZ, ngf=8, ndf=8, batch_size=32,
                train_steps=200, seed=0, verbose=0)


@pytest.fixture(scope="module")
def gan():
    keras.utils.set_random_seed(0)
    model = build_gan(CONFIG)
    model.fit(input_pipeline.make_dataset(CONFIG), steps_per_epoch=CONFIG.train_steps, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def gen(gan):
    return sources.from_gan(gan, CONFIG)


@pytest.fixture(scope="module")
def real():
    """64 real synthetic images in [-1, 1]."""
    return load_real_images(CONFIG, 64)


@pytest.fixture(scope="module")
def run_dir(gan, tmp_path_factory):
    """A training-run directory (config.json + checkpoint) of the trained tiny GAN."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    checkpointing.save_config(CONFIG.replace(model_dir=model_dir))
    checkpointing.make_manager(gan, model_dir, 1).save()
    return model_dir


# ---------------------------------------------------------------------------------------------------------
# Latent space.


def test_sheet_z_is_the_models_own_sampler(gan, gen):
    sheet = latent.run_sheet(gen.generate, NZ, 10, seed=3, z_dist="uniform")
    np.testing.assert_array_equal(sheet["z"], gan.sample_z(10, 3).numpy())
    np.testing.assert_allclose(sheet["images"], gan.output_generator(sheet["z"], training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_equal_endpoint_samples(gen, method):
    result = latent.run_interpolate(gen.generate, NZ, rows=3, steps=5, seed=1, z_dist="uniform", method=method)
    ends = latent.sample_z(6, NZ, 1, "uniform", latent.STREAM_INTERPOLATE)
    np.testing.assert_array_equal(result["z"][:, 0], ends[0::2])
    np.testing.assert_array_equal(result["z"][:, -1], ends[1::2])
    np.testing.assert_allclose(result["images"][:, 0], gen.generate(ends[0::2]), atol=1e-5)
    np.testing.assert_allclose(result["images"][:, -1], gen.generate(ends[1::2]), atol=1e-5)
    # The inside of the path: linear is the straight line; slerp keeps the norm between equal-norm ends.
    if method == "linear":
        np.testing.assert_allclose(result["z"][:, 2], (ends[0::2] + ends[1::2]) / 2, atol=1e-6)


def test_slerp_stays_on_the_sphere():
    z0, z1 = np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    path = latent.slerp(z0, z1, 5)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(path[2], [np.sqrt(0.5), np.sqrt(0.5), 0.0], atol=1e-6)


def test_arithmetic_equals_exemplar_means(gen):
    z = latent.sample_z(12, NZ, 0, "uniform")
    images = gen.generate(z)
    a, b, c = [0, 1, 2], [3, 4, 5], [6, 7, 8]
    result = latent.run_arithmetic(gen.generate, z, images, a, b, c, noise=0.25, seed=0)
    for key, idx in (("mean_a", a), ("mean_b", b), ("mean_c", c)):
        np.testing.assert_allclose(result[key], z[idx].mean(axis=0), atol=1e-6)
    y = z[a].mean(0) - z[b].mean(0) + z[c].mean(0)
    np.testing.assert_allclose(result["y"], y, atol=1e-6)
    # Centre of the 3x3 grid is G(Y); the 8 others are Y plus noise within +-0.25, all different.
    np.testing.assert_array_equal(result["grid_z"][4], result["y"])
    offsets = np.delete(result["grid_z"] - result["y"], 4, axis=0)
    assert np.all(np.abs(offsets) <= 0.25 + 1e-6) and np.all(np.abs(offsets).max(axis=1) > 0)
    np.testing.assert_allclose(result["grid_images"][4], gen.generate(y[None])[0], atol=1e-5)
    np.testing.assert_allclose(result["mean_images"][1], gen.generate(z[b].mean(0, keepdims=True))[0], atol=1e-5)
    pixels = np.clip(images[a].mean(0) - images[b].mean(0) + images[c].mean(0), -1, 1)
    np.testing.assert_allclose(result["pixel_result"], pixels, atol=1e-6)
    np.testing.assert_array_equal(result["exemplar_images"][2], images[c])


def test_walk_adds_the_attribute_vector_in_steps(gen):
    z = latent.sample_z(12, NZ, 0, "uniform")
    result = latent.run_walk(gen.generate, z, [0, 1, 2, 3], [4, 5, 6, 7], rows=2, steps=4, seed=0,
                             z_dist="uniform", scale=2.0)
    vector = z[4:8].mean(0) - z[0:4].mean(0)
    np.testing.assert_allclose(result["vector"], vector, atol=1e-6)
    start = latent.sample_z(2, NZ, 0, "uniform", latent.STREAM_WALK)
    np.testing.assert_array_equal(result["z"][:, 0], start)
    np.testing.assert_allclose(result["z"][:, -1], start + 2.0 * vector, atol=1e-6)
    assert result["images"].shape == (2, 4, 16, 16, 1)


def test_exemplar_index_outside_the_sheet_is_a_clear_error():
    with pytest.raises(ValueError, match="outside the sheet"):
        latent.exemplar_mean(np.zeros((5, NZ)), [1, 7])


# ---------------------------------------------------------------------------------------------------------
# Concept filters and ablation.


def test_split_generator_reproduces_the_generator(gan):
    head, tail = ablation.split_generator(gan.generator)
    # 16x16: feature maps project (4x4) and deconv1 (8x8), then to_image: the second highest is the projection.
    assert ablation.concept_layer_name(gan.generator) == "project_relu"
    z = latent.sample_z(4, NZ, 0)
    np.testing.assert_allclose(tail(head(z)).numpy(), gan.generator(z, training=False).numpy(), atol=1e-6)


def test_default_ablation_layer_of_the_paper_model_has_room_for_its_200_filters():
    """Paper 6.3.1 dropped 200 filters of the "second highest convolution layer": at 64x64, ngf=128 that is the
    16x16x256 layer (the 32x32 one has 128 maps, the output conv 3)."""
    from dcgan_tf.models import build_generator

    generator = build_generator(Config(image_size=64, channels=3, ngf=128, nz=100))
    name = ablation.concept_layer_name(generator)
    assert name == "deconv2_relu"
    assert tuple(generator.get_layer(name).output.shape[1:]) == (16, 16, 256)
    assert generator.get_layer(name).output.shape[-1] >= 200


def test_ablation_zeroes_exactly_the_chosen_maps(gan):
    head, tail = ablation.split_generator(gan.generator)
    z = latent.sample_z(6, NZ, 0)
    features = ablation.feature_maps(head, z)
    dropped = ablation.drop_feature_maps(features, [1, 5])
    assert np.all(dropped[..., [1, 5]] == 0)
    kept = [i for i in range(features.shape[-1]) if i not in (1, 5)]
    np.testing.assert_array_equal(dropped[..., kept], features[..., kept])
    # The rendered ablation is the tail applied to exactly those maps.
    images = ablation.render_without(head, tail, z, [1, 5])
    np.testing.assert_allclose(images, tail(dropped).numpy(), atol=1e-6)
    np.testing.assert_allclose(ablation.render_without(head, tail, z, []), tail(features).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        ablation.drop_feature_maps(features, [features.shape[-1]])


def test_logistic_regression_recovers_planted_filters():
    rng = np.random.default_rng(0)
    n, size, num_filters = 40, 8, 12
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        top, left = rng.integers(0, 5, 2)
        masks[i, top:top + 3, left:left + 4] = True
    features = rng.normal(size=(n, size, size, num_filters))
    features[..., 3] += 2.0 * masks  # planted: fire inside the concept
    features[..., 9] += 1.0 * masks
    features[..., 5] -= 2.0 * masks  # fires outside: negative weight, not a concept filter
    result = ablation.fit_concept_filters(features, masks)
    assert result["filters"].tolist() == [3, 9]  # strongest first
    assert result["weights"][5] < 0
    assert result["balanced_accuracy"] > 0.9


def test_synthetic_masks_are_the_datasets_own_masks():
    for channels in (1, 3):
        for index in range(8):
            example = input_pipeline.render_synthetic(0, index, 16, channels)
            image = input_pipeline.scale_to_unit_range(example["image"]).numpy()
            np.testing.assert_array_equal(ablation.synthetic_masks(image[None])[0], example["mask"].numpy())


def test_downsample_masks_majority():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2, :2] = True  # one full cell
    masks[0, 2, 2] = True  # a quarter of another
    downsampled = ablation.downsample_masks(masks, 2)
    assert downsampled.dtype == bool
    np.testing.assert_array_equal(downsampled, [[[True, False], [False, False]]])


def test_concept_filters_and_ablation_end_to_end_on_synthetic(gan, gen):
    """Masks the synthetic data defines (the bright shape) -> filters -> dropping them removes the shapes."""
    z = latent.sample_z(64, NZ, 0)
    masks = ablation.synthetic_masks(gen.generate(z))
    concept = ablation.run_concept_filters(gan.generator, z, masks)
    assert len(concept["filters"]) >= 1 and concept["balanced_accuracy"] > 0.8
    fresh = latent.sample_z(32, NZ, 0, stream=latent.STREAM_ABLATE)  # not the samples it was fitted on
    result = ablation.run_ablation(gan.generator, fresh, concept["filters"], seed=0)
    foreground = {k: ablation.synthetic_masks(result[k]).mean()
                  for k in ("images_before", "images_after", "images_control")}
    assert foreground["images_after"] < 0.6 * foreground["images_before"], foreground
    assert foreground["images_control"] > foreground["images_after"], foreground
    assert set(result["control_filters"]).isdisjoint(concept["filters"])


# ---------------------------------------------------------------------------------------------------------
# Discriminator visualisation.


def test_guided_rectifier_passes_only_positive_gradients_at_positive_inputs():
    import tensorflow as tf

    x = tf.constant([-1.0, 2.0, 3.0, 0.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = dviz.guided_rectifier(x, 0.2)
        loss = tf.reduce_sum(y * tf.constant([1.0, 1.0, -1.0, 2.0]))
    np.testing.assert_allclose(y.numpy(), [-0.2, 2.0, 3.0, 0.5])
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [0.0, 1.0, 0.0, 2.0])


def hand_built_discriminator():
    """1x1 convs, so each pixel is its own little net: x -> 3 maps (weights 1, -1, 0.5) -> LeakyReLU(0.2)
    -> 2 features (weights [1, 1, -1] and [1, 1, -3]) -> LeakyReLU(0.2)."""
    x = keras.Input((4, 4, 1))
    h = keras.layers.Conv2D(3, 1, use_bias=False, name="conv0")(x)
    h = keras.layers.LeakyReLU(0.2, name="conv0_lrelu")(h)
    h = keras.layers.Conv2D(2, 1, use_bias=False, name="conv1")(h)
    model = keras.Model(x, keras.layers.LeakyReLU(0.2, name="conv1_lrelu")(h))
    model.get_layer("conv0").set_weights([np.array([1, -1, 0.5], np.float32).reshape(1, 1, 1, 3)])
    model.get_layer("conv1").set_weights([np.array([[1, 1], [1, 1], [-1, -3]], np.float32).reshape(1, 1, 3, 2)])
    return model


def test_guided_backprop_follows_the_guided_rule_on_a_hand_built_net():
    import tensorflow as tf

    d = hand_built_discriminator()
    image = np.zeros((1, 4, 4, 1), np.float32)
    image[0, 1, 2, 0] = 2.0  # the only non-zero pixel
    # Feature 0 at that pixel: maps (2, -2, 1) -> (2, -0.4, 1) -> 2 - 0.4 - 1 = 0.6, the maximum (0 elsewhere).
    # Guided: map 1's input is negative and map 2's gradient (-1) is negative, so only map 0 passes: 1 x 1 = 1.
    # Plain backprop would give 1 + 1 x 0.2 x (-1) + (-1) x 0.5 = 0.3.
    guided = dviz.guided_gradients(d, image, "conv1_lrelu", 0)
    expected = np.zeros_like(image)
    expected[0, 1, 2, 0] = 1.0
    np.testing.assert_allclose(guided, expected, atol=1e-6)
    x = tf.constant(image)
    with tf.GradientTape() as tape:
        tape.watch(x)
        plain_objective = tf.reduce_max(d(x)[..., 0])
    assert tape.gradient(plain_objective, x).numpy()[0, 1, 2, 0] == pytest.approx(0.3)
    # Feature 1: 2 - 0.4 - 3 = -1.4 at that pixel, 0 elsewhere: the maximum's input is not positive (and every
    # map's input there is 0), so the guided rule lets nothing through: zero everywhere.
    np.testing.assert_array_equal(dviz.guided_gradients(d, image, "conv1_lrelu", 1), np.zeros_like(image))


def test_guided_backprop_gradients_have_the_input_shape_and_are_not_zero(gan, real):
    images = real[:8]
    layer = dviz.last_conv_layer_name(gan.discriminator)
    assert layer == "conv1_lrelu"
    gradients = dviz.guided_gradients(gan.discriminator, images, layer, 0)
    assert gradients.shape == images.shape and np.any(gradients != 0)
    result = dviz.visualize_features(gan.discriminator, images, num_features=3, top=2)
    activations = dviz.feature_activations(gan.discriminator, images, layer)
    np.testing.assert_array_equal(result["indices"][:, 0], activations[:, :3].argmax(axis=0))
    assert result["gradients"].shape == (3, 2) + images.shape[1:]


# ---------------------------------------------------------------------------------------------------------
# Memorisation checks.


def test_training_image_given_to_neighbors_finds_itself_at_distance_zero(gan, real):
    train = real
    queries = np.concatenate([train[[5, 17]], train[[9]] + 0.05])
    result = memorization.run_neighbors(queries, train, k=2, discriminator=gan.discriminator)
    for space in ("pixel", "dfeature"):
        np.testing.assert_array_equal(result[f"{space}_indices"][:2, 0], [5, 17])
        np.testing.assert_array_equal(result[f"{space}_distances"][:2, 0], 0.0)
        assert np.all(np.diff(result[f"{space}_distances"], axis=1) >= 0)  # nearest first
    assert result["pixel_indices"][2, 0] == 9 and result["pixel_distances"][2, 0] > 0
    np.testing.assert_allclose(result["pixel_distances"][2, 0], 0.05 * np.sqrt(16 * 16), rtol=1e-4)
    np.testing.assert_array_equal(result["pixel_neighbor_images"][0, 0], train[5])


def test_identical_images_share_a_hash_and_different_ones_mostly_do_not(real):
    train = to_uint8(real)
    train[40] = train[3]  # a planted duplicate inside the "dataset"
    result = memorization.run_dedup(samples_uint8=train[[3, 10, 20]], train_uint8=train, epochs=2, seed=0)
    np.testing.assert_array_equal(result["nearest_hamming"], 0)  # each sample is in the training set
    assert result["samples_matching_train"] == 3
    assert [3, 40] in result["train_duplicate_pairs"].tolist()
    assert result["distinct_train_codes"] > 32  # the hash separates most distinct images
    codes = np.unpackbits(result["train_codes"], axis=1)
    np.testing.assert_array_equal(codes[3], codes[40])
    assert codes.shape == (64, memorization.HASH_BITS)


def test_hamming_distances_and_duplicate_pairs():
    codes = np.array([[1, 0, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(memorization.hamming_distances(codes[:1], codes), [[0, 0, 2, 1]])
    assert memorization.duplicate_pairs(codes).tolist() == [[0, 1]]
    assert memorization.duplicate_pairs(codes, max_hamming=1).tolist() == [[0, 1], [0, 3], [1, 3]]


def test_hash_inputs_are_32x32_centre_crops():
    images = np.zeros((2, 40, 64, 1), np.uint8)
    images[:, :, 12:52] = 255  # the centre 40x40 square is white, the sides black
    x = memorization.hash_inputs(images)
    assert x.shape == (2, 32 * 32) and np.all(x == 1.0)


# ---------------------------------------------------------------------------------------------------------
# Figures.


def test_draw_text_draws_the_glyph():
    canvas = np.zeros((5, 3, 3), np.uint8)
    figures.draw_text(canvas, "7", 0, 0)
    np.testing.assert_array_equal(canvas[..., 0] > 0, [[1, 1, 1], [0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0]])
    assert figures.text_size("12", scale=2) == (10, 14)


# ---------------------------------------------------------------------------------------------------------
# The command: python -m dcgan_tf.explore SUBCOMMAND.


def explore_run(subcommand, **options):
    options.setdefault("bn_samples", 0)  # the trained moving averages: no re-estimation, for speed
    return explore.run(subcommand, explore.Options(**options))


def test_every_subcommand_writes_its_figure_and_numbers(gan, run_dir, tmp_path):
    src = {"model_dir": run_dir}
    out = {}
    out["sheet"] = explore_run("sheet", **src, num=16)
    out["interpolate"] = explore_run("interpolate", **src, rows=2, steps=5)
    out["arithmetic"] = explore_run("arithmetic", **src, a=[0, 1, 2], b=[3, 4, 5], c=[6, 7, 8])
    out["walk"] = explore_run("walk", **src, from_=[0, 1], to=[2, 3], rows=2, steps=4)
    out["concept-filters"] = explore_run("concept-filters", **src, num=32)
    out["ablate"] = explore_run("ablate", **src, num=4)
    out["visualize-d"] = explore_run("visualize-d", **src, num_real=64, features=2, top=2)
    out["neighbors"] = explore_run("neighbors", **src, num=3, num_real=64, k=2)
    out["dedup"] = explore_run("dedup", **src, num=16, num_real=64, ae_epochs=1)
    for name, summary in out.items():
        assert summary["png"] == os.path.join(run_dir, "explore", name + ".png")
        assert read_png(summary["png"]).shape[-1] == 3
        with np.load(summary["npz"]) as data:
            assert str(data["subcommand"]) == name and int(data["seed"]) == 0
    with np.load(out["sheet"]["npz"]) as sheet, np.load(out["arithmetic"]["npz"]) as arithmetic:
        np.testing.assert_array_equal(sheet["z"], gan.sample_z(16, 0).numpy())
        np.testing.assert_allclose(arithmetic["mean_b"], sheet["z"][3:6].mean(0), atol=1e-6)
    with np.load(out["ablate"]["npz"]) as ablate, np.load(out["concept-filters"]["npz"]) as concept:
        np.testing.assert_array_equal(ablate["filters"], concept["filters"])  # ablate reads concept-filters
    # A person's mask file: masks over some sheet samples, by index.
    with np.load(out["sheet"]["npz"]) as sheet:
        masks = ablation.synthetic_masks(sheet["images"][4:16])
    np.savez(tmp_path / "masks.npz", indices=np.arange(4, 16), masks=masks)
    by_file = explore_run("concept-filters", **src, masks=str(tmp_path / "masks.npz"), out=str(tmp_path / "c"))
    with np.load(by_file["npz"]) as concept, np.load(out["sheet"]["npz"]) as sheet:
        np.testing.assert_array_equal(concept["masks"], masks)
        np.testing.assert_array_equal(concept["z"], sheet["z"][4:16])
    with np.load(out["neighbors"]["npz"]) as neighbors:
        assert neighbors["pixel_distances"].shape == (3, 2) and "dfeature_indices" in neighbors


def test_outputs_are_deterministic(run_dir, tmp_path):
    first = explore_run("interpolate", model_dir=run_dir, rows=2, steps=3, out=str(tmp_path / "a"))
    second = explore_run("interpolate", model_dir=run_dir, rows=2, steps=3, out=str(tmp_path / "b"))
    with open(first["png"], "rb") as f, open(second["png"], "rb") as g:
        assert f.read() == g.read()


def test_export_and_server_give_the_same_samples_as_the_run(gan, run_dir, tmp_path):
    """--export_dir and --server (serving.local_server in-process) draw the same images as --model_dir."""
    from dcgan_tf import export
    from serving import dev_server as local_server

    base = str(tmp_path / "export")
    export.export_generator(gan, CONFIG, base, version=1, bn_samples=256)  # explore_run's --bn_samples
    reference = explore_run("sheet", model_dir=run_dir, num=4, out=str(tmp_path / "run"), bn_samples=256)
    core = local_server.ModelServer([local_server.ServedModel("dcgan", base)])
    core.poll_all()
    server, port = local_server.start_grpc_server(core, "127.0.0.1", 0, 2, 64)
    try:
        via_export = explore_run("sheet", export_dir=base, num=4, out=str(tmp_path / "export_sheet"))
        via_server = explore_run("sheet", server=f"127.0.0.1:{port}", num=4, out=str(tmp_path / "server_sheet"))
    finally:
        server.stop(None)
    with np.load(reference["npz"]) as ref:
        for summary in (via_export, via_server):
            with np.load(summary["npz"]) as data:
                np.testing.assert_array_equal(data["z"], ref["z"])
                np.testing.assert_allclose(data["images"], ref["images"], atol=1e-5)
        # Re-estimated BatchNorm statistics (as exported) are not the trained moving averages.
        assert not np.allclose(ref["images"], gan.generator(ref["z"], training=False).numpy(), atol=1e-3)
    export_gen = sources.from_export_dir(base)
    assert (export_gen.nz, export_gen.z_dist, export_gen.config.dataset) == (NZ, "uniform", "synthetic")
    with pytest.raises(sources.SourceError, match="--model_dir"):
        explore_run("ablate", export_dir=base, filters=[0])


def test_server_z_dist_is_the_served_models_own(tmp_path):
    """A generator trained with --z_dist=normal, served: explore --server draws normal z without being told."""
    from dcgan_tf import export
    from serving import dev_server as local_server

    config = CONFIG.replace(z_dist="normal")
    keras.utils.set_random_seed(0)
    base = str(tmp_path / "export")
    export.export_generator(build_gan(config), config, base, version=1, bn_samples=64)
    core = local_server.ModelServer([local_server.ServedModel("dcgan", base)])
    core.poll_all()
    server, port = local_server.start_grpc_server(core, "127.0.0.1", 0, 2, 64)
    try:
        assert explore.served_z_dist(f"127.0.0.1:{port}", "dcgan") == "normal"
        summary = explore_run("sheet", server=f"127.0.0.1:{port}", num=64, out=str(tmp_path / "sheet"))
        with pytest.raises(explore.ExploreError, match="cannot ask .* for model 'other'"):
            explore_run("sheet", server=f"127.0.0.1:{port}", model_name="other", out=str(tmp_path / "x"))
    finally:
        server.stop(None)
    with np.load(summary["npz"]) as data:
        assert str(data["z_dist"]) == "normal"
        np.testing.assert_array_equal(data["z"], latent.sample_z(64, NZ, 0, "normal", latent.STREAM_SHEET))
        assert np.abs(data["z"]).max() > 1


def test_clear_errors(run_dir, tmp_path):
    with pytest.raises(explore.ExploreError, match="exactly one of"):
        explore_run("sheet")
    with pytest.raises(explore.ExploreError, match="no sheet"):
        explore_run("arithmetic", model_dir=run_dir, sheet=str(tmp_path / "missing.npz"), a=[0], b=[1], c=[2])
    with pytest.raises(explore.ExploreError, match="unknown subcommand"):
        explore_run("bogus", model_dir=run_dir)
    with pytest.raises(explore.ExploreError, match="--a=i,j,k is required"):
        explore_run("arithmetic", model_dir=run_dir)
    with pytest.raises(sources.SourceError, match="does not exist"):
        explore_run("sheet", export_dir=str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------------------------------------
# Projection: z of a person's images, then the latent-space commands on them.


def test_projection_recovers_planted_images_and_keeps_z_in_its_support(gen):
    from dcgan_tf.experiments import projection

    generator, discriminator = gen.networks
    planted = latent.sample_z(6, NZ, seed=11, z_dist="uniform")
    targets = generator(planted, training=False).numpy()
    result = projection.project(generator, discriminator, targets, NZ, "uniform", starts=3, steps=150,
                                learning_rate=0.5, feature_weight=0.1, seed=0)  # a large lr: clipping must hold
    assert np.abs(result["z"]).max() <= 1.0
    baseline = projection.random_search(generator, targets, NZ, "uniform", num=200)
    # Far better than the best of 200 random z, and the best start is the one kept.
    assert result["pixel_mse"].mean() < 0.25 * baseline["random_mse"].mean()
    np.testing.assert_array_equal(result["best_start"], np.argmin(result["start_losses"], axis=1))
    np.testing.assert_allclose(result["losses"], result["start_losses"].min(axis=1), rtol=1e-6)
    np.testing.assert_allclose(result["reconstructions"], generator(result["z"], training=False).numpy(), atol=1e-6)
    assert result["curve"].shape == (6, 150) and np.all(result["curve"][:, -1] <= result["curve"][:, 0])
    # The random search's MSE is the true MSE of the z it keeps.
    check = np.mean((generator(baseline["random_z"], training=False).numpy() - targets) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(baseline["random_mse"], check, rtol=1e-4, atol=1e-6)


def test_project_command_then_interpolate_arithmetic_walk_on_the_projected_z(gan, run_dir, real, tmp_path):
    from dcgan_tf.images import write_png

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):  # real images at another size (24x24), RGB: decoded like a folder dataset
        image = np.repeat(to_uint8(real[i]), 3, axis=-1)
        write_png(str(folder / f"photo{i}.png"), np.kron(image[:12, :12], np.ones((2, 2, 1), np.uint8)))
    write_png(str(tmp_path / "extra.png"), to_uint8(real[5]))
    summary = explore_run("project", model_dir=run_dir, images=[str(folder), str(tmp_path / "extra.png")],
                          starts=2, project_steps=30, random_z=100, out=str(tmp_path / "project"))
    assert summary["images"] == 4 and summary["seconds_per_image"] > 0
    assert "mean_pixel_mse_best_of_100_random_z" in summary
    with np.load(summary["npz"]) as data:
        assert list(data["names"]) == ["photo0.png", "photo1.png", "photo2.png", "extra.png"]
        assert data["z"].shape == (4, NZ) and data["losses"].shape == (4,) and np.abs(data["z"]).max() <= 1
        assert data["targets"].shape == (4, 16, 16, 1)
        z = data["z"]
    figure = read_png(summary["png"])
    assert figure.shape[-1] == 3 and figure.shape[1] > 2 * 16  # target | reconstruction, upscaled
    npz = summary["npz"]
    walks = explore_run("interpolate", model_dir=run_dir, z=npz, steps=4, out=str(tmp_path / "i"))
    with np.load(walks["npz"]) as data:
        assert data["z"].shape == (3, 4, NZ)  # image i to i+1
        np.testing.assert_array_equal(data["z"][:, 0], z[:-1])
        np.testing.assert_array_equal(data["z"][:, -1], z[1:])
    arithmetic = explore_run("arithmetic", model_dir=run_dir, z=npz, a=[0], b=[1], c=[2], out=str(tmp_path / "a"))
    with np.load(arithmetic["npz"]) as data:
        np.testing.assert_allclose(data["y"], z[0] - z[1] + z[2], atol=1e-6)
    explore_run("walk", model_dir=run_dir, z=npz, from_=[0], to=[3], rows=2, steps=3, out=str(tmp_path / "w"))


def test_project_bad_inputs(gan, run_dir, tmp_path):
    with pytest.raises(explore.ExploreError, match="project needs --images"):
        explore_run("project", model_dir=run_dir)
    with pytest.raises(ValueError, match="neither an image file nor a folder"):
        explore_run("project", model_dir=run_dir, images=[str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .jpg/.png"):
        explore_run("project", model_dir=run_dir, images=[str(tmp_path / "empty")])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        explore_run("project", model_dir=run_dir, images=[str(tmp_path / "bad.png")])
    np.savez(tmp_path / "wrong.npz", z=np.zeros((2, NZ + 1), np.float32))
    with pytest.raises(explore.ExploreError, match=r"shape \[2, 9\] but the model takes \[N, 8\]"):
        explore_run("interpolate", model_dir=run_dir, z=str(tmp_path / "wrong.npz"))
    np.savez(tmp_path / "one.npz", z=np.zeros((1, NZ), np.float32))
    with pytest.raises(explore.ExploreError, match="at least two projected images"):
        explore_run("interpolate", model_dir=run_dir, z=str(tmp_path / "one.npz"))
    with pytest.raises(explore.ExploreError, match="no such file"):
        explore_run("walk", model_dir=run_dir, z=str(tmp_path / "none.npz"), from_=[0], to=[1])
