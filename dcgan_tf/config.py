"""All hyperparameters of a dcgan_tf run in one commented place.

Defaults are the paper's values (Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with
Deep Convolutional Generative Adversarial Networks", section 4 "Details of adversarial training"), except
where a comment says otherwise. The resolved config of every run is written to `<model_dir>/config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from dcgan_tf.files import atomic_write

# Datasets with a recipe in input_pipeline.py (besides "synthetic" and "folder:PATH").
TFDS_DATASETS = (
    "celeb_a",
    "lsun/bedroom",
    "cifar10",
    "svhn_cropped",
    "mnist",
    "fashion_mnist",
    "imagenet_resized/32x32",
    "imagenet_resized/64x64",
)
Z_DISTRIBUTIONS = ("uniform", "normal")
AUGMENT_MODES = ("none", "diffaugment", "ada")  # dcgan_tf/augment.py
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")

# Config fields that are not command-line flags (filled in by the program, recorded in config.json).
NOT_FLAGS = ("resolved", "initialized_from")

# Fields that fix the shape of the networks: resuming with other values cannot work.
ARCHITECTURE_FIELDS = ("image_size", "channels", "nz", "ngf", "ndf", "z_dist")


@dataclasses.dataclass
class Config:
    """Every setting of a training run; see the comments for the paper's values."""

    # --- Data ---------------------------------------------------------------------------------------------
    dataset: str = "synthetic"  # a TFDS name above, "synthetic" (built in, no download) or "folder:PATH"
    data_dir: str | None = None  # TFDS data_dir; None = TFDS's default (~/tensorflow_datasets)
    download: bool = True  # download a TFDS dataset missing from data_dir; false: fail at once (offline machines)
    image_size: int = 64  # paper: 64x64 (LSUN, faces, ImageNet-1k); 32x32 for the CIFAR/SVHN features
    channels: int = 0  # 0 = the dataset's own (3 for RGB sets, 1 for MNIST-like); 1 or 3 converts
    shuffle_buffer: int = 10_000  # examples per shuffled block of TFDS data too big for memory (paper: not stated)

    # --- Model (paper section 3 and 4) --------------------------------------------------------------------
    nz: int = 100  # paper: 100-d z
    z_dist: str = "uniform"  # paper: uniform on [-1, 1]; "normal" = N(0, 1) as an option
    ngf: int = 128  # G width; paper 64x64 nets project z to 4x4x1024 = 4x4x(8*ngf), so ngf = 128
    ndf: int = 128  # D width: 4x4 stride-2 convs with ndf, 2ndf, 4ndf, 8ndf maps at 64x64
    init_stddev: float = 0.02  # paper: all weights from N(0, 0.02)
    leaky_slope: float = 0.2  # paper: LeakyReLU slope 0.2 in D
    bn_momentum: float = 0.9  # moving-average momentum (Keras convention); 0.9 = PyTorch's 0.1
    bn_epsilon: float = 1e-5  # PyTorch's BatchNorm default, used by the reference implementations
    sync_batchnorm: bool = True  # replicas > 1: BatchNorm over the global batch as on 1 device; false: batch/N each

    # --- Optimisation (paper section 4) -------------------------------------------------------------------
    batch_size: int = 128  # GLOBAL batch (split across replicas); paper: 128
    learning_rate: float = 2e-4  # paper: Adam lr 0.0002 (0.001 "too high")
    beta1: float = 0.5  # paper: beta1 0.5 (0.9 "resulted in training oscillation and instability")
    beta2: float = 0.999  # Adam default, unchanged by the paper
    train_steps: int = 0  # total G/D updates; 0 = derive from `epochs`
    epochs: int = 25  # passes over a finite dataset, used when train_steps is 0 (paper: not stated)
    seed: int = 0  # seeds z, the synthetic data, the shuffle order and the weight init
    g_ema: bool = True  # outputs (exports, grids, FID, explore) use the EMA of G's weights; false = the paper's raw G
                        # (beyond the paper: the EMA at decay 0.99 won in both yardsticks, 3 seeds, docs/evaluation.md)
    g_ema_decay: float = 0.99  # decay of G's weight EMA, warmed up as min(decay, (1+t)/(10+t)); 0 = no EMA kept.
                               # 0.99: a half-life of 69 steps (~9k images at batch 128, near StyleGAN2-ADA's 10 kimg);
                               # 0.999 (the default until 2026-12-01) averaged too far back and lost to it in both.
    # Beyond the paper, off by default (docs/evaluation.md measures them):
    d_learning_rate: float = 0.0  # D's Adam learning rate; 0 = learning_rate (the paper). Above learning_rate:
                                  # the two time-scale update rule (TTUR, Heusel et al. 2017).
    label_smoothing: float = 0.0  # one-sided label smoothing (Salimans et al. 2016): D's target for real images is
                                  # 1 - this; fakes stay 0. 0 = off (the paper).
    r1_gamma: float = 0.0  # R1 penalty on real images (Mescheder et al. 2018): D's loss += gamma/2 *
                           # E|grad_x D(x)|^2 (D's logit). 0 = off (the paper).

    # --- Augmentation for small datasets (not in the paper; docs/training.md "Small datasets") ---------------
    augment: str = "none"  # augment D's inputs (real and fake, both updates): none (the paper), diffaugment or ada
    augment_policy: str = "color,translation,cutout"  # ops of diffaugment and ada (DiffAugment's names), comma-separated
    ada_target: float = 0.6  # ada: target of r_t = E[sign(D(real))]; p rises while r_t is above it (ADA paper: 0.6)
    ada_kimg: int = 500  # ada: thousands of images for p to go from 0 to 1 (ADA paper: 500)
    ada_interval: int = 4  # ada: steps between adjustments of p (ADA paper: 4)
    mirror: bool = False  # flip each real image left-right with probability 1/2 in the input pipeline

    # --- Speed --------------------------------------------------------------------------------------------
    # Speed settings: "auto" is resolved per machine by dcgan_tf/fast_path.py (train.prepare) and recorded in
    # config.json; `compute_precision` and `use_xla` below read the result.
    jit_compile: str = "auto"  # XLA: auto (on only where measured faster; off on CPUs), true or false
    mixed_precision: str = "auto"  # auto (bfloat16/float16/float32 by hardware), none (float32), bfloat16, float16
    conv_kernels: str = "auto"  # each paper conv by oneDNN's conv or by matmuls (dcgan_tf/conv_forms.py): auto
                                # (both timed per layer once per machine and shape, the faster kept), onednn, matmul,
                                # size (matmul where the small side <= 4), or LAYER=FORM,... (the others auto)
    kernel_cache_dir: str = "~/.cache/dcgan_tf"  # where conv_kernels=auto keeps its timings ("" = time every run)
    resolved: dict = dataclasses.field(default_factory=dict)  # not a flag: what train resolved "auto" to, and why

    # --- Distribution -------------------------------------------------------------------------------------
    strategy: str = "auto"  # auto = mirrored over all GPUs if more than one, else the default strategy
    cpu_replicas: int = 0  # >1: split the CPU into this many logical devices (tests and CPU-only machines)

    # --- Outputs ------------------------------------------------------------------------------------------
    model_dir: str = "runs/dcgan"  # checkpoints, TensorBoard events, samples/, config.json
    log_every: int = 100  # steps between TensorBoard scalars (and the progress bar's window)
    sample_every: int = 1000  # steps between fixed-z sample grids (TensorBoard image + PNG)
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 5  # how many recent checkpoints to keep
    num_samples: int = 64  # images in the fixed-z sample grid (a square number makes a square grid)
    fid_every: int = 0  # steps between FID evaluations during training (0 = off); keeps the best in model_dir/best
    fid_samples: int = 5000  # generated and real images per in-training FID
    fid_extractor: str = "classifier"  # FID features: "classifier" (see evaluate train-classifier) or "inception"
    fid_classifier_path: str = ""  # .keras classifier from `python -m dcgan_tf.evaluate train-classifier`
    inception_weights: str = "imagenet"  # InceptionV3 weights: "imagenet" (downloads) or a local .h5/.weights.h5
    export_dir: str = ""  # if set, export the generator for TF Serving here at the end of training
    verbose: int = 1  # 1: progress bar on a terminal, else a log line every log_every steps; 2: log lines; 0: none
    profile_steps: str = ""  # "START,END": capture a TensorBoard profile of global steps START..END, e.g. "20,25"

    # --- Fine-tuning (dcgan_tf/finetune.py) -----------------------------------------------------------------
    init_from: str = ""  # OTHER_MODEL_DIR[:STEP]: start this NEW run at step 0 from that run's G, D and G's EMA
                         # (its latest checkpoint without :STEP); same network flags needed. A run that has
                         # checkpoints resumes instead
    init_optimizers: bool = False  # with --init_from: also take both Adam optimizers' state (default: fresh ones)
    initialized_from: dict = dataclasses.field(default_factory=dict)  # not a flag: the checkpoint --init_from
                                                                      # started this run from

    def __post_init__(self) -> None:
        # config.json files written before `auto` existed hold jit_compile as a bool.
        if isinstance(self.jit_compile, bool):
            self.jit_compile = jit_spelling(self.jit_compile)

    # The two properties below only read fields. An `auto` that fast_path.resolve has not resolved yet (a
    # Config made in code, outside train/bench) reads as float32 without XLA: the path every machine runs.
    @property
    def compute_precision(self) -> str:
        """The run's precision: the request, what `auto` resolved to, or "none" (float32) while unresolved."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return self.resolved.get("mixed_precision", "none")

    @property
    def use_xla(self) -> bool:
        """Whether the train step is XLA-compiled: the request, what `auto` resolved to, or False while unresolved."""
        requested = normalise_jit(self.jit_compile)
        if requested != "auto":
            return requested == "true"
        return bool(self.resolved.get("jit_compile", False))

    @property
    def conv_forms(self) -> dict[str, str] | None:
        """Each paper conv's form ("onednn" / "matmul") as resolved, or None while unresolved (kernels' size rule).

        `resolved` holds it as "LAYER=FORM,..." (flat values: TensorBoard's HParams take no nested dicts)."""
        text = self.resolved.get("conv_forms")
        if text is None:
            return None
        return dict(item.split("=", 1) for item in text.split(",") if item)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the config as pretty JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Build a config from a dict, rejecting unknown keys with a clear message."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str) -> "Config":
        """Read a config written by `save`; ConfigError naming the file and the fix if it is damaged."""
        try:
            with open(path) as f:
                values = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(
                f"{path} is damaged ({type(e).__name__}: {e}). It is the saved config of the run: restore it from "
                "a copy, or delete it and re-run the same training command, which writes it again from the flags "
                "(the checkpoints are kept; the flags must describe the same network)") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} holds a JSON {type(values).__name__}, not a config object: restore it from "
                              "a copy, or delete it and re-run the same training command to write it again")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "Config":
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def num_upsamplings(self) -> int:
        """Number of stride-2 layers between 4x4 and image_size (4 at 64x64)."""
        return int(math.log2(self.image_size // 4))


class ConfigError(ValueError):
    """A setting that cannot work, with a message that names the fix."""


JIT_VALUES = ("auto", "true", "false")


def jit_spelling(value: object) -> str:
    """A --jit_compile value (flag string, or the bool of an old config.json) spelled as auto/true/false if it is one."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    return {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(text, text)


def normalise_jit(value: object) -> str:
    """'auto', 'true' or 'false' from a flag string or a bool; ConfigError for anything else."""
    text = jit_spelling(value)
    if text not in JIT_VALUES:
        raise ConfigError(f"jit_compile={value!r} must be auto, true or false")
    return text


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def validate(config: Config) -> None:
    """Raise ConfigError naming the problem and the fix; cheap, run before any heavy work."""
    checks = [
        (is_power_of_two(config.image_size) and config.image_size >= 16,
         f"image_size={config.image_size} must be a power of two >= 16 (16, 32, 64, 128, ...)"),
        (config.image_size <= MAX_IMAGE_SIZE,
         f"image_size={config.image_size} is above {MAX_IMAGE_SIZE}, the largest these networks are built for "
         "(the paper: 64)"),
        (config.channels in (0, 1, 3), f"channels={config.channels} must be 0 (dataset's own), 1 or 3"),
        (config.nz > 0, f"nz={config.nz} must be positive (paper: 100)"),
        (config.ngf > 0 and config.ndf > 0, f"ngf={config.ngf} and ndf={config.ndf} must be positive"),
        (config.batch_size > 0, f"batch_size={config.batch_size} must be positive (paper: 128)"),
        (config.learning_rate > 0, f"learning_rate={config.learning_rate} must be positive (paper: 2e-4)"),
        (0 <= config.beta1 < 1, f"beta1={config.beta1} must be in [0, 1) (paper: 0.5)"),
        (config.z_dist in Z_DISTRIBUTIONS, f"z_dist={config.z_dist!r} must be one of {Z_DISTRIBUTIONS}"),
        (config.strategy in STRATEGIES, f"strategy={config.strategy!r} must be one of {STRATEGIES}"),
        (config.mixed_precision in ("auto", "none", "bfloat16", "float16"),
         f"mixed_precision={config.mixed_precision!r} must be auto, none, bfloat16 or float16"),
        (jit_spelling(config.jit_compile) in JIT_VALUES,
         f"jit_compile={config.jit_compile!r} must be auto, true or false"),
        (config.d_learning_rate >= 0,
         f"d_learning_rate={config.d_learning_rate} must not be negative (0 = learning_rate, the paper)"),
        (0 <= config.label_smoothing < 1, f"label_smoothing={config.label_smoothing} must be in [0, 1) (e.g. 0.1)"),
        (config.r1_gamma >= 0, f"r1_gamma={config.r1_gamma} must not be negative (0 = off)"),
        (0 <= config.g_ema_decay < 1, f"g_ema_decay={config.g_ema_decay} must be in [0, 1) (0 keeps no EMA)"),
        (not config.g_ema or config.g_ema_decay > 0,
         "--g_ema needs an EMA to use: set --g_ema_decay in (0, 1) (e.g. 0.99), or --g_ema=false for the raw G"),
        (config.augment in AUGMENT_MODES, f"augment={config.augment!r} must be one of {', '.join(AUGMENT_MODES)}"),
        (0 < config.ada_target < 1, f"ada_target={config.ada_target} must be in (0, 1) (ADA paper: 0.6)"),
        (config.ada_kimg > 0 and config.ada_interval > 0,
         f"ada_kimg={config.ada_kimg} and ada_interval={config.ada_interval} must be positive (ADA paper: 500, 4)"),
        (config.train_steps >= 0 and config.epochs >= 0, "train_steps and epochs must not be negative"),
        (config.train_steps > 0 or config.epochs > 0,
         "set --train_steps=N (or --epochs=N for a finite dataset): the run has no length"),
        (min(config.log_every, config.sample_every, config.checkpoint_every) > 0,
         "log_every, sample_every and checkpoint_every must be positive"),
        (config.keep_checkpoints > 0, "keep_checkpoints must be at least 1"),
        (config.num_samples > 0, "num_samples must be positive"),
        (config.verbose in (0, 1, 2), f"verbose={config.verbose} must be 0 (quiet), 1 (bar on a terminal, else "
                                      "log lines) or 2 (log lines)"),
        (config.cpu_replicas >= 0, "cpu_replicas must not be negative"),
        (config.fid_every >= 0, "fid_every must not be negative (0 turns in-training FID off)"),
        (not config.fid_every or config.fid_samples >= 2, "fid_samples must be at least 2 when fid_every is set"),
        (config.fid_extractor in ("classifier", "inception"),
         f"fid_extractor={config.fid_extractor!r} must be 'classifier' or 'inception'"),
        (not config.fid_every or config.fid_extractor != "classifier" or config.fid_classifier_path,
         "--fid_every with the classifier extractor needs --fid_classifier_path (train one with "
         "python -m dcgan_tf.evaluate train-classifier), or use --fid_extractor=inception"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_network_size(config)
    check_augment_policy(config.augment_policy)
    validate_dataset_name(config.dataset)
    parse_profile_steps(config.profile_steps)


# Bounds on the networks' size, checked before anything is built: past them a run fails minutes later with an
# out-of-memory error (G's widest layer has 16 * w * w/2 weights for w maps at 4x4: 134M at w = 4096).
MAX_IMAGE_SIZE = 1024
MAX_MAPS_AT_4X4 = 4096


def check_network_size(config: Config) -> None:
    """Refuse networks too large to build: widest layer = width * image_size / 8 maps at 4x4 (paper: 128 * 8)."""
    for flag, width in (("ngf", config.ngf), ("ndf", config.ndf)):
        maps = width * config.image_size // 8  # the rule of models.generator_widths / discriminator_widths
        if maps > MAX_MAPS_AT_4X4:
            raise ConfigError(
                f"{flag}={width} at image_size={config.image_size} gives a 4x4 layer of {maps} maps (at most "
                f"{MAX_MAPS_AT_4X4}: its weights alone would need {16 * maps * maps // 2 * 4 / 2**30:.1f} GiB); use "
                f"--{flag}<={MAX_MAPS_AT_4X4 * 8 // config.image_size} at this size (the paper: 128 at 64x64)")


def check_augment_policy(text: str) -> None:
    """ConfigError unless --augment_policy names known ops (dcgan_tf/augment.py)."""
    from dcgan_tf import augment  # TensorFlow: imported only when validating

    try:
        augment.parse_policy(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """'START,END' -> (START, END) global steps to profile (1-based, inclusive); '' -> None."""
    if not text.strip():
        return None
    parts = text.split(",")
    try:
        first, last = (int(part) for part in parts)
    except ValueError:
        first = last = 0
    if len(parts) != 2 or not 0 < first <= last:
        raise ConfigError(f"profile_steps={text!r} must be START,END with 0 < START <= END, e.g. "
                          "--profile_steps=20,25 (skip the first steps: they include tracing)")
    return first, last


def validate_dataset_name(name: str) -> None:
    """Reject a dataset name that no recipe handles."""
    if name == "synthetic" or name in TFDS_DATASETS:
        return
    if name.startswith("folder:"):
        if not name[len("folder:"):]:
            raise ConfigError("dataset 'folder:' needs a path: --dataset=folder:/path/to/images")
        return
    raise ConfigError(
        f"unknown dataset {name!r}. Use one of {', '.join(TFDS_DATASETS)}, 'synthetic' (built in, no "
        "download) or 'folder:/path/to/images' for your own images"
    )


def check_compatible(saved: Config, new: Config) -> None:
    """Raise ConfigError if `new` cannot resume a run saved with `saved` (different network shapes)."""
    diffs = [
        f"{name}: checkpoint has {getattr(saved, name)!r}, this run asks for {getattr(new, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if getattr(saved, name) != getattr(new, name)
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume from {new.model_dir}: the run there was trained with another network "
            f"({'; '.join(diffs)}). Use the same flags, or a new --model_dir to start a fresh run."
        )


def save(config: Config, path: str) -> None:
    """Write the config as JSON atomically (temporary file + rename)."""
    with atomic_write(path) as f:
        f.write(config.to_json())
