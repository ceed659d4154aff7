"""Images by seed: `python -m dcgan_tf.generate --model_dir=RUN --seeds=0-99,200,311 --outdir=out`.

One PNG per seed (`seed0042.png`) and `z.npz` (the z used and the seeds) in --outdir; --grid adds `grid.png`,
one sheet with each image's seed on it. The model is a training run (--model_dir: G's EMA unless the run or
--g_ema=false says the raw G; --checkpoint_step picks a checkpoint), a serving export (--export_dir: its
`sample_seeds` signature) or a running server (--server=HOST:PORT over gRPC, --server=http://HOST:PORT over
REST). z of seed s is `DCGAN.sample_z(1, s)` everywhere (what the export's `sample_seeds` draws), and a run's
generator gets its BatchNorm statistics re-estimated exactly as the export does, so a seed gives the same
pixels from all three.

--truncation=PSI (0 < PSI <= 1) scales every z toward the centre of its distribution (z * PSI; a uniform z
stays in [-1, 1]): smaller PSI gives more typical, cleaner images and less variety, PSI = 1 is the
untruncated distribution the generator was trained on.
"""

from __future__ import annotations

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

import collections
import dataclasses
import json
import os
import re
import sys
import time
from typing import Callable

import numpy as np
from absl import app, flags, logging

from dcgan_tf import checkpointing, cli
from dcgan_tf.export import DEFAULT_BN_SAMPLES, DEFAULT_SIGNATURE, SEEDS_SIGNATURE
from dcgan_tf.files import atomic_write
from dcgan_tf.images import to_uint8, write_png

MAX_SEEDS = 100_000  # one command's images are held in memory before they are written
SEED_LIMIT = 2**63  # seeds are int64 (the export's `seeds` input)
Z_FILE = "z.npz"
GRID_FILE = "grid.png"
PROGRESS_EVERY_S = 5.0  # at most one progress line per this many seconds (and always one at the end)
_OUTPUT_NAME = re.compile(r"^seed\d+\.png$")

# (signature, named inputs) -> named numpy outputs: one call of the model, wherever it runs.
Predict = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass
class Options:
    """Every setting of the generate command; one --flag each, its help the comment."""

    seeds: str = "0-15"  # Seeds, one image each: ranges and lists, e.g. 0-99,200,311 (ranges include both ends).
    outdir: str = "generated"  # Folder for seedNNNN.png, z.npz (and grid.png); must be empty unless --overwrite.
    overwrite: bool = False  # Write into a non-empty --outdir (replacing earlier seed PNGs, z.npz and grid.png).
    grid: bool = False  # Also write grid.png: every image on one sheet, labelled with its seed.
    truncation: float = 1.0  # z scaled toward the distribution's centre by this factor (0 < PSI <= 1): lower is
                             # cleaner and less varied; 1 = the trained distribution.
    model_dir: str | None = None  # A training run (config.json + checkpoints/).
    checkpoint_step: int = 0  # --model_dir: the checkpoint of this step (ckpt-N); 0 = the latest.
    g_ema: bool | None = None  # --model_dir: G's EMA (true) or the raw G (false); default: the run's own choice.
    bn_samples: int = DEFAULT_BN_SAMPLES  # --model_dir: re-estimate G's BatchNorm from this many z, as the export
                                          # does (so the pixels match it); 0 = the moving averages.
    export_dir: str | None = None  # A serving export: its base folder (latest version) or one version folder.
    server: str | None = None  # A running server: HOST:PORT (gRPC) or http://HOST:PORT (REST).
    model_name: str = "dcgan"  # --server: the served model's name.
    batch_size: int = 64  # Seeds per generator call or request (keep it within a server's --max_batch_size).
    timeout: float = 60.0  # --server: seconds per request.


class GenerateError(ValueError):
    """A command line that cannot work; the message names the fix."""


def parse_seeds(text: str) -> list[int]:
    """'0-99,200,311' -> [0, ..., 99, 200, 311]; a GenerateError naming the bad part otherwise."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise GenerateError(f"--seeds={text}: {part!r} is not a seed or a range; write non-negative integers "
                                "and inclusive ranges separated by commas, e.g. --seeds=0-99,200,311")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise GenerateError(f"--seeds={text}: the range {part} ends before it starts; write it as {last}-{first}")
        if last >= SEED_LIMIT:
            raise GenerateError(f"--seeds={text}: {last} is above the largest seed {SEED_LIMIT - 1} (int64)")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise GenerateError(f"--seeds={text} asks for more than {MAX_SEEDS} images in one command; split it "
                                "into several commands with different --outdir")
        seeds.extend(range(first, last + 1))
    repeated = sorted(s for s, n in collections.Counter(seeds).items() if n > 1)
    if repeated:
        raise GenerateError(f"--seeds={text} names seeds {repeated[:10]} more than once; each seed is one file, "
                            "list it once")
    return seeds


def check_truncation(psi: float) -> float:
    """PSI itself if 0 < PSI <= 1, else a GenerateError."""
    if not 0.0 < psi <= 1.0:
        raise GenerateError(f"--truncation={psi} must be in (0, 1]: 1 keeps z as trained, smaller values scale z "
                            "toward the centre (a uniform z must stay in [-1, 1])")
    return psi


def truncate(z: np.ndarray, psi: float) -> np.ndarray:
    """z scaled toward the centre (0) of the uniform [-1, 1] or normal N(0, 1) distribution: z * psi."""
    return (np.asarray(z, np.float32) * np.float32(psi)).astype(np.float32)


def check_outdir(outdir: str, overwrite: bool) -> None:
    """A GenerateError if `outdir` is a file, or a non-empty folder and not --overwrite (before any heavy work)."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise GenerateError(f"--outdir={outdir} is a file, not a folder: pass another --outdir")
    if os.path.isdir(outdir) and os.listdir(outdir) and not overwrite:
        raise GenerateError(f"--outdir={outdir} is not empty ({len(os.listdir(outdir))} entries): pass "
                            "--overwrite to write into it, or choose a new --outdir")


def seed_file(seed: int) -> str:
    """The PNG of one seed: seed0042.png (at least four digits)."""
    return f"seed{seed:04d}.png"


# ---------------------------------------------------------------------------------------------------------
# The three sources, each a Predict over TF Serving's signature names.


def run_predict(model_dir: str, checkpoint_step: int = 0, g_ema: bool | None = None,
                bn_samples: int = DEFAULT_BN_SAMPLES) -> tuple[Predict, Callable[[list[int]], np.ndarray], str]:
    """(predict answering serving_default, z of seeds, description) of a training run's output generator."""
    from dcgan_tf.experiments import sources

    config, gan = checkpointing.load_run(model_dir, g_ema=g_ema, checkpoint_step=checkpoint_step)
    step = int(gan.step.numpy())
    # from_gan runs the inference copy of G with the export's re-estimated BatchNorm (same pixels as an export).
    generator = sources.from_gan(gan, config, bn_samples=bn_samples)

    def predict(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if signature != DEFAULT_SIGNATURE:
            raise GenerateError(f"a training run answers {DEFAULT_SIGNATURE} only, not {signature}")
        return {"images": to_uint8(generator.generate(inputs["z"]))}

    def seed_z(seeds: list[int]) -> np.ndarray:
        return np.concatenate([gan.sample_z(1, s).numpy() for s in seeds]).astype(np.float32)

    return predict, seed_z, f"run {model_dir} (step {step}, {gan.output_generator_name} generator)"


def export_predict(export_dir: str) -> tuple[Predict, str]:
    """(predict over the SavedModel's own signatures, description) of an export's latest (or named) version."""
    import tensorflow as tf

    from dcgan_tf.experiments import sources

    path = sources.latest_version_dir(export_dir)
    loaded = tf.saved_model.load(path)
    missing = [name for name in (DEFAULT_SIGNATURE, SEEDS_SIGNATURE) if name not in loaded.signatures]
    if missing:
        raise GenerateError(f"{path} has no {missing} signature(s) (it has {sorted(loaded.signatures)}): export it "
                            "again with python -m dcgan_tf.export")

    def predict(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dtypes = {"z": tf.float32, "seeds": tf.int64}
        outputs = loaded.signatures[signature](**{k: tf.constant(v, dtypes[k]) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    return predict, f"export {path}"


def server_predict(address: str, model_name: str, timeout: float) -> tuple[Predict, str]:
    """(predict over gRPC for HOST:PORT, or REST for http://HOST:PORT, description) of a served model."""
    try:
        from serving import client  # the repository's client; needs tensorflow-serving-api and grpcio
    except ImportError as e:
        raise GenerateError(f"--server needs tensorflow-serving-api, grpcio and the repository's serving/client.py "
                            f"(run from the repository root): {e}") from None
    def rest(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return client.rest_predict(address, inputs, model_name, signature, timeout=timeout)

    def grpc(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return client.predict(stub, inputs, model_name, signature, timeout=timeout)[0]

    if address.startswith(("http://", "https://")):
        return rest, f"server {address} (REST, model {model_name})"
    stub = client.make_stub(address)
    return grpc, f"server {address} (gRPC, model {model_name})"


# ---------------------------------------------------------------------------------------------------------
# Generation and outputs.


def generate(predict: Predict, seeds: list[int], psi: float = 1.0, batch_size: int = 64,
             seed_z: Callable[[list[int]], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, S, S, C], the z used [N, nz]) for `seeds`, `batch_size` seeds per call.

    With `seed_z` (a training run) z is drawn here and sent to serving_default; without it (an export or a
    server) the model's own `sample_seeds` draws z and, when psi < 1, the truncated z goes to serving_default.
    Logs progress when there are more seeds than one batch.
    """
    if batch_size < 1:
        raise GenerateError(f"--batch_size={batch_size} must be >= 1")
    images, zs = [], []
    start = last_log = time.monotonic()
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        if seed_z is not None:
            z = seed_z(chunk)
            outputs = None
        else:
            outputs = predict(SEEDS_SIGNATURE, {"seeds": np.asarray(chunk, np.int64)})
            z = np.asarray(outputs["z"], np.float32)
        if psi != 1.0 or outputs is None:
            z = truncate(z, psi)
            outputs = predict(DEFAULT_SIGNATURE, {"z": z})
        images.append(np.asarray(outputs["images"]).astype(np.uint8))
        zs.append(z)
        done, now = i + len(chunk), time.monotonic()
        if len(seeds) > batch_size and (done == len(seeds) or now - last_log >= PROGRESS_EVERY_S):
            logging.info("Generated %d/%d images (%.0f%%, %.1f images/s).", done, len(seeds),
                         100.0 * done / len(seeds), done / max(now - start, 1e-9))
            last_log = now
    return np.concatenate(images), np.concatenate(zs)


def grid_sheet(images: np.ndarray, seeds: list[int], psi: float = 1.0) -> np.ndarray:
    """One RGB sheet of the images, each labelled with its seed, captioned with the truncation."""
    from dcgan_tf.experiments import figures

    cells = figures.label_cells(figures.prepare(images), [str(s) for s in seeds])
    return figures.caption(figures.grid(cells), f"SEEDS, TRUNCATION {psi:g}")


def write_outputs(outdir: str, seeds: list[int], images: np.ndarray, z: np.ndarray, psi: float, source: str,
                  grid: bool) -> dict:
    """seedNNNN.png per seed, z.npz (written last) and grid.png in outdir; earlier outputs not rewritten go."""
    os.makedirs(outdir, exist_ok=True)
    written = {seed_file(s) for s in seeds}
    for seed, image in zip(seeds, images):
        write_png(os.path.join(outdir, seed_file(seed)), image)
    if grid:
        write_png(os.path.join(outdir, GRID_FILE), grid_sheet(images, seeds, psi))
    stale = [name for name in os.listdir(outdir) if (_OUTPUT_NAME.match(name) and name not in written)
             or (name == GRID_FILE and not grid)]
    for name in stale:  # an earlier --overwrite'd run's images: the folder should hold what z.npz lists
        os.remove(os.path.join(outdir, name))
    with atomic_write(os.path.join(outdir, Z_FILE), "wb") as f:
        np.savez_compressed(f, z=z, seeds=np.asarray(seeds, np.int64), truncation=np.float32(psi),
                            source=np.str_(source))
    return {"outdir": outdir, "num_images": len(seeds), "z": os.path.join(outdir, Z_FILE),
            **({"grid": os.path.join(outdir, GRID_FILE)} if grid else {}), "removed_stale": len(stale)}


def run(opts: Options) -> dict:
    """Check the command line, open the model, generate, write; a JSON-able summary."""
    seeds = parse_seeds(opts.seeds)
    psi = check_truncation(opts.truncation)
    check_outdir(opts.outdir, opts.overwrite)
    given = [name for name in ("model_dir", "export_dir", "server") if getattr(opts, name)]
    if len(given) != 1:
        raise GenerateError(f"name the model with exactly one of --model_dir, --export_dir, --server (got {given})")
    seed_z = None
    if opts.model_dir:
        predict, seed_z, source = run_predict(opts.model_dir, opts.checkpoint_step, opts.g_ema, opts.bn_samples)
    elif opts.export_dir:
        predict, source = export_predict(opts.export_dir)
    else:
        predict, source = server_predict(opts.server, opts.model_name, opts.timeout)
    start = time.monotonic()
    images, z = generate(predict, seeds, psi, opts.batch_size, seed_z)
    seconds = time.monotonic() - start
    summary = write_outputs(opts.outdir, seeds, images, z, psi, source, opts.grid)
    return {"source": source, "truncation": psi, "seconds": round(seconds, 2), **summary}


# ---------------------------------------------------------------------------------------------------------
# Command line: one flag per Options field, its help text the field's comment above (see dcgan_tf/cli.py).

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The generate CLI's flags: one per Options field."""
    cli.define_flags(Options)


def main(argv: list[str]) -> None:
    """CLI entry point: generate, print the JSON summary."""
    import grpc
    import tensorflow as tf

    from dcgan_tf import startup
    from dcgan_tf.experiments.sources import SourceError
    from serving.client import ClientError

    startup.log_devices()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag (see --help)")
    try:
        summary = run(cli.read_flags(Options, FLAGS))
    except grpc.RpcError as e:
        logging.error("%s answered %s: %s", FLAGS.server, e.code().name, e.details())
        sys.exit(f"error: {FLAGS.server} answered {e.code().name}: {e.details()}")
    except (GenerateError, SourceError, ClientError, checkpointing.CheckpointError, tf.errors.InvalidArgumentError,
            ValueError, OSError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
