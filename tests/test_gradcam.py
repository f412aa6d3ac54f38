"""Grad-CAM of saved runs (core.model.gradcam).

Locks in: the TensorFlow view equals the cached feature view; the guarded signed square root keeps its
values and has a finite gradient (0 at 0); the guarded network returns the saved network's logits; on
synthetic posters where a genre is a checkerboard square in a fixed place, the genre's heatmap
concentrates on the square (random VGG16 weights: twice the square's share of the map or more, peak in
the square's corner of the poster; ImageNet weights, when the shared file is present: most of the mass);
heatmaps are cached per (run, poster, genre); a genre outside the run's vocabulary is refused; the
overlay blends by opacity.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data.datasets import load_dataset, write_labels
from core.errors import RunError
from core.features.pipeline import FeatureConfig, extract_features
from core.features.views import FEATURE_DIM, feature_view
from core.model.config import PRESETS, TrainConfig
from core.model.experiment import run_experiment
from core.model.gradcam import (HEATMAP_SIDE, GradCam, guarded_network, guarded_signed_sqrt, localisation_caveat,
                                mass_share, overlay, view_tensor)
from core.model.runs import load_run, save_run

SIDE = 224
SQUARE = (24, 24, 96, 96)  # left, top, right, bottom in poster pixels: 10.3% of the poster
LARGE_SQUARE = (32, 32, 144, 144)  # 25% of the poster
N_POSTERS = 32


def _poster(rng: np.random.Generator, square: tuple[int, int, int, int] | None) -> Image.Image:
    """A smooth background of a random colour; "Square" posters add a black-and-white checkerboard square."""
    base = rng.integers(60, 200, size=3)
    pixels = np.clip(base + rng.normal(0, 4, size=(SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
    if square:
        left, top, right, bottom = square
        y, x = np.mgrid[top:bottom, left:right]
        pixels[top:bottom, left:right] = (((x // 8) + (y // 8)) % 2 * 255)[..., None]
    return Image.fromarray(pixels)


def _square_run(root, square, weights: str, *, power_normalize: bool, config: TrainConfig | None = None):
    """A saved avg45 run telling posters with the square from plain ones (all its test posters right);
    by default a small network, or ``config``."""
    (root / "posters").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for index in range(N_POSTERS):
        has_square = index % 2 == 0
        _poster(rng, square if has_square else None).save(root / "posters" / f"p{index}.png")
        rows.append((f"p{index}", f"poster {index}", ("Square",) if has_square else ("Plain",)))
    write_labels(root, rows)
    dataset, _ = load_dataset(root)
    features = extract_features(dataset, FeatureConfig(weights=weights))
    config = config or TrainConfig(feature_view="avg45", hidden=(32,), power_normalize=power_normalize,
                                   standardize=power_normalize, optimizer="adam", learning_rate=1e-3, epochs=30,
                                   batch_size=8, k=1, test_size=0.25)
    result = run_experiment(dataset, features, config)
    assert result.evaluation.to_dict()["precision_at_k"] == 1.0
    return load_run(save_run(result, root / "run")), dataset


def _cells_inside(square: tuple[int, int, int, int], side: int = HEATMAP_SIDE) -> np.ndarray:
    """The heatmap's own cells (``side`` x ``side``) whose centres lie inside the square: the share is
    measured at the map's resolution, so it does not reward bilinear smoothing of the cell edges."""
    left, top, right, bottom = square
    centres = (np.arange(side) + 0.5) * SIDE / side
    mask = np.zeros((side, side), dtype=bool)
    mask[np.ix_((centres >= top) & (centres < bottom), (centres >= left) & (centres < right))] = True
    return mask


def _square_shares(gradcam: GradCam, dataset, square) -> tuple[list[float], float]:
    """The "Square" heatmap's mass share on the square for every poster with one, and the square's share
    of the map's cells."""
    mask = _cells_inside(square)
    shares = []
    for poster in dataset.posters:
        if poster.genres != ("Square",):
            continue
        heatmap = gradcam.heatmap(poster.path, "Square")
        assert heatmap.values.shape == (HEATMAP_SIDE, HEATMAP_SIDE) and heatmap.values.max() == pytest.approx(1.0)
        assert heatmap.probability > 0.5
        shares.append(mass_share(heatmap.values, mask))
    return shares, float(mask.mean())


@pytest.fixture(scope="module")
def square_run(tmp_path_factory):
    """Random VGG16 weights; the run square-roots and standardises its features (as the recommended preset)."""
    return _square_run(tmp_path_factory.mktemp("squares"), SQUARE, "none", power_normalize=True)


@pytest.fixture(scope="module")
def gradcam(square_run, tmp_path_factory):
    run, _ = square_run
    return GradCam(run, cache_dir=tmp_path_factory.mktemp("gradcam"))


def test_view_tensor_matches_the_cached_feature_views():
    rng = np.random.default_rng(0)
    block5 = rng.random((2, 7, 7, 512)).astype(np.float32)
    block4 = rng.random((2, 14, 14, 512)).astype(np.float32)
    rows = np.hstack([block5.reshape(2, -1), block4.mean(axis=(1, 2))])
    assert rows.shape[1] == FEATURE_DIM + 512
    for view in ("flatten", "avg", "max", "avg45"):
        np.testing.assert_allclose(np.asarray(view_tensor(view, block5, block4)), feature_view(rows, view),
                                   rtol=1e-5, atol=1e-6)


def test_guarded_signed_sqrt_keeps_values_and_has_finite_gradients():
    import tensorflow as tf

    x = tf.constant([-4.0, 0.0, 1e-8, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = guarded_signed_sqrt(x)
    gradient = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(y.numpy(), [-2.0, 0.0, 1e-4, 2.0], rtol=1e-5)
    np.testing.assert_allclose(gradient, [0.25, 0.0, 0.5 / np.sqrt(1e-3), 0.25], rtol=1e-4)


def test_guarded_network_returns_the_saved_networks_logits(square_run):
    run, _ = square_run
    model = run.model()
    X = np.abs(np.random.default_rng(1).normal(size=(3, model.input_shape[1]))).astype(np.float32)
    X[:, :100] = 0.0
    logits = np.asarray(guarded_network(model)(X))
    from scipy.special import expit

    np.testing.assert_allclose(expit(logits), np.asarray(model(X)), rtol=1e-5, atol=1e-6)


def test_heatmap_mass_concentrates_on_the_genre_shape_with_random_weights(square_run, gradcam):
    """Measured on the 16 "Square" posters (random weights, 10.3% square = 81 of 784 cells): 0.21 to 0.25 of
    the mass on the square, 2.0 to 2.4 times its share of the map, never "mostly": random filters respond to
    the plain background too (the raw map's floor is about 0.1 of its peak over the whole poster) and blur
    the square beyond its edges (block5's 16-px cells; the peak may sit just outside the square)."""
    _, dataset = square_run
    shares, area = _square_shares(gradcam, dataset, SQUARE)
    assert len(shares) == N_POSTERS // 2
    assert min(shares) >= 1.75 * area, (shares, area)
    for poster in [p for p in dataset.posters if p.genres == ("Square",)]:
        values = gradcam.heatmap(poster.path, "Square").values
        row, column = np.unravel_index(np.argmax(values), values.shape)
        assert row < HEATMAP_SIDE // 2 and column < HEATMAP_SIDE // 2, (poster.id, row, column)


def test_heatmap_mass_falls_mostly_on_the_genre_shape_with_imagenet_weights(imagenet_weights, tmp_path):
    """ImageNet weights, a square covering 25% of the poster, a run without the signed square root and
    standardisation. Measured on 6 posters: 0.57 to 0.77 of the mass on the square (block4_conv3 alone:
    0.61 to 0.83; block5_conv3 alone: about its area share, 0.21 to 0.29, so the avg45 map's localisation
    comes from block4 here). Not asserted because it does not hold: the same posters with the signed square
root and standardisation of the recommended preset put only 0.10 to 0.17 on the square, less than its
area. Grad-CAM credits each channel with gradient x activation and no baseline, and standardisation
divides by each feature's spread over the posters, so channels that fire on every poster's background
(large value, small spread) dominate the map."""
    run, dataset = _square_run(tmp_path / "squares", LARGE_SQUARE, str(imagenet_weights), power_normalize=False)
    shares, area = _square_shares(GradCam(run, str(imagenet_weights), cache_dir=tmp_path / "gradcam"), dataset,
                                  LARGE_SQUARE)
    assert float(np.median(shares)) > 0.5, shares
    assert min(shares) > 1.5 * area, shares


def test_kernel_head_runs_get_heatmaps_on_the_genre_shape(tmp_path):
    """The ``fast`` preset's kernel head is differentiable like a network: same heatmap check as above."""
    from dataclasses import replace

    config = replace(PRESETS["fast"], k=1, test_size=0.25)
    run, dataset = _square_run(tmp_path / "kernel", SQUARE, "none", power_normalize=True, config=config)
    assert run.config.head == "kernel"
    shares, area = _square_shares(GradCam(run, cache_dir=tmp_path / "cams"), dataset, SQUARE)
    assert len(shares) == N_POSTERS // 2 and np.median(shares) >= 1.75 * area, (shares, area)


def test_heatmaps_are_cached_per_run_poster_and_genre(square_run, gradcam):
    _, dataset = square_run
    path = dataset.posters[1].path
    first = gradcam.heatmap(path, "Plain")
    again = gradcam.heatmap(path.read_bytes(), "Plain")
    other = gradcam.heatmap(path, "Square")
    assert not first.from_cache and again.from_cache and not other.from_cache
    np.testing.assert_array_equal(first.values, again.values)
    assert len(list(gradcam.cache_dir.glob("*.npy"))) >= 2


def test_default_genre_is_the_top_prediction(square_run, gradcam):
    _, dataset = square_run
    path = dataset.posters[0].path
    probabilities = gradcam.probabilities(path)
    assert gradcam.heatmap(path).genre == max(probabilities, key=probabilities.get) == "Square"


def test_unknown_genre_is_refused(square_run, gradcam):
    _, dataset = square_run
    with pytest.raises(RunError, match="'Horror' is not one of run"):
        gradcam.heatmap(dataset.posters[0].path, "Horror")


def test_overlay_blends_by_opacity():
    pixels = np.full((4, 4, 3), 100, dtype=np.uint8)
    heat = np.ones((4, 4))
    np.testing.assert_array_equal(overlay(pixels, heat, 0.0), pixels)
    hot = overlay(pixels, heat, 1.0)
    assert tuple(hot[0, 0]) == (127, 0, 0)
    assert tuple(overlay(pixels, np.zeros((4, 4)), 1.0)[0, 0]) == (0, 0, 127)


def test_mass_share_counts_the_masked_part():
    heat = np.zeros((2, 2))
    heat[0, 0], heat[1, 1] = 3.0, 1.0
    mask = np.array([[True, False], [False, False]])
    assert mass_share(heat, mask) == pytest.approx(0.75)
    assert mass_share(np.zeros((2, 2)), mask) == 0.0


def test_heatmaps_of_square_rooted_standardised_runs_carry_the_measured_caveat():
    """The kernel head's figures, measured once with ``_square_run(..., config=fast)`` on LARGE_SQUARE with
    ImageNet weights and ``mass_share`` over its 16 "Square" posters: ``fast`` median 0.33 (0.10-0.54, one
    empty map), the same head on raw features 0.49. Not an asserted test: on the toy set's 24 training
    posters the kernel gets only 0.625 of the test posters right, where ``_square_run`` requires all."""
    assert "0.14" in localisation_caveat(PRESETS["recommended"])
    assert "0.33" in localisation_caveat(PRESETS["fast"])
    assert localisation_caveat(TrainConfig(feature_view="avg45")) is None


def test_a_fresh_explainer_runs_the_backbone_the_extraction_built(square_run, monkeypatch, tmp_path):
    """Grad-CAM after an extraction in the same process builds no second backbone and loads no weights
    (1.3 s of a first EfficientNet-Lite2 heatmap), and its maps are the same as before."""
    from core.features import extractor

    run, dataset = square_run
    expected = GradCam(run, cache_dir=tmp_path / "before").heatmap(dataset.posters[0].path, "Square").values
    monkeypatch.setattr(extractor, "load_base", lambda *args, **kwargs: pytest.fail("built a second backbone"))
    again = GradCam(run, cache_dir=tmp_path / "after").heatmap(dataset.posters[0].path, "Square")
    assert not again.from_cache
    np.testing.assert_allclose(again.values, expected, atol=1e-6)
