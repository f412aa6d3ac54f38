"""A convolutional base (``core.features.backbones``) as a compiled feature extractor.

VGG16 on the tutorial's 224x224 squash gives each poster a full feature row of ``ROW_DIM`` floats:

- ``[:FEATURE_DIM]``: block5_pool (7x7x512) flattened, exactly the tutorial's 25,088-d vector;
- ``[FEATURE_DIM:]``: block4_pool (14x14x512) averaged over its positions, 512 mid-level features
  (textures, lettering, faces at poster scale) that the top block has already pooled away.

Any other backbone or geometry gives the backbone's pooled row (``Backbone.pooled_columns``): the
mid-stage map(s) averaged (EfficientNet-Lite2: its last two stages), then the top map averaged and maxed
over its positions.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import WeightsError
from core.features.backbones import BACKBONES, DEFAULT_BACKBONE, DEFAULT_GEOMETRY, has_flatten, input_size
from core.features.backbones import backbone as get_backbone
from core.features.weights import RANDOM_SEED, Weights

FEATURE_SHAPE = (7, 7, 512)
FEATURE_DIM = 7 * 7 * 512
BLOCK4_DIM = 512
ROW_DIM = FEATURE_DIM + BLOCK4_DIM
PRECISIONS = ("auto", "float32", "bfloat16")
_BUILD_LOCK = threading.Lock()


ONEDNN_CAPS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_MIC",
                                      "AVX512_MIC_4OPS", "AVX512_CORE", "AVX512_CORE_VNNI"})
"""Values of oneDNN's ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16``: oneDNN then runs no bfloat16 convolution."""


def cpu_has_bf16() -> bool:
    """True where TensorFlow runs bfloat16 matrix maths natively: the CPU has AVX-512 BF16 or AMX, and
    oneDNN is on and not capped below them (``TF_ENABLE_ONEDNN_OPTS=0``, ``ONEDNN_MAX_CPU_ISA=AVX2``).
    Otherwise TensorFlow emulates bfloat16, slower than float32, so ``auto`` must not choose it; the cap
    also lets one machine run the AVX2-only path (``.ci/avx2-env``)."""
    if onednn_off() or onednn_cap_without_bf16():
        return False
    return cpu_flags_have_bf16()


def onednn_off() -> bool:
    """TensorFlow's oneDNN kernels turned off: bfloat16 then runs, slowly, on TensorFlow's own kernels."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() == "0"


def cpu_flags_have_bf16() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def onednn_cap_without_bf16() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` (or older ``DNNL_MAX_CPU_ISA``) setting when it keeps oneDNN below bfloat16."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return cap if cap in ONEDNN_CAPS_WITHOUT_BF16 else None


def check_bf16_runs() -> None:
    """TensorFlow chooses its oneDNN bfloat16 kernels from the CPU's own flags, and a oneDNN capped below
    bfloat16 then aborts the first convolution: refuse that here, with the way out."""
    cap = onednn_cap_without_bf16()
    if cap and cpu_flags_have_bf16() and not onednn_off():
        name = "ONEDNN_MAX_CPU_ISA" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "DNNL_MAX_CPU_ISA"
        raise WeightsError(f"bfloat16 cannot run with {name}={cap}: TensorFlow picks oneDNN's bfloat16 "
                           "kernels for this CPU and the cap forbids them",
                           f"use --precision float32 (or auto), or unset {name}")


def resolve_precision(precision: str, backbone: str = DEFAULT_BACKBONE) -> str:
    """``auto`` is bfloat16 on a bfloat16 CPU for backbones it speeds up (VGG16's dense convolutions), else
    float32 (EfficientNet-Lite2's depthwise convolutions run slower in bfloat16)."""
    if precision not in PRECISIONS:
        raise WeightsError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if cpu_has_bf16() and get_backbone(backbone).bfloat16_auto else "float32"
    return precision


@dataclass
class Extractor:
    """``__call__`` maps a uint8/float batch (n, height, width, 3) RGB 0-255 to float32 rows (n, dim):
    full rows (``ROW_DIM``) for VGG16 on the tutorial geometry, else the backbone's pooled rows."""

    weights: Weights
    precision: str
    image_size: int
    function: object
    backbone: str = DEFAULT_BACKBONE
    geometry: str = DEFAULT_GEOMETRY

    @property
    def full(self) -> bool:
        return has_flatten(self.backbone, self.geometry)

    @property
    def dim(self) -> int:
        return ROW_DIM if self.full else BACKBONES[self.backbone].pooled_dim

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return np.asarray(self.function(tf.convert_to_tensor(preprocess(batch, self.backbone))))


def preprocess(batch: np.ndarray, backbone: str = DEFAULT_BACKBONE) -> np.ndarray:
    """The backbone's preprocessing (VGG16 and ResNet50: RGB→BGR, ImageNet mean; EfficientNet-Lite2:
    (x - 127) / 128) on a fresh float32 copy.

    Keras' ``preprocess_input`` works in place on float arrays, so it never sees the caller's array.
    """
    import importlib

    module = importlib.import_module(get_backbone(backbone).preprocess_module)
    return module.preprocess_input(np.array(batch, dtype=np.float32, copy=True))


@functools.lru_cache(maxsize=4)
def get_extractor(weights: Weights, precision: str = "auto", image_size: int = 224, *,
                  backbone: str = DEFAULT_BACKBONE, geometry: str = DEFAULT_GEOMETRY) -> Extractor:
    """Build (once per process) the backbone without its top, load the weights and compile the forward pass."""
    import keras
    import tensorflow as tf

    precision = resolve_precision(precision, backbone)
    base = shared_base(weights, image_size, backbone=backbone, geometry=geometry)
    if precision == "bfloat16":
        check_bf16_runs()
        with _BUILD_LOCK:
            base = _cast_model(base, "bfloat16")
        base.trainable = False
    mids = [base.get_layer(name).output for name in get_backbone(backbone).mid_layers]
    both = keras.Model(base.inputs, [base.output, *mids])
    full = has_flatten(backbone, geometry)

    def rows(x):
        top, *mids = both(x, training=False)
        top = tf.cast(top, tf.float32)
        mid = tf.concat([tf.reduce_mean(tf.cast(part, tf.float32), axis=[1, 2]) for part in mids], axis=1)
        if full:
            return tf.concat([tf.reshape(top, [tf.shape(x)[0], -1]), mid], axis=1)
        return tf.concat([mid, tf.reduce_mean(top, axis=[1, 2]), tf.reduce_max(top, axis=[1, 2])], axis=1)

    width, height = input_size(geometry, image_size)
    function = tf.function(rows, reduce_retracing=True,
                           input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)])
    return Extractor(weights=weights, precision=precision, image_size=image_size, function=function,
                     backbone=backbone, geometry=geometry)


@functools.lru_cache(maxsize=4)
def shared_base(weights: Weights, image_size: int = 224, *, backbone: str = DEFAULT_BACKBONE,
                geometry: str = DEFAULT_GEOMETRY):
    """``load_base``'s network, frozen, built once per process and shared by everything that only runs it
    forward: the extractor and Grad-CAM. Building EfficientNet-Lite2 and loading its weights is 1.3 s
    (most of a first Grad-CAM heatmap after an extraction in the same server)."""
    with _BUILD_LOCK:
        base = load_base(weights, image_size, backbone=backbone, geometry=geometry)
    base.trainable = False
    return base


def load_base(weights: Weights, image_size: int = 224, *, backbone: str = DEFAULT_BACKBONE,
              geometry: str = DEFAULT_GEOMETRY):
    """The backbone without its top for this input geometry, with ``weights`` loaded (float32)."""
    import importlib

    import keras

    spec = get_backbone(backbone)
    width, height = input_size(geometry, image_size)
    module, _, name = spec.application.rpartition(".")
    build = getattr(importlib.import_module(module), name)
    shape = (height, width, 3)
    if weights.kind != "none" and not spec.keras_application:
        return build(weights="imagenet" if weights.kind == "imagenet" else weights.path, include_top=False,
                     input_shape=shape)
    if weights.kind == "imagenet":
        try:
            return build(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as err:
            raise WeightsError(
                f"could not download the ImageNet {spec.label} weights ({type(err).__name__}: {err})",
                f"without internet, pass a local file: --weights /path/{spec.name}_imagenet_notop.weights.h5 "
                "or set POSTER_GENRE_WEIGHTS=/path/to/file") from err
    if weights.kind == "none":
        keras.utils.set_random_seed(RANDOM_SEED)
        return build(weights=None, include_top=False, input_shape=shape)
    model = build(weights=None, include_top=False, input_shape=shape)
    try:
        model.load_weights(str(weights.path))
    except Exception as err:
        raise WeightsError(f"{weights.path} is not a {spec.label} include_top=False weights file ({err})",
                           f"use a Keras {spec.label} notop weights file ({spec.weights_files}), imagenet or none, "
                           f"or choose the backbone the file belongs to") from err
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
