"""The paper's discriminator features (Radford et al. 2015, section 5.1).

"We use the discriminator's convolutional features from all layers, maxpooling each layer's representation to
produce a 4x4 spatial grid. These features are then flattened and concatenated to form a 28672 dimensional
vector." 28672 = 16 * 1792 = 16 * (256 + 512 + 1024): the paper's 32x32 ImageNet-1k discriminator has three
stride-2 conv layers 32->16->8->4 ending in 1024 maps at 4x4, like its 64x64 nets, i.e. `ndf=256` at
`image_size=32` here. (ndf=128 at 32x32 gives 14,336; the 64x64 net with ndf=128 gives 30,720.)
"""

from __future__ import annotations

import keras
import numpy as np

from dcgan_tf.config import Config
from dcgan_tf.models import discriminator_conv_outputs, discriminator_widths

# Paper: every conv layer is max-pooled to a 4x4 grid.
GRID = 4


def pooled_feature_dims(config: Config, grid: int = GRID) -> int:
    """Length of the pooled feature vector of config's discriminator: sum of D's widths * grid^2."""
    return sum(discriminator_widths(config)) * grid * grid


def build_feature_extractor(discriminator: keras.Model, grid: int = GRID) -> keras.Model:
    """images [B,S,S,C] in [-1,1] -> [B, sum(widths)*grid^2]: every conv block max-pooled to grid x grid."""
    pooled = []
    for output in discriminator_conv_outputs(discriminator):
        size = output.shape[1]
        if size % grid:
            raise ValueError(f"a {size}x{size} discriminator map cannot be max-pooled to a {grid}x{grid} grid; "
                             "use a power-of-two image_size >= 16")
        x = output
        if size > grid:  # non-overlapping windows of side size/grid, so each map becomes exactly grid x grid
            x = keras.layers.MaxPooling2D(pool_size=size // grid, name=f"pool_{output.name}")(x)
        pooled.append(keras.layers.Flatten()(x))
    features = keras.layers.Concatenate(name="d_features")(pooled) if len(pooled) > 1 else pooled[0]
    return keras.Model(discriminator.input, features, name="d_feature_extractor")


def predict_in_batches(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a model (or any callable on a batch) over images in batches, in inference mode; float32 numpy."""
    outputs = [np.asarray(model(images[i:i + batch_size], training=False), dtype=np.float32)
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def discriminator_features(discriminator: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The paper's pooled D features of float images in [-1, 1], shape [N, sum(widths)*16]."""
    return predict_in_batches(build_feature_extractor(discriminator), images, batch_size)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: each image flattened, [N, S*S*C]."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1)
