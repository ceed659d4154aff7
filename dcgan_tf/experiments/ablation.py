"""Concept filters and filter ablation (paper section 6.3.1, Fig. 6).

A logistic regression on the generator's second-highest conv layer of feature maps (see
concept_layer_name; 16x16x256 for the paper's 64x64 model) predicts, at each spatial position of
that layer, whether the position lies inside a concept's mask; filters with positive weight are the
concept's filters. Dropping them (zeroing those feature maps at every position) and running the rest of
the generator shows what the generator draws without them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

LayerFn = Callable[[tf.Tensor], tf.Tensor]
# ITU-R 601 luma, the weights tf.image.rgb_to_grayscale uses (and render_synthetic with channels=1).
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)


def concept_layer_name(generator: keras.Model) -> str:
    """The paper's "second highest convolution layer" of G (section 6.3.1): its second-to-last feature maps.

    Which layer the paper means: it dropped 200 filters there, so the layer has at least 200 maps. G's layers of
    feature maps are the projection and every fractionally-strided conv but the last, whose output is the image
    (3 maps), not features. At 64x64 with ngf=128 (the paper's 4x4x1024 projection) they are 4x4x1024,
    8x8x512, 16x16x256 and 32x32x128: the highest, 32x32x128, has fewer than 200 maps, and so would the
    second-to-last conv counting the output layer (that same 32x32x128). The second highest feature layer,
    16x16x256, is the only reading with room for 200 filters. Each layer's maps are taken after its BatchNorm
    and ReLU (the activation that follows the conv), as the next layer sees them.
    """
    stages = [layer.name for layer in generator.layers
              if isinstance(layer, keras.layers.ReLU) and len(layer.output.shape) == 4]
    if len(stages) < 2:
        raise ValueError(f"generator {generator.name} has {len(stages)} layer(s) of feature maps (ReLU outputs); "
                         "concept filters need two")
    return stages[-2]


def apply_layers(layers: Sequence[keras.layers.Layer], x: tf.Tensor) -> tf.Tensor:
    """Run a chain of layers eagerly in inference mode (eager calls add no nodes to the model's graph)."""
    for layer in layers:
        x = layer(x, training=False)
    return x


def split_generator(generator: keras.Model, layer_name: str | None = None) -> tuple[LayerFn, LayerFn]:
    """(head, tail): head maps z to `layer_name`'s feature maps, tail maps those maps to images.

    G is a chain of layers (models.build_generator), so head and tail are its layers before and after the
    split, run in inference mode; tail(head(z)) == G(z, training=False).
    """
    layer_name = layer_name or concept_layer_name(generator)
    names = [layer.name for layer in generator.layers]
    if layer_name not in names:
        raise ValueError(f"generator has no layer {layer_name!r}; its layers are {names}")
    layers = [layer for layer in generator.layers if not isinstance(layer, keras.layers.InputLayer)]
    split = [layer.name for layer in layers].index(layer_name) + 1
    return (lambda z: apply_layers(layers[:split], z)), (lambda maps: apply_layers(layers[split:], maps))


def feature_maps(head: LayerFn, z: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Feature maps [N, h, w, F] of the head for z (inference mode)."""
    parts = [head(tf.constant(z[i:i + batch_size])).numpy() for i in range(0, len(z), batch_size)]
    return np.concatenate(parts, axis=0)


def drop_feature_maps(features: np.ndarray, filters: Sequence[int]) -> np.ndarray:
    """Copy of features [N, h, w, F] with the maps of `filters` set to zero at every position."""
    filters = np.asarray(list(filters), dtype=np.int64)
    if filters.size and (filters.min() < 0 or filters.max() >= features.shape[-1]):
        raise ValueError(f"filters {filters.tolist()} outside 0..{features.shape[-1] - 1}")
    out = np.array(features, copy=True)
    out[..., filters] = 0.0
    return out


def render_without(head: LayerFn, tail: LayerFn, z: np.ndarray, filters: Sequence[int],
                   batch_size: int = 64) -> np.ndarray:
    """Images [N, S, S, C] generated from z with `filters` dropped from the split layer."""
    kept = drop_feature_maps(feature_maps(head, z, batch_size), filters)
    parts = [tail(tf.constant(kept[i:i + batch_size])).numpy()
             for i in range(0, len(kept), batch_size)]
    return np.concatenate(parts, axis=0)


def synthetic_masks(images: np.ndarray) -> np.ndarray:
    """The synthetic dataset's shape masks recovered from images in [-1, 1]: bool [N, S, S].

    render_synthetic draws a shape with every RGB channel >= 0.55 on a background with every channel
    <= 0.45, so the shape is exactly where the luma is above the middle grey (0 in [-1, 1]).
    """
    images = np.asarray(images, np.float32)
    luma = images[..., 0] if images.shape[-1] == 1 else images @ _LUMA
    return luma > 0.0


def downsample_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """bool masks [N, S, S] -> [N, size, size]: a cell is inside when at least half its pixels are."""
    n, s = masks.shape[0], masks.shape[1]
    if s % size:
        raise ValueError(f"mask size {s} is not a multiple of the feature map size {size}")
    f = s // size
    return masks.reshape(n, size, f, size, f).mean(axis=(2, 4)) >= 0.5


def logistic_regression(penalty: str, c: float, seed: int):
    """An unfitted, deterministic scikit-learn LogisticRegression with an "l1" or "l2" penalty of strength 1/c."""
    import sklearn  # imported here: only the concept-filter experiment needs scikit-learn
    from sklearn.linear_model import LogisticRegression

    if penalty not in ("l1", "l2"):
        raise ValueError(f"penalty {penalty!r} must be 'l1' or 'l2'")
    options = {"C": c, "solver": "liblinear", "class_weight": "balanced", "random_state": seed, "max_iter": 1000}
    # scikit-learn 1.8 deprecated `penalty` in favour of l1_ratio (1 = L1, 0 = L2).
    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8):
        options["l1_ratio"] = 1.0 if penalty == "l1" else 0.0
    else:
        options["penalty"] = penalty
    return LogisticRegression(**options)


def fit_concept_filters(features: np.ndarray, masks: np.ndarray, penalty: str = "l1", c: float = 0.1,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Logistic regression from each position's F features to "inside the mask"; filters = weights > 0.

    Every spatial position of every sample is one example (inside the mask: positive, outside: negative),
    classes balanced by weight. Features are standardised, which keeps each weight's sign. The default
    L1 penalty gives unrelated filters a weight of exactly 0 instead of noise of either sign.
    """
    n, h, w, num_filters = features.shape
    if masks.shape != (n, h, w):
        raise ValueError(f"masks {masks.shape} must match the feature maps' [N, h, w] = {(n, h, w)}")
    x = features.reshape(-1, num_filters).astype(np.float64)
    y = masks.reshape(-1).astype(np.int64)
    if y.min() == y.max():
        raise ValueError("the masks are all inside or all outside the concept: the regression needs both")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0  # dead filters stay at 0 and get weight 0
    model = logistic_regression(penalty, c, seed)
    model.fit((x - mean) / std, y)
    weights = model.coef_[0]
    filters = np.flatnonzero(weights > 0)
    filters = filters[np.argsort(-weights[filters], kind="stable")]  # strongest first
    predicted = model.predict((x - mean) / std)
    return {
        "weights": weights.astype(np.float32),
        "intercept": np.float32(model.intercept_[0]),
        "filters": filters.astype(np.int64),
        "accuracy": np.float32(np.mean(predicted == y)),
        "balanced_accuracy": np.float32(0.5 * (np.mean(predicted[y == 1] == 1) + np.mean(predicted[y == 0] == 0))),
        "probabilities": model.predict_proba((x - mean) / std)[:, 1].reshape(n, h, w).astype(np.float32),
        "feature_mean": mean.astype(np.float32), "feature_std": std.astype(np.float32),
    }


def run_concept_filters(generator: keras.Model, z: np.ndarray, masks: np.ndarray, layer_name: str | None = None,
                        penalty: str = "l1", c: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """Fit the concept filters of `masks` [N, S, S] over the samples G(z) at the split layer."""
    layer_name = layer_name or concept_layer_name(generator)
    head, _ = split_generator(generator, layer_name)
    features = feature_maps(head, z)
    cells = downsample_masks(np.asarray(masks, bool), features.shape[1])
    result = fit_concept_filters(features, cells, penalty, c, seed)
    result.update({"z": z, "masks": np.asarray(masks, bool), "layer": np.str_(layer_name),
                   "images": generator(tf.constant(z), training=False).numpy()})
    return result


def control_filters(filters: Sequence[int], num_filters: int, seed: int) -> np.ndarray:
    """As many filters as `filters` (or all the others, if fewer), drawn at random from the others."""
    others = np.setdiff1d(np.arange(num_filters), np.asarray(list(filters), np.int64))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(others, size=min(len(filters), len(others)), replace=False)).astype(np.int64)


def run_ablation(generator: keras.Model, z: np.ndarray, filters: Sequence[int], layer_name: str | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Fig. 6: samples as generated, with `filters` dropped, and with as many random other filters dropped."""
    layer_name = layer_name or concept_layer_name(generator)
    head, tail = split_generator(generator, layer_name)
    num_filters = int(head(tf.constant(z[:1])).shape[-1])
    control = control_filters(filters, num_filters, seed)
    before, after, after_control = (render_without(head, tail, z, f) for f in ([], filters, control))
    return {
        "z": z, "filters": np.asarray(list(filters), np.int64), "control_filters": control,
        "layer": np.str_(layer_name), "num_filters": np.int64(num_filters),
        "images_before": before, "images_after": after, "images_control": after_control,
        "change": np.float32(np.mean(np.abs(after - before))),
        "change_control": np.float32(np.mean(np.abs(after_control - before))),
    }
