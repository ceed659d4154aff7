"""Guided backpropagation of the discriminator's features (paper Fig. 5).

For each of the first K features (channels) of D's last conv layer, the real images that activate it most
are found, and the gradient of that feature's maximal response with respect to each image is taken with
guided backpropagation (Springenberg et al. 2014): at every rectifier, only positive gradients flow, and
only where the rectifier's input was positive. A trained D shows parts of scenes; a randomly initialised D
(same architecture) shows nothing in particular, which is the paper's point.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dcgan_tf.config import Config
from dcgan_tf.models import build_discriminator


def last_conv_layer_name(discriminator: keras.Model) -> str:
    """Name of the activation after D's last conv block (conv{K}_lrelu)."""
    names = [layer.name for layer in discriminator.layers if layer.name.endswith("_lrelu")]
    if not names:
        raise ValueError(f"discriminator {discriminator.name} has no conv{{i}}_lrelu layers")
    return names[-1]


def guided_rectifier(x: tf.Tensor, negative_slope: float) -> tf.Tensor:
    """Leaky ReLU forward; guided backward: gradient passed only where input > 0 and gradient > 0."""

    @tf.custom_gradient
    def rectify(x):
        def grad(dy):
            return dy * tf.cast(x > 0, dy.dtype) * tf.cast(dy > 0, dy.dtype)

        return tf.where(x > 0, x, negative_slope * x), grad

    return rectify(x)


def guided_forward(discriminator: keras.Model, images: tf.Tensor, layer_name: str) -> tf.Tensor:
    """D's layers up to `layer_name` in inference mode, with every rectifier replaced by the guided one."""
    x = images
    for layer in discriminator.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.LeakyReLU):
            x = guided_rectifier(x, float(layer.negative_slope))
        elif isinstance(layer, keras.layers.ReLU):
            x = guided_rectifier(x, 0.0)
        else:
            x = layer(x, training=False)
        if layer.name == layer_name:
            return x
    raise ValueError(f"discriminator has no layer {layer_name!r}")


def feature_activations(discriminator: keras.Model, images: np.ndarray, layer_name: str,
                        batch_size: int = 128) -> np.ndarray:
    """Each image's maximal response of every feature of `layer_name`: [N, F]."""
    parts = []
    for i in range(0, len(images), batch_size):
        maps = guided_forward(discriminator, tf.constant(images[i:i + batch_size], tf.float32), layer_name)
        parts.append(tf.reduce_max(maps, axis=[1, 2]).numpy())
    return np.concatenate(parts, axis=0)


def guided_gradients(discriminator: keras.Model, images: np.ndarray, layer_name: str, feature: int) -> np.ndarray:
    """Guided-backprop gradient of feature `feature`'s maximal response w.r.t. each image: images' shape."""
    x = tf.constant(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        maps = guided_forward(discriminator, x, layer_name)
        # Sum over images of each image's max response: every image gets the gradient of its own maximum.
        objective = tf.reduce_sum(tf.reduce_max(maps[..., feature], axis=[1, 2]))
    return tape.gradient(objective, x).numpy()


def visualize_features(discriminator: keras.Model, images: np.ndarray, num_features: int = 6, top: int = 4,
                       layer_name: str | None = None) -> dict[str, np.ndarray]:
    """For features 0..num_features-1: the `top` most activating images and their guided gradients."""
    layer_name = layer_name or last_conv_layer_name(discriminator)
    activations = feature_activations(discriminator, images, layer_name)
    num_features = min(num_features, activations.shape[1])
    top = min(top, len(images))
    indices = np.stack([np.argsort(-activations[:, k], kind="stable")[:top] for k in range(num_features)])
    gradients = np.stack([guided_gradients(discriminator, images[indices[k]], layer_name, k)
                          for k in range(num_features)])
    return {"indices": indices, "activations": np.take_along_axis(activations[:, :num_features].T, indices, 1),
            "gradients": gradients, "layer": np.str_(layer_name)}


def random_discriminator(config: Config, seed: int) -> keras.Model:
    """A freshly initialised D of the run's architecture (paper's N(0, 0.02) init), seeded."""
    keras.utils.set_random_seed(seed)  # the initializers draw from Keras's global seed
    return build_discriminator(config, name="random_discriminator")


def gradient_images(gradients: np.ndarray) -> np.ndarray:
    """Gradients [..., S, S, C] -> float images in [-1, 1] for display, each scaled by its own max |g|."""
    axes = tuple(range(gradients.ndim - 3, gradients.ndim))
    scale = np.max(np.abs(gradients), axis=axes, keepdims=True)
    return gradients / np.where(scale > 0, scale, 1.0)


def run_visualize_d(discriminator: keras.Model, random_d: keras.Model, real_images: np.ndarray,
                    num_features: int = 6, top: int = 4) -> dict[str, np.ndarray]:
    """Fig. 5: guided backprop of the first features of the trained D beside those of a random D."""
    trained = visualize_features(discriminator, real_images, num_features, top)
    random = visualize_features(random_d, real_images, num_features, top)
    result = {f"trained_{k}": v for k, v in trained.items()}
    result.update({f"random_{k}": v for k, v in random.items()})
    for name in ("trained", "random"):  # the top images themselves, for the figure (not all real images)
        result[f"{name}_images"] = real_images[result[f"{name}_indices"]]
    return result
