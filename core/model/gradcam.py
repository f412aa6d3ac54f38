"""Where the model looks: Grad-CAM heatmaps of a saved run, end to end from the poster's pixels.

The end-to-end model is the run's own chain: image → the backbone (its weights, in float32) → the run's
feature view (flatten / avg / max / avg45 of the top map and the mid-level ones) → the run's network.
Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolution's output by the mean gradient of
the genre's logit over the positions, sums the channels and keeps the positive part. For VGG16 gradients
are taken at ``block5_conv3``, and also at ``block4_conv3`` for a view that reads block4; for
EfficientNet-Lite2 at the head's output (``head_relu``), and also at the last two stages' last expansions
(``block19_expand_relu``, ``block20_expand_relu``) for avg45; the maps are added at ``HEATMAP_SIDE``.

The signed square root (``power_normalize``) has an infinite slope at 0, and the ReLU features are
exactly 0 in many places, so the run's ``SignedSqrt`` is swapped for a copy whose gradient is 0 at 0
and capped at ``0.5 / sqrt(SQRT_FLOOR)`` near it (``guarded_signed_sqrt``); its values are unchanged.

Grad-CAM explains VGG16 and EfficientNet-Lite2 runs (either input geometry): the part of the backbone
above the first explained map is a Keras model of its own, started at that map or, inside a residual
block, at the block's input. A ResNet50 run is refused with a ``RunError``: its maps were never checked
against real weights here.

Heatmaps are cached on disk per (run, poster content, genre).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from core.cache import atomic_save_npy, bytes_sha256, cache_root, load_npy, memo_file_sha256, stable_hash
from core.errors import CacheError, RunError
from core.features.backbones import BACKBONES
from core.model.runs import Run

BLOCK5 = "block5_conv3"
BLOCK4 = "block4_conv3"
VIEW_LAYERS = {"flatten": (BLOCK5,), "avg": (BLOCK5,), "max": (BLOCK5,), "avg45": (BLOCK4, BLOCK5)}
LITE2_HEAD = "head_relu"
BACKBONE_VIEW_LAYERS = {
    "vgg16": VIEW_LAYERS,
    "efficientnet-lite2": {"avg": (LITE2_HEAD,), "max": (LITE2_HEAD,),
                           "avg45": (*BACKBONES["efficientnet-lite2"].mid_layers, LITE2_HEAD)},
}
"""The maps whose gradients make the heatmap, per backbone and feature view: the maps the view pools."""
WALK_FROM = {"block19_expand_relu": "block18_add"}
"""Where the differentiated part of the network starts when it is not the first explained map: the input of
the residual block that map sits inside (its skip connection needs it)."""
HEATMAP_SIDE = 28
SQRT_FLOOR = 1e-3
GRADCAM_VERSION = 1
MEMO_POSTERS = 8

Poster = Union[str, Path, bytes, BinaryIO]


@dataclass
class Heatmap:
    """A Grad-CAM map in [0, 1] (``HEATMAP_SIDE`` square; 1 at its maximum, all 0 when nothing
    raises the genre's probability), for one genre of one poster."""

    values: np.ndarray
    genre: str
    probability: float
    layers: tuple[str, ...]
    seconds: float
    from_cache: bool

    def resized(self, width: int, height: int) -> np.ndarray:
        """The map bilinearly stretched to ``(height, width)``, e.g. to lie over the original poster."""
        from PIL import Image

        image = Image.fromarray(self.values.astype(np.float32), mode="F")
        return np.clip(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)


def localisation_caveat(config) -> str | None:
    """What tests/test_gradcam.py measured about heatmaps of runs trained like ``config`` (a ``TrainConfig``)."""
    if config.head == "kernel":
        return ("Read this heatmap with caution: on synthetic posters with a known shape (ImageNet weights), "
                "kernel-head runs like `fast` put a median 0.33 of the heatmap on a shape covering 25% of the "
                "poster (0.49 on raw features, against 0.58 for networks), and 1 poster in 16 got an empty map: "
                "a kernel's score is not monotone in the activations, which Grad-CAM assumes.")
    if not (config.power_normalize or config.standardize):
        return None
    return ("Read this heatmap with caution: on synthetic posters with a known shape (ImageNet weights), runs "
            "on square-rooted and standardised features, like `recommended`, put a median 0.14 of the heatmap "
            "on a shape covering 25% of the poster, against 0.58 for runs on the raw features.")


def mass_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of a heatmap's total mass that lies inside a boolean ``mask`` of the same shape."""
    total = float(np.sum(heatmap))
    return float(np.sum(heatmap[mask])) / total if total > 0 else 0.0


def overlay(pixels: np.ndarray, heatmap: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The poster ``(h, w, 3)`` uint8 with a heatmap of the same ``(h, w)`` blended on top ("jet"-like
    colours: blue cold → red hot); ``opacity`` 0 shows the poster, 1 only the heatmap."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)[..., None]
    colours = np.clip(np.concatenate([1.5 - np.abs(4 * heat - 3), 1.5 - np.abs(4 * heat - 2),
                                      1.5 - np.abs(4 * heat - 1)], axis=-1), 0.0, 1.0) * 255.0
    alpha = float(np.clip(opacity, 0.0, 1.0))
    return np.clip((1 - alpha) * np.asarray(pixels, dtype=np.float32) + alpha * colours, 0, 255).astype(np.uint8)


class GradCam:
    """Grad-CAM for one saved run; ``heatmap(poster, genre)`` is cached per (run, poster, genre)."""

    def __init__(self, run: Run, weights: str | None = None, *, cache_dir: Path | None = None) -> None:
        from core.model.predict import Predictor

        view = run.config.feature_view
        backbone = run.feature_config.backbone
        if backbone not in BACKBONE_VIEW_LAYERS:
            raise RunError(f"run {run.folder.name} was trained on {run.features_label} features; Grad-CAM here "
                           "explains VGG16 and EfficientNet-Lite2 runs only (with no real "
                           f"{BACKBONES[backbone].label} weights here, its maps were never checked)",
                           "train a run on VGG16 features (--backbone vgg16, the default) to see where it looks")
        view_layers = BACKBONE_VIEW_LAYERS[backbone]
        if view not in view_layers:
            label = BACKBONES[backbone].label
            raise RunError(f"run {run.folder.name} uses feature view {view!r}, which has no {label} layer to explain",
                           f"Grad-CAM works for {label} runs on {', '.join(view_layers)}")
        predictor = Predictor(run, weights)
        self.run = run
        self.view = view
        self.layers = view_layers[view]
        self.start_layer = WALK_FROM.get(self.layers[0], self.layers[0])
        self.feature_config = predictor.feature_config
        self.weights = predictor.weights
        self.model = predictor.model
        self.network = guarded_network(predictor.model)
        self.cache_dir = cache_dir or cache_root() / "gradcam"
        self._base = None
        self._below: dict[str, object] = {}
        self._above = None
        self._memo: dict[str, np.ndarray] = {}

    def heatmap(self, poster: Poster, genre: str | None = None, *, name: str | None = None) -> Heatmap:
        """The Grad-CAM map of ``genre`` (default: the run's top prediction) for a poster file or upload."""
        started = time.perf_counter()
        data, digest = _read(poster)
        genres = self.run.vocabulary.genres
        if genre is not None and genre not in genres:
            raise RunError(f"genre {genre!r} is not one of run {self.run.folder.name}'s genres",
                           f"pick one of {', '.join(genres)}")
        probabilities = self._probabilities(digest, data, name)
        genre = genre or genres[int(np.argmax(probabilities))]
        path = self._path(digest, genre)
        try:
            values = np.asarray(load_npy(path, shape=(HEATMAP_SIDE, HEATMAP_SIDE), dtype="float32", mmap=False))
            from_cache = True
        except (FileNotFoundError, CacheError):
            values = self._compute(self._start(digest, data, name), genres.index(genre))
            atomic_save_npy(path, values)
            from_cache = False
        return Heatmap(values, genre, float(probabilities[genres.index(genre)]), self.layers,
                       time.perf_counter() - started, from_cache)

    def probabilities(self, poster: Poster, *, name: str | None = None) -> dict[str, float]:
        data, digest = _read(poster)
        return dict(zip(self.run.vocabulary.genres, map(float, self._probabilities(digest, data, name))))

    def _path(self, digest: str, genre: str) -> Path:
        key = stable_hash({"run": self.run.key, "created": self.run.info.get("created", ""), "poster": digest,
                           "genre": genre, "weights": self.weights.identity, "version": GRADCAM_VERSION})
        return self.cache_dir / f"{key}.npy"

    def _start(self, digest: str, data: bytes, name: str | None) -> np.ndarray:
        """Backbone activations at the first explained layer, remembered for the last few posters (a new
        genre for the same poster then runs only the top of the chain)."""
        from core.data.images import load_pixels

        if digest not in self._memo:
            config = self.feature_config
            pixels = load_pixels(data, config.input_size, config.resize, name=name)
            while len(self._memo) >= MEMO_POSTERS:
                self._memo.pop(next(iter(self._memo)))
            self._memo[digest] = self._forward(pixels, self.start_layer)
        return self._memo[digest]

    def _probabilities(self, digest: str, data: bytes, name: str | None) -> np.ndarray:
        return np.asarray(self._top(self._start(digest, data, name))["probabilities"])[0]

    def _compute(self, activations: np.ndarray, genre_index: int) -> np.ndarray:
        import tensorflow as tf

        start = tf.constant(activations)
        with tf.GradientTape() as tape:
            tape.watch(start)
            outputs = self._top(start)
            score = outputs["logits"][:, genre_index]
        targets = [outputs[layer] for layer in self.layers]
        gradients = tape.gradient(score, targets)
        maps = [_cam(np.asarray(a)[0], np.asarray(g)[0]) for a, g in zip(targets, gradients)]
        return _normalise(sum(_to_side(m, HEATMAP_SIDE) for m in maps))

    def _backbone(self):
        if self._base is None:
            from core.features.extractor import shared_base

            config = self.feature_config
            self._base = shared_base(self.weights, config.image_size, backbone=config.backbone,
                                     geometry=config.geometry)
        return self._base

    def _forward(self, pixels: np.ndarray, until: str) -> np.ndarray:
        """The backbone from the pixels up to and including layer ``until`` (no gradients needed below it)."""
        import keras

        from core.features.extractor import preprocess

        if until not in self._below:
            base = self._backbone()
            self._below[until] = keras.Model(base.inputs, base.get_layer(until).output)
        x = preprocess(pixels[None], self.feature_config.backbone)
        return np.asarray(self._below[until](x, training=False))

    def _top(self, start) -> dict:
        """The rest of the network from the start layer's output: the explained maps, the pools, the run's
        feature view, the genre logits and probabilities."""
        import keras
        import tensorflow as tf

        base = self._backbone()
        top = base.layers[-1].name
        mid_layers = BACKBONES[self.feature_config.backbone].mid_layers if self.view == "avg45" else ()
        if self._above is None:
            names = [name for name in dict.fromkeys((*self.layers, *mid_layers, top)) if name != self.start_layer]
            outputs = {name: base.get_layer(name).output for name in names}
            self._above = keras.Model(base.get_layer(self.start_layer).output, outputs) if names else _nothing_above
        outputs = {self.start_layer: start, **self._above(start, training=False)}
        view = view_tensor(self.view, outputs[top], *(outputs[name] for name in mid_layers))
        view = tf.cast(view, tf.float32)
        outputs["logits"] = self.network(view, training=False)
        outputs["probabilities"] = self.model(view, training=False)
        return outputs


def _nothing_above(start, training: bool = False) -> dict:
    """The part above the start when the start is the only map needed (a view of the top map alone)."""
    return {}


def view_tensor(view: str, top, *mids):
    """The TensorFlow twin of ``core.features.views.feature_view`` on one batch of maps: the top one
    (VGG16's block5_pool) and the mid-level ones (block4_pool) (a test checks that both give the same numbers)."""
    import tensorflow as tf

    batch = tf.shape(top)[0]
    if view == "flatten":
        return tf.reshape(top, [batch, -1])
    if view == "avg":
        return tf.reduce_mean(top, axis=[1, 2])
    if view == "max":
        return tf.reduce_max(top, axis=[1, 2])
    if view == "avg45":
        return tf.concat([tf.reduce_mean(part, axis=[1, 2]) for part in (*mids, top)], axis=1)
    raise RunError(f"unknown feature view {view!r}", f"choose one of {', '.join(VIEW_LAYERS)}")


def guarded_signed_sqrt(x):
    """``sign(x)·sqrt(|x|)`` with a finite gradient: 0 at 0, at most ``0.5 / sqrt(SQRT_FLOOR)`` elsewhere."""
    import tensorflow as tf

    @tf.custom_gradient
    def function(inputs):
        def gradient(upstream):
            slope = 0.5 * tf.math.rsqrt(tf.maximum(tf.abs(inputs), SQRT_FLOOR))
            return upstream * tf.where(tf.equal(inputs, 0.0), tf.zeros_like(inputs), slope)

        return tf.sign(inputs) * tf.sqrt(tf.abs(inputs)), gradient

    return function(x)


def guarded_network(model):
    """The run's network made explainable: every ``SignedSqrt`` (also inside ensemble members) replaced by
    ``guarded_signed_sqrt``, and the sigmoid of each genre layer dropped, so it returns logits (for an
    ensemble, the mean of its members' logits). Grad-CAM differentiates the logit: a confident poster's
    probability rounds to 1.0 in float32 and has no gradient left. All weights are shared with ``model``."""
    import keras

    from core.model.classifier import custom_layers

    signed_sqrt = custom_layers()

    class GuardedSignedSqrt(keras.layers.Layer):
        def call(self, inputs):
            return guarded_signed_sqrt(inputs)

    class Logits(keras.layers.Layer):
        """The wrapped sigmoid ``Dense`` layer's pre-activation, with its own (shared) weights."""

        def __init__(self, dense, **kwargs):
            super().__init__(**kwargs)
            self.dense = dense

        def call(self, inputs):
            return keras.ops.matmul(inputs, self.dense.kernel) + self.dense.bias

    def clone(layer):
        if isinstance(layer, signed_sqrt):
            return GuardedSignedSqrt(name=layer.name)
        if isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.sigmoid:
            return Logits(layer, name=layer.name)
        return layer

    return keras.models.clone_model(model, recursive=True, clone_function=clone)


def _read(poster: Poster) -> tuple[bytes, str]:
    """The poster's bytes and their sha256 (memoised per file for paths)."""
    if isinstance(poster, (str, Path)):
        return Path(poster).read_bytes(), memo_file_sha256(Path(poster))
    data = poster if isinstance(poster, bytes) else poster.read()
    return data, bytes_sha256(data)


def _cam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    weights = gradients.mean(axis=(0, 1))
    return np.maximum(activations @ weights, 0.0)


def _to_side(cam: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(cam.astype(np.float32), mode="F")
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def _normalise(cam: np.ndarray) -> np.ndarray:
    peak = float(cam.max())
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32)
