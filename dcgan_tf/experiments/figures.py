"""Labelled figures built from uint8 image arrays: upscaling, a tiny bitmap font, captions, panels.

Text is drawn with a built-in 3x5 pixel font (digits, capitals, a little punctuation) so figures need no
font files or extra packages and come out byte-identical everywhere.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dcgan_tf.experiments.dviz import gradient_images
from dcgan_tf.images import make_grid, to_uint8

# 3x5 glyphs, rows top to bottom, "1" = ink.
_GLYPHS = {
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "111 001 111 100 111",
    "3": "111 001 111 001 111", "4": "101 101 111 001 001", "5": "111 100 111 001 111",
    "6": "111 100 111 101 111", "7": "111 001 001 010 010", "8": "111 101 111 101 111",
    "9": "111 101 111 001 111", "A": "010 101 111 101 101", "B": "110 101 110 101 110",
    "C": "011 100 100 100 011", "D": "110 101 101 101 110", "E": "111 100 110 100 111",
    "F": "111 100 110 100 100", "G": "011 100 101 101 011", "H": "101 101 111 101 101",
    "I": "111 010 010 010 111", "J": "001 001 001 101 010", "K": "101 101 110 101 101",
    "L": "100 100 100 100 111", "M": "101 111 101 101 101", "N": "110 101 101 101 101",
    "O": "010 101 101 101 010", "P": "110 101 110 100 100", "Q": "010 101 101 110 011",
    "R": "110 101 110 101 101", "S": "011 100 010 001 110", "T": "111 010 010 010 010",
    "U": "101 101 101 101 111", "V": "101 101 101 101 010", "W": "101 101 101 111 101",
    "X": "101 101 010 101 101", "Y": "101 101 010 010 010", "Z": "111 001 010 100 111",
    " ": "000 000 000 000 000", ".": "000 000 000 000 010", ",": "000 000 000 010 100",
    "-": "000 000 111 000 000", "+": "000 010 111 010 000", "=": "000 111 000 111 000",
    ":": "000 010 000 010 000", "/": "001 001 010 100 100", "(": "010 100 100 100 010",
    ")": "010 001 001 001 010", "_": "000 000 000 000 111", "#": "101 111 101 111 101",
    "%": "101 001 010 100 101", "<": "001 010 100 010 001", ">": "100 010 001 010 100",
    "?": "111 001 010 000 010", "*": "000 101 010 101 000",
}
_FONT = {c: np.array([[b == "1" for b in row] for row in g.split()], dtype=bool) for c, g in _GLYPHS.items()}
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
CELL_TARGET = 64  # small samples are upscaled to at least this many pixels so labels stay readable


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of `text` drawn at `scale`."""
    return 5 * scale, max(0, 4 * len(text) - 1) * scale


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, colour=WHITE, scale: int = 1) -> np.ndarray:
    """Draw `text` (upper-cased; unknown characters become '?') into an RGB uint8 canvas in place."""
    for i, char in enumerate(text.upper()):
        glyph = np.kron(_FONT.get(char, _FONT["?"]), np.ones((scale, scale), dtype=bool))
        y, x = top, left + i * 4 * scale
        region = canvas[y:y + glyph.shape[0], x:x + glyph.shape[1]]
        region[glyph[:region.shape[0], :region.shape[1]]] = colour  # clipped at the canvas edge
    return canvas


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 1 or 3] -> [..., H, W, 3] (gray repeated), so text and overlays can be coloured."""
    images = np.asarray(images, dtype=np.uint8)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def display_scale(size: int) -> int:
    """Nearest-neighbour upscaling factor for images of side `size` (1 for 64x64 and larger)."""
    return max(1, CELL_TARGET // size)


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of [..., H, W, C] by an integer factor."""
    if factor == 1:
        return images
    return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)


def prepare(images: np.ndarray) -> np.ndarray:
    """float images in [-1, 1] (or uint8) [N, S, S, C] -> display-ready RGB uint8, upscaled for small S."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    return upscale(to_rgb(images), display_scale(images.shape[-2]))


def label_cells(images: np.ndarray, labels: Sequence[str], scale: int = 2) -> np.ndarray:
    """Copy of RGB uint8 images [N, H, W, 3] with labels[i] on a black box at image i's top-left corner."""
    out = np.array(images, copy=True)
    for image, label in zip(out, labels):
        h, w = text_size(label, scale)
        image[:h + 2, :w + 2] = BLACK
        draw_text(image, label, 1, 1, WHITE, scale)
    return out


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Grid of display-ready images on black (dcgan_tf.images.make_grid)."""
    return make_grid(images, cols=cols, pad=pad)


def caption(panel: np.ndarray, text: str, scale: int = 2, where: str = "top") -> np.ndarray:
    """`panel` with a black band of `text` above (where="top") or to the left (where="left") of it."""
    h, w = text_size(text, scale)
    if where == "top":
        band = np.zeros((h + 4, max(panel.shape[1], w + 4), 3), np.uint8)
        draw_text(band, text, 2, 2, WHITE, scale)
        return np.concatenate([band, _fit_width(panel, band.shape[1])], axis=0)
    band = np.zeros((panel.shape[0], w + 4, 3), np.uint8)
    draw_text(band, text, max(0, (panel.shape[0] - h) // 2), 2, WHITE, scale)
    return np.concatenate([band, panel], axis=1)


def _fit_width(panel: np.ndarray, width: int) -> np.ndarray:
    """Pad a panel with black on the right to at least `width` columns."""
    if panel.shape[1] >= width:
        return panel
    return np.pad(panel, [(0, 0), (0, width - panel.shape[1]), (0, 0)])


def vstack(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels one below another, left-aligned, padded with black to a common width."""
    width = max(p.shape[1] for p in panels)
    parts = []
    for i, panel in enumerate(panels):
        parts.append(_fit_width(panel, width))
        if i < len(panels) - 1:
            parts.append(np.zeros((gap, width, 3), np.uint8))
    return np.concatenate(parts, axis=0)


def hstack(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels side by side, top-aligned, padded with black to a common height."""
    height = max(p.shape[0] for p in panels)
    parts = []
    for i, panel in enumerate(panels):
        parts.append(np.pad(panel, [(0, height - panel.shape[0]), (0, 0), (0, 0)]))
        if i < len(panels) - 1:
            parts.append(np.zeros((height, gap, 3), np.uint8))
    return np.concatenate(parts, axis=1)


def overlay_masks(images: np.ndarray, masks: np.ndarray, colour=(255, 64, 64), alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 images [N, H, W, 3] tinted with `colour` where the bool masks [N, H, W] are set."""
    tinted = images.astype(np.float32)
    tinted[masks] = (1 - alpha) * tinted[masks] + alpha * np.asarray(colour, np.float32)
    return np.round(tinted).astype(np.uint8)


def heatmap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] [N, H, W] -> RGB uint8 [N, H, W, 3], dark blue (0) to yellow (1)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    low, high = np.array([20, 20, 90], np.float32), np.array([255, 230, 40], np.float32)
    return np.round(low + v * (high - low)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# One figure per experiment, each from the result dict its run_* function returns.


def _rows(images: np.ndarray, labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Images [R, K, S, S, C] (float or uint8) as a grid with one row per R, optional per-cell labels."""
    rows, cols = images.shape[:2]
    cells = prepare(images.reshape((rows * cols,) + images.shape[2:]))
    if labels is not None:
        cells = label_cells(cells, [label for row in labels for label in row])
    return grid(cells, cols=cols)


def _join(indices: Sequence[int]) -> str:
    """1,2,3 for figure captions."""
    return ",".join(str(int(i)) for i in indices)


def sheet_figure(result: dict[str, np.ndarray], cols: int | None = None) -> np.ndarray:
    """Numbered samples: the index on each cell is what arithmetic/walk/masks refer to."""
    images = result["images"]
    cells = label_cells(prepare(images), [str(i) for i in range(len(images))])
    return caption(grid(cells, cols=cols), f"SAMPLES, SEED {int(result['seed'])}")


def interpolation_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Rows of walks from one z (left) to another (right)."""
    return caption(_rows(result["images"]), f"{str(result['method']).upper()} INTERPOLATION")


def arithmetic_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Exemplars + G(mean z) per concept on the left; the 3x3 grid around G(Y) and the pixel baseline on the right."""
    concepts = []
    for name, key in (("A", "a"), ("B", "b"), ("C", "c")):
        i = "abc".index(key)
        row = np.concatenate([result["exemplar_images"][i], result["mean_images"][i][None]], axis=0)
        labels = [[str(int(j)) for j in result[key]] + ["MEAN"]]
        concepts.append(caption(_rows(row[None], labels), name, where="left"))
    left = caption(vstack(concepts), "EXEMPLARS AND G(MEAN Z)")
    centre = label_cells(prepare(result["grid_images"]), ["", "", "", "", "Y", "", "", "", ""])
    right = caption(grid(centre, cols=3), "G(Y), Y=A-B+C")
    pixel = caption(grid(prepare(result["pixel_result"][None])), "PIXELS A-B+C")
    return hstack([left, right, pixel], gap=8)


def walk_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Random samples (left) with the attribute vector added in steps (to the right)."""
    title = f"FROM {_join(result['from'])} TO {_join(result['to'])}, SCALE 0-{float(result['scale']):g}"
    return caption(_rows(result["images"]), title)


def projection_figure(result: dict[str, np.ndarray], pairs_per_row: int = 5) -> np.ndarray:
    """Pairs of cells, the target then G(z) of its z, labelled with the image's index and the pixel MSE."""
    targets, reconstructions = prepare(result["targets"]), prepare(result["reconstructions"])
    targets = label_cells(targets, [str(i) for i in range(len(targets))])
    reconstructions = label_cells(reconstructions, [f"{float(mse):.3f}" for mse in result["pixel_mse"]])
    per_row = min(pairs_per_row, len(targets))
    pairs = [grid(np.stack([t, r]), cols=2) for t, r in zip(targets, reconstructions)]
    rows = [hstack(pairs[i:i + per_row], gap=6) for i in range(0, len(pairs), per_row)]
    return caption(vstack(rows), "TARGET, G(Z) AND ITS PIXEL MSE")


def concept_figure(result: dict[str, np.ndarray], num: int = 8) -> np.ndarray:
    """Samples with their masks tinted, and the regression's P(concept) at each position of the split layer."""
    images = prepare(result["images"][:num])
    factor = images.shape[1] // result["masks"].shape[1]
    masks = upscale(result["masks"][:num, ..., None], factor)[..., 0]
    probabilities = result["probabilities"][:num]
    prob = upscale(heatmap(probabilities), images.shape[1] // probabilities.shape[1])
    filters = result["filters"]
    shown = _join(filters[:12]) + ("..." if len(filters) > 12 else "")
    panel = grid(np.concatenate([images, overlay_masks(images, masks), prob]), cols=len(images))
    title = f"{len(filters)} FILTERS: {shown}  ACC {float(result['balanced_accuracy']):.2f}"
    return caption(caption(panel, "SAMPLE/MASK/P", where="left"), title)


def ablation_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Rows: as generated, with the chosen filters dropped, with as many random filters dropped."""
    n = len(result["filters"])
    rows = [("AS GENERATED", result["images_before"]), (f"WITHOUT THE {n} CHOSEN FILTERS", result["images_after"]),
            (f"WITHOUT {len(result['control_filters'])} RANDOM OTHER FILTERS", result["images_control"])]
    panels = [caption(grid(prepare(images), cols=len(images)), label) for label, images in rows]
    return caption(vstack(panels), f"DROPPED FROM {str(result['layer']).upper()}")


def dviz_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Per feature (row): its top real images, then their guided-backprop maps; trained D beside random D."""
    panels = []
    for name in ("trained", "random"):
        images, gradients = result[f"{name}_images"], gradient_images(result[f"{name}_gradients"])
        rows = np.concatenate([images, gradients], axis=1)  # [K, 2*top, S, S, C]
        labels = [[f"F{k}"] + [""] * (rows.shape[1] - 1) for k in range(len(rows))]
        panels.append(caption(_rows(rows, labels), f"{name.upper()} D"))
    return hstack(panels, gap=12)


def neighbors_figure(result: dict[str, np.ndarray]) -> np.ndarray:
    """Per sample (row): the sample, its nearest training images in pixel space, then in D-feature space."""
    columns = [caption(grid(prepare(result["samples"]), cols=1), "SAMPLE")]
    for name, title in (("pixel", "PIXEL NN"), ("dfeature", "D-FEATURE NN")):
        if f"{name}_indices" not in result:
            continue
        neighbours = result[f"{name}_neighbor_images"]
        labels = [[f"{d:.2f}" for d in row] for row in result[f"{name}_distances"]]
        columns.append(caption(_rows(neighbours, labels), title))
    return hstack(columns, gap=8)


def dedup_figure(result: dict[str, np.ndarray], samples: np.ndarray, train_images: np.ndarray,
                 num: int = 8) -> np.ndarray:
    """Samples over the training image with the nearest hash (Hamming distance on each pair), with counts."""
    num = min(num, len(samples))
    nearest = train_images[result["nearest_train"][:num]]
    rows = np.stack([samples[:num], nearest])  # [2, num, S, S, C]: samples on top, their neighbours below
    labels = [[""] * num, [f"H{int(d)}" for d in result["nearest_hamming"][:num]]]
    panel = _rows(rows, labels)
    counts = (f"MATCH {int(result['samples_matching_train'])}/{int(result['num_samples'])}, "
              f"TRAIN DUP PAIRS {len(result['train_duplicate_pairs'])}/{int(result['num_train'])}")
    return caption(caption(panel, "SAMPLE/NEAREST HASH"), counts)
