"""core.features.weights.weights_kind: the kind a weights spec names, as the Data page's radio shows it.

Locks in: imagenet/none/random are read case-insensitively and with spaces; anything else is a file
path (not checked); ``resolve_weights`` agrees with it for the built-in kinds.
"""
from __future__ import annotations

import pytest

from core.features.weights import resolve_weights, weights_kind


@pytest.mark.parametrize("spec, kind", [("imagenet", "imagenet"), (" ImageNet ", "imagenet"), ("none", "none"),
                                        ("RANDOM", "none"), ("/no/such/vgg16.h5", "file"), ("vgg.h5", "file")])
def test_weights_kind_reads_the_spec_without_touching_files(spec, kind):
    assert weights_kind(spec) == kind


def test_resolve_weights_agrees_with_weights_kind():
    assert resolve_weights("Random").kind == weights_kind("Random") == "none"
    assert resolve_weights("imagenet").kind == "imagenet"
