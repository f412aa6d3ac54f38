"""The VGG16 convolutional base as a compiled feature extractor.

One forward pass gives each poster a feature row of ``ROW_DIM`` floats:

- ``[:FEATURE_DIM]``: block5_pool (7x7x512) flattened, exactly the tutorial's 25,088-d vector;
- ``[FEATURE_DIM:]``: block4_pool (14x14x512) averaged over its positions, 512 mid-level features
  (textures, lettering, faces at poster scale) that the top block has already pooled away.
"""
from __future__ import annotations

import functools
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import WeightsError
from core.features.weights import RANDOM_SEED, Weights

FEATURE_SHAPE = (7, 7, 512)
FEATURE_DIM = 7 * 7 * 512
BLOCK4_DIM = 512
ROW_DIM = FEATURE_DIM + BLOCK4_DIM
PRECISIONS = ("auto", "float32", "bfloat16")
_BUILD_LOCK = threading.Lock()


def cpu_has_bf16() -> bool:
    """True where the CPU runs bfloat16 matrix maths natively (AVX-512 BF16 or AMX)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise WeightsError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return precision


@dataclass
class Extractor:
    """``__call__`` maps a uint8/float batch (n, size, size, 3) RGB 0-255 to float32 rows (n, ROW_DIM)."""

    weights: Weights
    precision: str
    image_size: int
    function: object

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return np.asarray(self.function(tf.convert_to_tensor(preprocess(batch))))


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Keras VGG16 preprocessing (RGB→BGR, ImageNet mean) on a fresh float32 copy.

    ``preprocess_input`` works in place on float arrays, so it never sees the caller's array.
    """
    from keras.applications.vgg16 import preprocess_input

    return preprocess_input(np.array(batch, dtype=np.float32, copy=True))


@functools.lru_cache(maxsize=4)
def get_extractor(weights: Weights, precision: str = "auto", image_size: int = 224) -> Extractor:
    """Build (once per process) VGG16 without its top, load the weights and compile the forward pass."""
    import keras
    import tensorflow as tf

    precision = resolve_precision(precision)
    with _BUILD_LOCK:
        base = _load_base(weights, image_size)
        if precision == "bfloat16":
            base = _cast_model(base, "bfloat16")
    base.trainable = False
    both = keras.Model(base.inputs, [base.output, base.get_layer("block4_pool").output])

    def rows(x):
        top, block4 = both(x, training=False)
        top = tf.reshape(tf.cast(top, tf.float32), [tf.shape(x)[0], -1])
        return tf.concat([top, tf.reduce_mean(tf.cast(block4, tf.float32), axis=[1, 2])], axis=1)

    function = tf.function(rows, reduce_retracing=True,
                           input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    return Extractor(weights=weights, precision=precision, image_size=image_size, function=function)


def _load_base(weights: Weights, image_size: int):
    import keras

    shape = (image_size, image_size, 3)
    if weights.kind == "imagenet":
        try:
            return keras.applications.VGG16(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as err:
            raise WeightsError(
                f"could not download the ImageNet VGG16 weights ({type(err).__name__}: {err})",
                "without internet, pass a local file: --weights /path/vgg16_imagenet_notop.weights.h5 "
                "or set POSTER_GENRE_WEIGHTS=/path/to/file") from err
    if weights.kind == "none":
        keras.utils.set_random_seed(RANDOM_SEED)
        return keras.applications.VGG16(weights=None, include_top=False, input_shape=shape)
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=shape)
    try:
        model.load_weights(str(weights.path))
    except Exception as err:
        raise WeightsError(f"{weights.path} is not a VGG16 include_top=False weights file ({err})",
                           "use a Keras VGG16 notop weights file (.h5 or .weights.h5), imagenet or none") from err
    return model


def _cast_model(model, dtype: str):
    import keras

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    cast = keras.models.clone_model(model, clone_function=clone)
    cast.set_weights(model.get_weights())
    return cast
