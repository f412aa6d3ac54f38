""""See why" on the real dev set: poster mosaic build time, what the clusters are, and Grad-CAM timing.

Prints, for the dev set with the shared ImageNet weights:

- the mosaic of the whole avg45 UMAP map: thumbnails decoded cold (into a temporary folder), then the
  same mosaic from the thumbnail cache (atlas rebuilt) and from the cached atlas (what the
  Clusters page does on a rerun); the ratio is cold / cached;
- the cluster report of the Clusters page: HDBSCAN on the avg45 map and on its PCA scores, the noise
  share, and per cluster its size, the genres enriched in it (ratio, BH q-value) and the visual
  descriptors that differ most (Cohen's d); then how much of the map's structure map neighbours share
  for the best descriptor vs the best genre;
- Grad-CAM per heatmap for the saved ``recommended`` run (avg45; trained and saved in the user's runs
  folder if missing) and a ``tutorial`` run (flatten) trained here on the first ``--tutorial-posters``
  posters: the first heatmap (with the end-to-end model build), further posters, another genre of a
  poster already seen, and a cached read, beside a plain prediction of the same posters (the baseline).

    python -m bench.explain [--dataset DIR] [--weights PATH] [--tutorial-posters N] [--heatmaps N]
                            [--only mosaic,clusters,recommended,tutorial]

Features must be extracted already (python -m core extract --dataset DIR --weights PATH). Visual
descriptors are computed into the user's cache the first time (about 3 minutes for 4,596 posters).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import _common


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def mosaic_report(paths: list[Path], coords: np.ndarray) -> None:
    from core.analysis.mosaic import atlas_file, mosaic_image, mosaic_layout, thumbnail_atlas

    def build(root: Path) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        atlas = thumbnail_atlas(paths, root=root)
        image = mosaic_image(mosaic_layout(coords, columns=40), atlas)
        return image, time.perf_counter() - started

    print(f"\n== Poster mosaic: {len(paths):,} posters, snap layout, 40 columns ==")
    folder = Path(tempfile.mkdtemp(prefix="bench-explain-thumbs-"))
    try:
        image, cold = build(folder)
        atlas_file(paths, root=folder).unlink()
        _, thumbs = build(folder)
        _, cached = build(folder)
        _, again = build(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"image {image.shape[1]}x{image.shape[0]} px")
    print(f"cold (decode every poster):          {cold:7.2f} s")
    print(f"thumbnails cached, atlas rebuilt:    {thumbs:7.2f} s")
    print(f"atlas cached (a page rerun):         {min(cached, again):7.2f} s   "
          f"cold / cached = {cold / min(cached, again):,.0f}x   (target <= 3 s for 5,000 posters)")


def cluster_report(dataset, features, Y: np.ndarray, genres: tuple[str, ...], coords: np.ndarray) -> None:
    from core.analysis.clusters import ALPHA, ClusterConfig, cluster_cards, find_clusters
    from core.analysis.maps import reduce_pca
    from core.features.descriptors import NAMES, dataset_descriptors, map_neighbours, map_structure
    from pages._explain import MAP_NEIGHBOURS, PCA_COMPONENTS

    result, seconds = timed(dataset_descriptors, dataset)
    print(f"\nvisual descriptors: {len(result.ids):,} posters in {seconds:.1f} s "
          f"({result.n_computed:,} computed now, {len(result.failed)} undecodable)")
    descriptors = result.for_ids(features.ids)
    X = features.view("avg45")
    spaces = {"map": coords, "pca": reduce_pca(X, PCA_COMPONENTS)}
    for space, points in spaces.items():
        config = ClusterConfig(space=space)
        clustering, seconds = timed(find_clusters, points, config)
        print(f"\n== HDBSCAN on the avg45 {'UMAP map' if space == 'map' else f'PCA scores ({PCA_COMPONENTS}-d)'} "
              f"(min_cluster_size {config.min_cluster_size}): {clustering.n_clusters} clusters, "
              f"noise {clustering.noise_share:.1%}, {seconds:.2f} s ==")
        cards = cluster_cards(clustering, points, Y, genres, descriptors=descriptors, descriptor_names=NAMES)
        for card in cards:
            table = card.enrichment
            enriched = table[(table["q"] < ALPHA) & (table["ratio"] > 1)].head(3)
            genre_text = "; ".join(f"{row.genre} {row.ratio:.2f}x ({row.with_genre}/{row.size}, q={row.q:.2g})"
                                   for row in enriched.itertuples()) or f"no genre enriched (every q >= {ALPHA:g})"
            descriptor_text = ", ".join(f"{row.descriptor} d={row.effect_size:+.2f} ({row.mean:.3g} vs {row.mean_rest:.3g})"
                                        for row in card.descriptors.head(3).itertuples())
            print(f"{card.name:>10}: {card.size:5,} posters | {genre_text}")
            print(f"{'':>10}  descriptors: {descriptor_text}")
    table = map_structure(map_neighbours(coords, MAP_NEIGHBOURS), descriptors, Y, genres)
    best = table.dropna(subset=["explained"]).groupby("kind")["explained"].max()
    print(f"\n== Is the avg45 map organised by colour or by genre? (r with the mean of {MAP_NEIGHBOURS} map neighbours) ==")
    print(f"most map-shared descriptor r = {best['descriptor']:.2f}; most map-shared genre r = {best['genre']:.2f}")
    print(table.head(12).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def recommended_run(dataset, features):
    from core.model.config import PRESETS
    from core.model.experiment import labels_info, run_experiment
    from core.model.runs import find_run, load_run, save_run

    run = find_run(features, PRESETS["recommended"], labels_info(dataset, features.ids))
    if run is not None:
        print(f"\nrecommended run: saved {run.folder}")
        return run
    result, seconds = timed(run_experiment, dataset, features, PRESETS["recommended"])
    run = load_run(save_run(result))
    print(f"\nrecommended run: trained in {seconds:.0f} s, saved to {run.folder}")
    return run


def tutorial_run(full, weights: str, n: int, folder: Path):
    from core.data.datasets import Dataset
    from core.features.pipeline import FeatureConfig, cached_features
    from core.model.config import PRESETS
    from core.model.experiment import run_experiment
    from core.model.runs import load_run, save_run

    subset = Dataset(full.root, full.posters[:n], full.name)
    features = cached_features(subset, FeatureConfig(weights=weights))
    result, seconds = timed(run_experiment, subset, features, PRESETS["tutorial"])
    print(f"\ntutorial run: trained here on the first {len(subset):,} dev posters in {seconds:.0f} s "
          f"(precision@3 {result.evaluation.precision_at_k.value:.3f})")
    return load_run(save_run(result, folder / "tutorial"))


def gradcam_report(label: str, run, dataset, weights: str, n_heatmaps: int, cache_dir: Path) -> None:
    from core.model.gradcam import GradCam
    from core.model.predict import Predictor

    posters = {poster.id: poster for poster in dataset.posters}
    paths = [posters[id_].path for id_ in run.split["test"] if id_ in posters][: n_heatmaps + 1]
    print(f"\n== Grad-CAM, {label} run ({run.config.feature_view}, {len(run.vocabulary.genres)} genres) ==")
    predictor, build = timed(Predictor, run, weights)
    _, first_prediction = timed(predictor.predict_image, paths[0], paths[0].name)
    predictions = [timed(predictor.predict_image, path, path.name)[1] for path in paths[1:]]
    explainer, setup = timed(GradCam, run, weights, cache_dir=cache_dir)
    first, first_seconds = timed(explainer.heatmap, paths[0])
    further = [timed(explainer.heatmap, path)[0] for path in paths[1:]]
    other_genre = next(genre for genre in run.vocabulary.genres if genre != first.genre)
    second_genre = explainer.heatmap(paths[0], other_genre)
    cached = explainer.heatmap(paths[0], first.genre)
    per_heatmap = float(np.median([heatmap.seconds for heatmap in further]))
    per_prediction = float(np.median(predictions))
    print(f"first heatmap, with the model build:  {setup + first_seconds:6.2f} s "
          f"(GradCam() {setup:.2f} s + heatmap {first_seconds:.2f} s; a first plain prediction: "
          f"{build + first_prediction:.2f} s)")
    print(f"further posters (median of {len(further)}):      {per_heatmap:6.2f} s "
          f"(range {min(h.seconds for h in further):.2f}-{max(h.seconds for h in further):.2f}; "
          f"a plain prediction: {per_prediction:.2f} s, ratio {per_heatmap / per_prediction:.1f}x; "
          "target <= 2 s)")
    print(f"another genre of a poster seen:       {second_genre.seconds:6.2f} s")
    print(f"cached read:                          {cached.seconds:6.3f} s (from cache: {cached.from_cache})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(_common.DEV_SET))
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--tutorial-posters", type=int, default=600,
                        help="posters the tutorial (flatten) run is trained on here (default 600)")
    parser.add_argument("--heatmaps", type=int, default=8, help="further posters timed per run (default 8)")
    parser.add_argument("--only", default="mosaic,clusters,recommended,tutorial",
                        help="comma-separated parts to run (default: all of mosaic, clusters, recommended, tutorial)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))

    from core.analysis.maps import UmapConfig, compute_umap
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, cached_features
    from core.model.experiment import genre_labels

    _common.print_machine()
    dataset, _ = load_dataset(args.dataset)
    features = cached_features(dataset, FeatureConfig(weights=args.weights))
    if features is None:
        sys.exit(f"features are not extracted yet: python -m core extract --dataset {args.dataset} --weights {args.weights}")
    print(f"dataset: {dataset.name}, {len(features.ids):,} posters with features ({features.weights.label})")
    if only & {"mosaic", "clusters"}:
        truth = genre_labels(dataset, features.ids)
        embedding = compute_umap(features.view("avg45"), UmapConfig(), features_key=features.view_key("avg45"))
        print(f"avg45 UMAP map ({'from cache' if embedding.from_cache else 'computed'}) in {embedding.seconds:.1f} s")
        posters = {poster.id: poster for poster in dataset.posters}
        if "mosaic" in only:
            mosaic_report([posters[id_].path for id_ in features.ids], embedding.coords)
        if "clusters" in only:
            cluster_report(dataset, features, truth.Y, truth.vocabulary.genres, embedding.coords)

    scratch = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    try:
        if "recommended" in only:
            gradcam_report("recommended", recommended_run(dataset, features), dataset, args.weights, args.heatmaps,
                           scratch / "gradcam-recommended")
        if "tutorial" in only:
            gradcam_report("tutorial", tutorial_run(dataset, args.weights, args.tutorial_posters, scratch), dataset,
                           args.weights, args.heatmaps, scratch / "gradcam-tutorial")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
