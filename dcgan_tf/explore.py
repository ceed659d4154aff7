"""The paper's experiments on a trained generator: `python -m dcgan_tf.explore SUBCOMMAND --model_dir=RUN ...`.

Subcommands (each writes OUT.png, a figure, and OUT.npz, the numbers behind it; seeded and deterministic):
  sheet            numbered samples and their z, to pick exemplars by index
  interpolate      walks between random pairs of z (Fig. 4)
  arithmetic       vector arithmetic on the mean z of exemplars: --a=i,j,k --b=... --c=... (Fig. 7)
  walk             an attribute vector added in steps to random samples: --from=... --to=... (Fig. 8)
  concept-filters  logistic regression finding the generator filters that draw a masked concept (Fig. 6)
  ablate           samples with chosen filters dropped at every position (Fig. 6)
  visualize-d      guided backprop of D's last-layer features, trained D beside random D (Fig. 5)
  neighbors        nearest training images of samples in pixel and D-feature space
  dedup            semantic-hashing autoencoder counting near-duplicates (section 4.1.1)
  project          z of your own images (--images=a.png,b.png or a folder) by optimisation: project.npz, whose
                   --z=project.npz interpolate, arithmetic and walk then use
The model is a training run (--model_dir), a SavedModel export (--export_dir) or a TF Serving server
(--server=host:port); concept-filters, ablate, visualize-d and project need --model_dir.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import dataclasses
import json
import os
import sys
from typing import Callable

import keras
import numpy as np
from absl import app, flags, logging

from dcgan_tf import checkpointing, cli, input_pipeline
from dcgan_tf.config import Config, ConfigError
from dcgan_tf.evaluation.data import load_real_images
from dcgan_tf.experiments import ablation, dviz, figures, latent, memorization, projection, sources
from dcgan_tf.export import DEFAULT_BN_SAMPLES
from dcgan_tf.files import atomic_write
from dcgan_tf.images import to_uint8, write_png


@dataclasses.dataclass
class Options:
    """Every setting of an explore command; one --flag each (`--from` is `from_`)."""

    # Where the model comes from: exactly one of model_dir, export_dir, server.
    model_dir: str | None = None  # training run directory (config.json + checkpoints/); latest checkpoint
    export_dir: str | None = None  # SavedModel export: the base dir (latest numeric version) or one version
    server: str | None = None  # host:port of a TF Serving gRPC endpoint serving the exported generator
    model_name: str = "dcgan"  # --server: the served model's name
    nz: int = 0  # --server: the served generator's latent size (0: ask the server's metadata)
    z_dist: str | None = None  # --server/--export_dir: "uniform" or "normal" (default: the model's, else uniform)
    dataset: str | None = None  # real images for visualize-d/neighbors/dedup (default: the run's dataset)
    data_dir: str | None = None  # TFDS data_dir of --dataset (default: the run's)
    # Outputs and common settings.
    out: str | None = None  # output path prefix: OUT.png and OUT.npz (default: MODEL_DIR/explore/SUBCOMMAND)
    seed: int = 0  # seed of every random draw (z, noise, random filters, random D, autoencoder)
    batch_size: int = 64  # z per generator call
    bn_samples: int = DEFAULT_BN_SAMPLES  # --model_dir: re-estimate G's BatchNorm from this many z like the export
    g_ema: bool | None = None  # --model_dir: true = G's EMA, false = the raw G (default: the run's own choice)
    num: int | None = None  # samples: sheet 64, concept-filters 150, ablate 8, neighbors 8, dedup 1000
    cols: int = 0  # sheet: columns of the grid (0 = square)
    rows: int = 8  # interpolate: number of z pairs; walk: number of random samples
    steps: int = 10  # interpolate/walk: points per row, both ends included
    method: str = "linear"  # interpolate: "linear" (paper) or "spherical" (slerp)
    sheet: str | None = None  # arithmetic/walk/masks: the sheet .npz the indices refer to (default: sheet's output)
    a: list[int] | None = None  # arithmetic: sheet indices of concept A's exemplars (paper: 3)
    b: list[int] | None = None  # arithmetic: sheet indices of concept B's exemplars
    c: list[int] | None = None  # arithmetic: sheet indices of concept C's exemplars
    noise: float = 0.25  # arithmetic: Y's 8 neighbours are Y + uniform noise in [-noise, noise] (paper: 0.25)
    from_: list[int] | None = None  # walk: sheet indices of exemplars without the attribute (paper: 4)
    to: list[int] | None = None  # walk: sheet indices of exemplars with the attribute (paper: 4)
    scale: float = 1.0  # walk: the attribute vector is added with weights from 0 to scale
    masks: str = "synthetic"  # concept-filters: "synthetic" (a synthetic-data run) or an .npz of masks
    layer: str | None = None  # concept-filters/ablate: generator layer (default: paper 6.3.1, 16x16x256 at 64x64)
    penalty: str = "l1"  # concept-filters: logistic-regression penalty, "l1" (sparse weights) or "l2"
    C: float = 0.1  # concept-filters: inverse regularisation strength of the logistic regression
    filters: list[int] | None = None  # ablate: filters to drop (default: those in --concept)
    concept: str | None = None  # ablate: a concept-filters .npz whose filters to drop (default: its output)
    features: int = 6  # visualize-d: the first K features of D's last conv layer (paper: 6)
    top: int = 4  # visualize-d: top-activating real images per feature
    num_real: int | None = None  # real images searched: visualize-d 1000, neighbors 10000, dedup 10000
    k: int = 3  # neighbors: nearest training images per sample
    max_hamming: int = 0  # dedup: codes at most this many bits apart are duplicates (0: equal codes)
    ae_epochs: int = 20  # dedup: training epochs of the hashing autoencoder
    bits: int = memorization.HASH_BITS  # dedup: code length (paper: 128)
    # project, and the z of projected images in the latent-space commands.
    images: list[str] | None = None  # project: image files and/or folders of images to find z for
    starts: int = 4  # project: random starts per image, optimised together; the lowest final loss is kept
    project_steps: int = 500  # project: Adam steps per start
    project_lr: float = 0.1  # project: Adam's learning rate on z
    feature_weight: float = 0.1  # project: weight of the loss on D's conv features (0: pixel loss only)
    random_z: int = 1000  # project: baseline, the best pixel MSE among this many random z (0: skip)
    z: str | None = None  # interpolate/arithmetic/walk: a project.npz whose z to use (interpolate: image i to
                          # i+1; arithmetic/walk: indices are its images, instead of the sheet's)


ENUM_FIELDS = {"z_dist": ["uniform", "normal"], "method": ["linear", "spherical"], "penalty": ["l1", "l2"]}


class ExploreError(RuntimeError):
    """A command line that cannot work; the message names the fix."""


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the subcommands.


def open_generator(opts: Options) -> sources.Generator:
    """The model named by exactly one of --model_dir, --export_dir, --server."""
    given = [name for name in ("model_dir", "export_dir", "server") if getattr(opts, name)]
    if len(given) != 1:
        raise ExploreError(f"name the model with exactly one of --model_dir, --export_dir, --server (got {given})")
    if opts.model_dir:
        return sources.from_model_dir(opts.model_dir, opts.batch_size, opts.bn_samples, g_ema=opts.g_ema)
    if opts.export_dir:
        return sources.from_export_dir(opts.export_dir, opts.z_dist, opts.batch_size)
    z_dist = opts.z_dist or served_z_dist(opts.server, opts.model_name, opts.nz)
    return sources.from_server(opts.server, opts.nz, z_dist, opts.model_name, opts.batch_size)


# z values asked from a served model's own sampler to tell its distribution. Each value of a standard normal z
# falls outside [-1, 1] with probability 0.317, so a normal z keeps all 1,000 inside with probability < 1e-160.
_Z_PROBE_VALUES = 1000


def served_z_dist(address: str, model_name: str, nz: int = 0, timeout_s: float = 60.0) -> str:
    """The z distribution a served generator was trained with, from the z its `sample` signature draws.

    TF Serving's metadata holds only the signatures, and the export's config asset stays on the server's disk;
    the `sample` signature draws z exactly as training did (DCGAN.sample_z), from U[-1, 1] or N(0, 1).
    """
    import grpc

    from serving import client  # the repository's client; needs tensorflow-serving-api and grpcio

    stub = client.make_stub(address)
    try:
        metadata = client.get_metadata(stub, model_name, timeout=timeout_s)
        if "z" not in metadata["signature_def"].get(client.SAMPLE_SIGNATURE, {}).get("outputs", {}):
            raise ExploreError(
                f"the model {model_name!r} at {address} has no {client.SAMPLE_SIGNATURE!r} signature returning z, so "
                "its z distribution cannot be read from it: pass --z_dist=uniform or --z_dist=normal (the run's "
                "config.json, or the export's assets/dcgan_config.json, says which)")
        nz = nz or sources.served_nz(metadata)
        _, z = client.sample(stub, -(-_Z_PROBE_VALUES // nz), seed=0, model=model_name, timeout=timeout_s)
    except (grpc.RpcError, client.ClientError) as e:
        details = f"{e.code().name} {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        raise ExploreError(f"cannot ask {address} for model {model_name!r}'s z distribution: {details}. Is the server "
                           "running and the --model_name right? (Or pass --z_dist.)") from None
    z_dist = "uniform" if np.all(np.abs(z) <= 1.0) else "normal"
    logging.info("The model served at %s draws z from the %s distribution (its sample signature).", address, z_dist)
    return z_dist


def out_dir(opts: Options) -> str:
    """The default output folder: MODEL_DIR/explore for a run, ./explore otherwise."""
    return os.path.join(opts.model_dir, "explore") if opts.model_dir else "explore"


def num_or(opts: Options, default: int) -> int:
    """--num, or this subcommand's default."""
    value = opts.num if opts.num is not None else default
    if value <= 0:
        raise ExploreError(f"--num={value} must be positive")
    return value


def required(opts: Options, field: str) -> list[int]:
    """A list option that the subcommand cannot do without."""
    values = getattr(opts, field)
    if not values:
        raise ExploreError(f"--{cli.flag_name(field)}=i,j,k is required (indices from the sheet)")
    return list(values)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed atomically (temporary file + rename)."""
    with atomic_write(path, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez_compressed(f, **arrays)


def write_outputs(opts: Options, subcommand: str, figure: np.ndarray, arrays: dict[str, np.ndarray],
                  gen: sources.Generator) -> dict:
    """Write OUT.png and OUT.npz (recording the subcommand, seed and model); their paths."""
    prefix = opts.out or os.path.join(out_dir(opts), subcommand)
    arrays = dict(arrays, subcommand=np.str_(subcommand), seed=np.int64(opts.seed), source=np.str_(gen.description))
    write_png(prefix + ".png", figure)
    write_npz(prefix + ".npz", arrays)
    return {"png": prefix + ".png", "npz": prefix + ".npz"}


def load_sheet(opts: Options, gen: sources.Generator) -> np.ndarray:
    """The z [N, nz] that exemplar indices refer to: --z's projected images, else the sheet's samples."""
    if opts.z:
        return load_projected_z(opts, gen)
    path = opts.sheet or os.path.join(out_dir(opts), "sheet.npz")
    if not os.path.exists(path):
        raise ExploreError(f"no sheet at {path}: run `python -m dcgan_tf.explore sheet` with the same model first, "
                           "or pass --sheet=PATH.npz")
    z = np.load(path)["z"]
    if z.shape[1] != gen.nz:
        raise ExploreError(f"the sheet {path} has z of size {z.shape[1]} but the model takes {gen.nz}: "
                           "make a sheet with this model")
    return z


def load_projected_z(opts: Options, gen: sources.Generator) -> np.ndarray:
    """The z [N, nz] of --z=project.npz (written by `project`), checked against the model."""
    if not os.path.exists(opts.z):
        raise ExploreError(f"--z={opts.z}: no such file; run `python -m dcgan_tf.explore project --images=...` first")
    with np.load(opts.z) as data:
        if "z" not in data:
            raise ExploreError(f"--z={opts.z} has no 'z' array (it has {sorted(data.keys())}): pass a project.npz")
        z = np.asarray(data["z"], np.float32)
    if z.ndim != 2 or z.shape[1] != gen.nz:
        raise ExploreError(f"--z={opts.z} holds z of shape {list(z.shape)} but the model takes [N, {gen.nz}]: "
                           "project the images with this model")
    return z


def real_images(opts: Options, gen: sources.Generator, num: int, shape: tuple[int, ...]) -> np.ndarray:
    """The first `num` training images (file order) in [-1, 1], of the run's dataset or --dataset at `shape`."""
    config = gen.config
    if config is None:
        if not opts.dataset:
            raise ExploreError(f"{gen.description} does not say which data it was trained on: pass --dataset "
                               "(and --data_dir) or use --model_dir")
        config = Config(dataset=opts.dataset, image_size=shape[-2], channels=shape[-1])
    overrides = {k: getattr(opts, k) for k in ("dataset", "data_dir") if getattr(opts, k)}
    return load_real_images(config.replace(**overrides), num, download=False)


# ---------------------------------------------------------------------------------------------------------
# Subcommands: each writes its outputs and returns a JSON-able summary (paths and headline numbers).


def cmd_sheet(opts: Options, gen: sources.Generator) -> dict:
    """Numbered samples with their z."""
    result = latent.run_sheet(gen.generate, gen.nz, num_or(opts, 64), opts.seed, gen.z_dist)
    return write_outputs(opts, "sheet", figures.sheet_figure(result, opts.cols or None), result, gen)


def cmd_interpolate(opts: Options, gen: sources.Generator) -> dict:
    """Walks between random pairs of z."""
    if opts.z:  # projected images: a walk from each to the next
        z = load_projected_z(opts, gen)
        if len(z) < 2:
            raise ExploreError(f"--z={opts.z} holds {len(z)} z; interpolation needs at least two projected images")
        result = latent.run_interpolate_between(gen.generate, z[:-1], z[1:], opts.steps, opts.method)
    else:
        result = latent.run_interpolate(gen.generate, gen.nz, opts.rows, opts.steps, opts.seed, gen.z_dist,
                                        opts.method)
    return write_outputs(opts, "interpolate", figures.interpolation_figure(result), result, gen)


def cmd_arithmetic(opts: Options, gen: sources.Generator) -> dict:
    """Y = A - B + C on exemplar means."""
    a, b, c = required(opts, "a"), required(opts, "b"), required(opts, "c")
    z = load_sheet(opts, gen)
    result = latent.run_arithmetic(gen.generate, z, gen.generate(z), a, b, c, opts.noise, opts.seed)
    return write_outputs(opts, "arithmetic", figures.arithmetic_figure(result), result, gen)


def cmd_walk(opts: Options, gen: sources.Generator) -> dict:
    """An attribute vector added in steps to random samples."""
    source, target = required(opts, "from_"), required(opts, "to")
    z = load_sheet(opts, gen)
    result = latent.run_walk(gen.generate, z, source, target, opts.rows, opts.steps, opts.seed, gen.z_dist,
                             opts.scale)
    return write_outputs(opts, "walk", figures.walk_figure(result), result, gen)


def concept_samples(opts: Options, gen: sources.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(z, masks) of the concept: synthetic shape masks of sheet samples, or a person's mask file."""
    if opts.masks == "synthetic":
        if gen.config is None or gen.config.dataset != "synthetic":
            raise ExploreError("--masks=synthetic needs a run trained on --dataset=synthetic; for other data make "
                               "an .npz with masks [N,S,S] (bool) and indices [N] into a sheet, pass --masks=FILE")
        z = latent.sample_z(num_or(opts, 150), gen.nz, opts.seed, gen.z_dist, latent.STREAM_SHEET)
        return z, ablation.synthetic_masks(gen.generate(z))
    if not os.path.exists(opts.masks):
        raise ExploreError(f"--masks={opts.masks}: no such file (use 'synthetic' or an .npz)")
    data = np.load(opts.masks)
    if "masks" not in data or not ("z" in data or "indices" in data):
        raise ExploreError(f"{opts.masks} needs 'masks' [N,S,S] and either 'z' [N,nz] or 'indices' [N] into "
                           f"the sheet; it has {sorted(data.keys())}")
    z = data["z"] if "z" in data else load_sheet(opts, gen)[data["indices"]]
    masks = data["masks"].astype(bool)
    if masks.ndim == 4 and masks.shape[-1] == 1:  # [N, S, S, 1], as images are stored
        masks = masks[..., 0]
    if masks.ndim != 3 or len(masks) != len(z):
        raise ExploreError(f"{opts.masks}: masks {masks.shape} must be [N, S, S] with one mask per z ({len(z)})")
    return z.astype(np.float32), masks


def cmd_concept_filters(opts: Options, gen: sources.Generator) -> dict:
    """Fit the filters of a masked concept."""
    generator, _ = gen.require_networks("concept-filters")
    z, masks = concept_samples(opts, gen)
    result = ablation.run_concept_filters(generator, z, masks, opts.layer, opts.penalty, opts.C, opts.seed)
    paths = write_outputs(opts, "concept-filters", figures.concept_figure(result), result, gen)
    return dict(paths, filters=result["filters"].tolist(), balanced_accuracy=float(result["balanced_accuracy"]))


def cmd_ablate(opts: Options, gen: sources.Generator) -> dict:
    """Samples with chosen filters dropped."""
    generator, _ = gen.require_networks("ablate")
    filters, layer = list(opts.filters or []), opts.layer
    if not filters:
        path = opts.concept or os.path.join(out_dir(opts), "concept-filters.npz")
        if not os.path.exists(path):
            raise ExploreError(f"say which filters to drop: --filters=i,j,... or --concept=FILE.npz from "
                               f"concept-filters (none at {path})")
        concept = np.load(path)
        filters, layer = concept["filters"].tolist(), layer or str(concept["layer"])
    z = latent.sample_z(num_or(opts, 8), gen.nz, opts.seed, gen.z_dist, latent.STREAM_ABLATE)
    result = ablation.run_ablation(generator, z, filters, layer, opts.seed)
    summary = {"filters": filters, "change": float(result["change"]), "change_control": float(result["change_control"])}
    if gen.config is not None and gen.config.dataset == "synthetic":  # the shapes can be measured: how much is left
        for key in ("before", "after", "control"):
            result[f"foreground_{key}"] = np.float32(ablation.synthetic_masks(result[f"images_{key}"]).mean())
            summary[f"foreground_{key}"] = round(float(result[f"foreground_{key}"]), 4)
    return dict(write_outputs(opts, "ablate", figures.ablation_figure(result), result, gen), **summary)


def cmd_visualize_d(opts: Options, gen: sources.Generator) -> dict:
    """Guided backprop of D's features, trained vs random."""
    _, discriminator = gen.require_networks("visualize-d")
    images = real_images(opts, gen, opts.num_real or 1000, ())
    random_d = dviz.random_discriminator(gen.config, opts.seed)
    result = dviz.run_visualize_d(discriminator, random_d, images, opts.features, opts.top)
    return write_outputs(opts, "visualize-d", figures.dviz_figure(result), result, gen)


def cmd_neighbors(opts: Options, gen: sources.Generator) -> dict:
    """Nearest training images of samples."""
    z = latent.sample_z(num_or(opts, 8), gen.nz, opts.seed, gen.z_dist, latent.STREAM_MEMORIZATION)
    samples = gen.generate(z)
    train = real_images(opts, gen, opts.num_real or 10000, samples.shape)
    discriminator = gen.networks[1] if gen.networks else None
    if discriminator is None:
        logging.info("No discriminator with %s: nearest neighbours in pixel space only.", gen.description)
    result = memorization.run_neighbors(samples, train, opts.k, discriminator)
    result["z"] = z
    paths = write_outputs(opts, "neighbors", figures.neighbors_figure(result), result, gen)
    return dict(paths, nearest_pixel_distances=[round(float(d), 4) for d in result["pixel_distances"][:, 0]])


def cmd_dedup(opts: Options, gen: sources.Generator) -> dict:
    """Semantic-hashing near-duplicate counts."""
    z = latent.sample_z(num_or(opts, 1000), gen.nz, opts.seed, gen.z_dist, latent.STREAM_MEMORIZATION)
    samples = to_uint8(gen.generate(z))
    train = to_uint8(real_images(opts, gen, opts.num_real or 10000, samples.shape))  # exact: data was uint8
    result = memorization.run_dedup(samples, train, opts.max_hamming, opts.ae_epochs, opts.bits, opts.seed)
    paths = write_outputs(opts, "dedup", figures.dedup_figure(result, samples, train), result, gen)
    keys = ("samples_matching_train", "num_samples", "num_train", "train_images_in_duplicates",
            "distinct_train_codes", "distinct_sample_codes", "dead_bits", "autoencoder_loss")
    return dict(paths, train_duplicate_pairs=len(result["train_duplicate_pairs"]),
                sample_duplicate_pairs=len(result["sample_duplicate_pairs"]),
                **{k: result[k].item() for k in keys})


def cmd_project(opts: Options, gen: sources.Generator) -> dict:
    """z of the user's images by optimisation (pixel + D-feature loss, several starts), with a random-z baseline."""
    generator, discriminator = gen.require_networks("project")
    if not opts.images:
        raise ExploreError("project needs --images=a.png,b.png or --images=FOLDER (the images to find z for)")
    paths = projection.image_paths(list(opts.images))
    size, channels = int(generator.output_shape[1]), int(generator.output_shape[-1])
    targets = projection.load_images(paths, size, channels)
    result = projection.project(generator, discriminator, targets, gen.nz, gen.z_dist, opts.starts,
                                opts.project_steps, opts.project_lr, opts.feature_weight, opts.seed)
    if opts.random_z > 0:
        result.update(projection.random_search(generator, targets, gen.nz, gen.z_dist, opts.random_z, opts.seed))
    result["names"] = np.array([os.path.basename(p) for p in paths])
    result["paths"] = np.array(paths)
    summary = {"images": len(paths), "seconds_per_image": round(float(result["seconds"]) / len(paths), 3),
               "pixel_mse": [round(float(v), 5) for v in result["pixel_mse"]],
               "mean_pixel_mse": round(float(result["pixel_mse"].mean()), 5)}
    if opts.random_z > 0:
        summary[f"mean_pixel_mse_best_of_{opts.random_z}_random_z"] = round(float(result["random_mse"].mean()), 5)
    return dict(write_outputs(opts, "project", figures.projection_figure(result), result, gen), **summary)


SUBCOMMANDS: dict[str, Callable[[Options, sources.Generator], dict]] = {
    "sheet": cmd_sheet,
    "interpolate": cmd_interpolate,
    "arithmetic": cmd_arithmetic,
    "walk": cmd_walk,
    "concept-filters": cmd_concept_filters,
    "ablate": cmd_ablate,
    "visualize-d": cmd_visualize_d,
    "neighbors": cmd_neighbors,
    "dedup": cmd_dedup,
    "project": cmd_project,
}


def run(subcommand: str, opts: Options) -> dict:
    """Run one subcommand; its summary (output paths and headline numbers)."""
    if subcommand not in SUBCOMMANDS:
        raise ExploreError(f"unknown subcommand {subcommand!r}; use one of {', '.join(SUBCOMMANDS)}")
    for name, choices in ENUM_FIELDS.items():
        if getattr(opts, name) is not None and getattr(opts, name) not in choices:
            raise ExploreError(f"--{name}={getattr(opts, name)!r} must be one of {choices}")
    keras.utils.set_random_seed(opts.seed)  # anything not drawn from an explicit stateless seed
    return SUBCOMMANDS[subcommand](opts, open_generator(opts))


# ---------------------------------------------------------------------------------------------------------
# Command line: one flag per Options field, its help text the field's comment above (see dcgan_tf/cli.py).

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define one absl flag per Options field."""
    cli.define_flags(Options, choices=ENUM_FIELDS)


def main(argv: list[str]) -> None:
    """CLI entry point: argv[1] is the subcommand."""
    from dcgan_tf import startup

    startup.log_devices()
    if len(argv) != 2:
        raise app.UsageError(f"give one subcommand ({', '.join(SUBCOMMANDS)}) and --flags; got {argv[1:]}")
    try:
        summary = run(argv[1], cli.read_flags(Options, FLAGS))
    except (ExploreError, sources.SourceError, checkpointing.CheckpointError, input_pipeline.DatasetError,
            ConfigError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
