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
from core.errors import CacheError, ConfigError, DatasetError, RunError
from core.model.experiment import ExperimentResult, RUN_VERSION, run_key
from core.features.pipeline import FeatureSet
from core.model.classifier import EpochLog
from core.model.config import TrainConfig
from core.features.weights import same_weights

RUN_FILES = ("model.keras", "run.json", "vocabulary.json", "split.json", "metrics.json")
SPLIT_PARTS = ("train", "validation", "test")
FEATURE_FIELDS = ("weights", "weights_label", "weights_identity", "random_weights", "precision", "image_size",
                  "resize")


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
    check_run_destination(folder)
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


def check_run_destination(folder: Path) -> None:
    """Refuse to write a run where it would replace anything but an earlier run of ours.

    A run folder is replaced whole, so a file, or a non-empty folder without a ``run.json`` written by
    ``save_run`` (a user's own ``run.json`` does not count), is refused before any work starts.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder} is a file, not a folder; refusing to replace it with a run",
                       "give --out a new or empty folder")
    if not folder.is_dir() or not any(folder.iterdir()) or _is_run_json(folder / "run.json"):
        return
    names = sorted(entry.name for entry in folder.iterdir())
    listed = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    raise RunError(f"{folder} is not empty and is not a run folder (it holds {listed}); refusing to overwrite it",
                   "give --out a new or empty folder, or the folder of an earlier run to replace it")


def _is_run_json(path: Path) -> bool:
    try:
        info = read_json(path)
    except (FileNotFoundError, CacheError):
        return False
    return isinstance(info, dict) and "run_key" in info and "version" in info


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
            return np.asarray(load_npy(self.folder / "test_scores.npy", shape=shape, dtype="float32", mmap=False,
                                       require_checksum=False))
        except (CacheError, FileNotFoundError) as err:
            raise RunError(f"run {self.folder} has no valid test_scores.npy ({err})") from err

    def check_k(self, k: int | None) -> int:
        """``k`` (the run's own when ``None``) once checked to rank between 1 and every genre of the run."""
        k = self.config.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.vocabulary):
            raise ConfigError(f"k {k} is out of range for a run with {len(self.vocabulary)} genres",
                              f"choose k between 1 and {len(self.vocabulary)}")
        return int(k)

    def per_genre(self):
        import pandas as pd

        return pd.read_csv(self.folder / "per_genre.csv")

    def check_features(self, features: FeatureSet) -> None:
        """Refuse to apply this run to features it was not trained on."""
        expected = self.features_info
        if not same_weights(features.weights.identity, expected["weights_identity"]):
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
        genres = read_json(folder / "vocabulary.json")
        split = read_json(folder / "split.json")
        metrics = read_json(folder / "metrics.json")
        history_path = folder / "history.json"
        history = read_json(history_path) if history_path.exists() else []
        _check_run_documents(info, genres, split, metrics, history)
        vocabulary = GenreVocabulary(genres["genres"])
        history = [EpochLog(**entry) for entry in history]
        config = TrainConfig.from_dict(info["config"])
    except (CacheError, DatasetError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise RunError(f"run folder {folder} has damaged metadata: {err}",
                       "delete the run folder and train again") from err
    if metrics.get("genres") != list(vocabulary.genres):
        raise RunError(f"run {folder}: metrics.json and vocabulary.json disagree on the genre order")
    return Run(folder, info, config, vocabulary, split, metrics, history)


def _check_run_documents(info, genres, split, metrics, history) -> None:
    """Valid JSON of the wrong shape (a list for an object, a number for ids) is damage too."""
    problems = []
    features = info.get("features") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or not isinstance(features, dict):
        problems.append("run.json must hold an object with config and features objects")
    elif missing := [name for name in FEATURE_FIELDS if name not in features]:
        problems.append(f"run.json features lack {', '.join(missing)}")
    if not isinstance(genres, dict) or not _strings(genres.get("genres")):
        problems.append('vocabulary.json must hold {"genres": [names]}')
    if not isinstance(split, dict) or not all(_strings(split.get(part)) for part in SPLIT_PARTS):
        problems.append(f"split.json must hold lists of poster ids named {', '.join(SPLIT_PARTS)}")
    if not isinstance(metrics, dict):
        problems.append("metrics.json must hold an object")
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        problems.append("history.json must hold a list of epoch objects")
    if problems:
        raise ValueError("; ".join(problems))


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


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

