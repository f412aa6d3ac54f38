"""Saved training runs: a folder per run, plain files only (no pickle).

``model.keras``, ``run.json`` (config, features, weights, dataset), ``vocabulary.json``,
``split.json``, ``history.json``, ``metrics.json``, ``per_genre.csv`` and ``test_scores.npy``.
A run folder appears whole or not at all: it is written beside its final place and renamed.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.cache import atomic_save_npy, atomic_write_json, cache_root, load_npy, read_json
from core.data.datasets import GenreVocabulary
from core.errors import CacheError, DatasetError, RunError
from core.model.experiment import ExperimentResult, RUN_VERSION, run_key
from core.features.pipeline import FeatureSet
from core.model.classifier import EpochLog
from core.model.config import TrainConfig

RUN_FILES = ("model.keras", "run.json", "vocabulary.json", "split.json", "metrics.json")


def runs_root() -> Path:
    root = cache_root() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def metrics_record(result: ExperimentResult) -> dict:
    """``metrics.json``: the headline figures with everything needed to read them."""
    features = result.features
    return {
        **result.evaluation.to_dict(),
        "n_train": int(len(result.split.train)),
        "n_validation": int(len(result.split.validation)),
        "genres": list(result.vocabulary.genres),
        "weights": features.weights.label,
        "weights_identity": features.weights.identity,
        "random_weights": features.weights.is_random,
        "feature_view": result.config.feature_view,
        "train_seconds": round(result.seconds, 3),
        "epochs_run": result.classifier.epochs_run_,
        "epochs_total": len(result.history),
        "stopped_by_user": result.stopped_by_user,
    }


def save_run(result: ExperimentResult, folder: Path | None = None, *, dataset_info: dict | None = None) -> Path:
    """Write a run folder atomically; default place is ``runs_root()/<run key>``."""
    key = run_key(result.features, result.config)
    folder = Path(folder) if folder else runs_root() / key
    if folder.exists() and any(folder.iterdir()) and not (folder / "run.json").is_file():
        raise RunError(f"{folder} exists and is not a run folder; refusing to overwrite it",
                       "choose a new or empty folder for --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        _write_run_files(staging, result, key, dataset_info or {})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_run_files(folder: Path, result: ExperimentResult, key: str, dataset_info: dict) -> None:
    features = result.features
    ids = np.asarray(result.ids)
    result.classifier.model_.save(folder / "model.keras")
    atomic_write_json(folder / "run.json", {
        "version": RUN_VERSION,
        "run_key": key,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": result.config.to_dict(),
        "features": {"key": features.key, "view": result.config.feature_view,
                     "n_features": int(result.classifier.n_features_in_),
                     "weights": features.weights.spec, "weights_label": features.weights.label,
                     "weights_identity": features.weights.identity, "random_weights": features.weights.is_random,
                     "precision": features.precision, "image_size": features.config.image_size,
                     "resize": features.config.resize},
        "dataset": dataset_info,
        "seconds": result.seconds,
        "stopped_by_user": result.stopped_by_user,
    })
    atomic_write_json(folder / "vocabulary.json", {"genres": list(result.vocabulary.genres)})
    atomic_write_json(folder / "split.json", {
        "train": ids[result.split.train].tolist(), "validation": ids[result.split.validation].tolist(),
        "test": ids[result.split.test].tolist()})
    atomic_write_json(folder / "history.json", [vars(entry) for entry in result.history])
    atomic_write_json(folder / "metrics.json", metrics_record(result))
    result.evaluation.per_genre.to_csv(folder / "per_genre.csv", index=False)
    atomic_save_npy(folder / "test_scores.npy", result.test_scores.astype(np.float32))


@dataclass
class Run:
    folder: Path
    info: dict
    config: TrainConfig
    vocabulary: GenreVocabulary
    split: dict[str, list[str]]
    metrics: dict
    history: list[EpochLog] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.info.get("run_key", self.folder.name)

    @property
    def features_info(self) -> dict:
        return self.info["features"]

    def model(self):
        import keras

        from core.model.classifier import custom_layers

        custom_layers()
        try:
            return keras.models.load_model(self.folder / "model.keras", compile=False, safe_mode=True)
        except Exception as err:
            raise RunError(f"cannot load the model of run {self.folder}: {err}",
                           "the run folder is damaged; delete it and train again") from err

    def label(self) -> str:
        """A one-line description for menus: when, what, how good."""
        config, metrics = self.config, self.metrics
        created = self.info.get("created", "")[:16].replace("T", " ")
        hidden = "→".join(str(size) for size in config.hidden)
        ensemble = f" ×{config.ensemble}" if config.ensemble > 1 else ""
        score = metrics.get("precision_at_k")
        score_text = f"P@{config.k} {score:.3f}" if score is not None else f"P@{config.k} n/a"
        random = " · RANDOM weights" if metrics.get("random_weights") else ""
        return (f"{created} · {config.feature_view} · {hidden}{ensemble} · {config.optimizer} "
                f"{config.learning_rate:g} · {score_text}{random}")

    def hidden_activations(self, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Last hidden layer activations for rows of the run's feature view (first member of an ensemble)."""
        from core.model.classifier import hidden_model

        encoder = hidden_model(self.model(), self.config)
        blocks = [np.asarray(encoder.predict_on_batch(np.asarray(X[start:start + batch_size], dtype=np.float32)))
                  for start in range(0, len(X), batch_size)]
        return np.concatenate(blocks).astype(np.float32)

    def test_scores(self) -> np.ndarray:
        shape = (len(self.split["test"]), len(self.vocabulary))
        try:
            return np.asarray(load_npy(self.folder / "test_scores.npy", shape=shape, dtype="float32", mmap=False))
        except (CacheError, FileNotFoundError) as err:
            raise RunError(f"run {self.folder} has no valid test_scores.npy ({err})") from err

    def per_genre(self):
        import pandas as pd

        return pd.read_csv(self.folder / "per_genre.csv")

    def check_features(self, features: FeatureSet) -> None:
        """Refuse to apply this run to features it was not trained on."""
        expected = self.features_info
        if features.weights.identity != expected["weights_identity"]:
            raise RunError(f"run {self.folder.name} was trained on features from {expected['weights_label']}, "
                           f"not {features.weights.label}", "extract features with the run's weights")
        missing = set(self.split["test"]) - set(features.ids)
        if missing:
            raise RunError(f"run {self.folder.name} was trained on another dataset: {len(missing)} of its "
                           f"test posters are not in these features", "pick the dataset the run was trained on")


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"run folder {folder} does not exist", "train one with: python -m core train --out DIR")
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise RunError(f"run folder {folder} is incomplete: missing {', '.join(missing)}")
    try:
        info = read_json(folder / "run.json")
        vocabulary = GenreVocabulary(read_json(folder / "vocabulary.json")["genres"])
        split = read_json(folder / "split.json")
        metrics = read_json(folder / "metrics.json")
        history_path = folder / "history.json"
        history = [EpochLog(**entry) for entry in read_json(history_path)] if history_path.exists() else []
        config = TrainConfig.from_dict(info["config"])
    except (CacheError, DatasetError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"run folder {folder} has damaged metadata: {err}") from err
    if metrics.get("genres") != list(vocabulary.genres):
        raise RunError(f"run {folder}: metrics.json and vocabulary.json disagree on the genre order")
    return Run(folder, info, config, vocabulary, split, metrics, history)


def list_runs(root: Path | None = None) -> list[Run]:
    runs = []
    for folder in sorted((root or runs_root()).iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                runs.append(load_run(folder))
            except RunError:
                continue
    return sorted(runs, key=lambda run: run.info.get("created", ""), reverse=True)


def runs_for_dataset(root: Path, runs_folder: Path | None = None) -> list[Run]:
    """Saved runs trained on the dataset folder ``root``, newest first."""
    wanted = str(Path(root).resolve())
    return [run for run in list_runs(runs_folder) if (run.info.get("dataset") or {}).get("root") == wanted]


def find_run(features: FeatureSet, config: TrainConfig, root: Path | None = None) -> Run | None:
    """The saved run for exactly these features and this configuration, if any."""
    folder = (root or runs_root()) / run_key(features, config)
    try:
        return load_run(folder)
    except RunError:
        return None


def delete_run(folder: Path) -> None:
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise RunError(f"{folder} is not a run folder; refusing to delete it")
    shutil.rmtree(folder)

