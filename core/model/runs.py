"""Saved training runs: a folder per run, plain files only (no pickle).

``model.keras``, ``run.json`` (config, features and their weights, dataset, the labels' key), ``vocabulary.json``,
``split.json``, ``history.json``, ``metrics.json`` (the evaluation and training figures),
``per_genre.csv`` and ``test_scores.npy``, listed in ``manifest.json`` (``core.outputs``). Saving over an
earlier run replaces only those files, each atomically, with ``run.json`` removed first and written last
(meanwhile ``load_run`` refuses the folder as incomplete), and keeps every other file. ``runs_table`` lays runs side by side,
one column per training option.
"""
from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collections import Counter
from typing import Mapping, Sequence

from core.analysis.metrics import EvaluationSummary
from core.cache import atomic_save_npy, atomic_write_json, cache_root, load_npy, make_dirs, read_json
from core.data.datasets import GenreVocabulary
from core.errors import CacheError, ConfigError, DatasetError, RunError
from core.features.pipeline import FeatureConfig, FeatureSet
from core.features.weights import Weights
from core.model.classifier import EpochLog
from core.features.weights import same_weights
from core.model.config import OPTIONS_BY_NAME, TRAIN_OPTIONS, TrainConfig, applies
from core.model.experiment import DatasetInfo, ExperimentResult, LabelsInfo, RUN_VERSION, labels_info, run_key
from core.outputs import MANIFEST_FILE, OutputFolder, OutputKind, check_output, claim, claimed, read_manifest

RUN_FILES = ("model.keras", "run.json", "vocabulary.json", "split.json", "metrics.json")
METRIC_COLUMNS = ("precision@k", "recall@k", "precision@k − prior", "micro F1", "macro F1", "mean AP")
SPLIT_PARTS = ("train", "validation", "test")
FEATURE_FIELDS = ("weights", "precision", "image_size", "resize")
COMPARE_FIRST = ("learning_rate", "ridge")
"""The option a comparison chart opens on: the networks' learning rate, else the kernel head's ridge."""


def comparable_columns(configs: Sequence[TrainConfig]) -> list[str]:
    """The run table's columns worth an axis for runs of ``configs``: the options that apply to at least one
    of them (a kernel run has no learning rate, a network no ridge), the features, the epochs run (networks
    only) and the training time."""
    def used(name: str) -> bool:
        return any(applies(name, config) for config in configs)

    options = [option.column for option in TRAIN_OPTIONS if used(option.name)]
    return [*options, "features", *(["epochs run"] if used("epochs") else []), "train seconds"]


def first_comparable(columns: Sequence[str]) -> int:
    """The index in ``columns`` of the axis a comparison chart opens on (``COMPARE_FIRST``)."""
    first = [OPTIONS_BY_NAME[name].column for name in COMPARE_FIRST if OPTIONS_BY_NAME[name].column in columns]
    return list(columns).index(first[0]) if first else 0


def runs_root() -> Path:
    return make_dirs(cache_root() / "runs")


def metrics_record(result: ExperimentResult) -> dict:
    """``metrics.json``: the headline figures with everything needed to read them."""
    return {
        **result.evaluation.to_dict(),
        "n_train": int(len(result.split.train)),
        "n_validation": int(len(result.split.validation)),
        "genres": list(result.vocabulary.genres),
        "train_seconds": round(result.seconds, 3),
        "epochs_run": result.classifier.epochs_run_,
        "epochs_total": len(result.history),
        "stopped_by_user": result.stopped_by_user,
    }


def save_run(result: ExperimentResult, folder: Path | OutputFolder | None = None, *,
             dataset_info: DatasetInfo | Mapping | None = None) -> Path:
    """Write a run folder; default place is ``runs_root()/<run key>``, else ``folder`` (a path, or the
    output a command claimed with ``claim_run_folder`` before its work).

    Only the files of a run are written or replaced (see the module docstring). A save to a path waits
    while another saves there (two sessions saving the same run into the cache); a command that must
    refuse instead claims its folder first. ``dataset_info`` replaces the result's own
    record of its dataset (for runs imported from elsewhere).
    """
    key = run_key(result.features, result.config, result.labels)
    if dataset_info is not None and not isinstance(dataset_info, DatasetInfo):
        dataset_info = DatasetInfo.from_dict(dict(dataset_info))
    with claimed(folder or runs_root() / key, RUN_OUTPUT, wait=True) as output:
        output.replace_with(lambda staging: _write_run_files(staging, result, key, dataset_info or result.dataset))
    return output.root


def claim_run_folder(folder: str | Path):
    """Hold ``folder`` for a run until the block ends: refused before any work if it is a link, under a
    file, a file, another command's, or a non-empty folder that is not a run's."""
    return claim(folder, RUN_OUTPUT)


def check_run_destination(folder: str | Path) -> None:
    """Raise what ``claim_run_folder`` would raise, changing nothing."""
    check_output(folder, RUN_OUTPUT)


def run_files(folder: Path) -> list[str]:
    """The names of the files ``save_run`` wrote in ``folder`` (its manifest's, else a run's names there)."""
    listed = read_manifest(folder, kind=RUN_OUTPUT.name)
    names = listed - {MANIFEST_FILE} if listed is not None else legacy_run_files(folder) or set()
    return sorted(names)


def legacy_run_files(folder: Path) -> set[str] | None:
    """A run folder saved before manifests: a run.json written by ``save_run`` (a user's own does not
    count) makes the files named as a run's ours; any other file there stays the user's."""
    if not _is_run_json(folder / "run.json"):
        return None
    return {name for name in RUN_WRITTEN if (folder / name).is_file()}


RUN_WRITTEN = (*RUN_FILES, "history.json", "per_genre.csv", "test_scores.npy", "test_scores.npy.sha256")
RUN_OUTPUT = OutputKind("run", RunError, "give --out a new or empty folder, or the folder of an earlier run "
                        "to replace it", marker="run.json", legacy=legacy_run_files)


def _is_run_json(path: Path) -> bool:
    try:
        info = read_json(path)
    except (FileNotFoundError, CacheError):
        return False
    return isinstance(info, dict) and "run_key" in info and "version" in info


def _write_run_files(folder: Path, result: ExperimentResult, key: str, dataset_info: DatasetInfo) -> None:
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
                     "resize": features.config.resize, "geometry": features.config.geometry,
                     "backbone": features.config.backbone, "storage": features.config.stored},
        "dataset": dataset_info.to_dict(),
        "labels": result.labels.to_dict(),
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
    cache_token: tuple = ()
    """Changes when the run folder is replaced: the key for caches of anything read from the run."""

    @property
    def key(self) -> str:
        return self.info.get("run_key", self.folder.name)

    @property
    def created(self) -> str:
        """When the run was saved (ISO 8601, UTC); empty for runs that do not say."""
        return self.info.get("created", "")

    @property
    def features_info(self) -> dict:
        return self.info["features"]

    @property
    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo.from_dict(self.info.get("dataset"))

    @property
    def labels_info(self) -> LabelsInfo | None:
        """The labels the run was trained and scored on; ``None`` for runs saved before runs recorded them."""
        return LabelsInfo.from_dict(self.info.get("labels"))

    def trained_on(self, labels: LabelsInfo) -> bool:
        """Whether the run answers for ``labels`` (a run that does not record its labels never does)."""
        trained = self.labels_info
        return trained is not None and trained.key == labels.key

    def labels_in(self, dataset) -> LabelsInfo:
        """Today's labels of the run's posters in ``dataset``, in the dataset's order as features are: equal to
        the run's own when none of its posters was relabelled, removed or moved in labels.csv."""
        posters = {id_ for part in SPLIT_PARTS for id_ in self.split[part]}
        return labels_info(dataset, [id_ for id_ in dataset.ids if id_ in posters])

    @property
    def evaluation(self) -> EvaluationSummary:
        return EvaluationSummary.from_dict(self.metrics)

    @property
    def weights(self) -> Weights:
        """The VGG16 weights of the run's features (``run.json``; ``metrics.json`` of older runs)."""
        features, old = self.info.get("features", {}), self.metrics
        spec = features.get("weights") or ("none" if old.get("random_weights") else "")
        kind = spec if spec in ("none", "imagenet") else "file"
        return Weights(kind, features.get("weights_identity", old.get("weights_identity", "")),
                       features.get("weights_label", old.get("weights", spec)),
                       Path(spec) if kind == "file" and spec else None)

    @property
    def feature_config(self) -> FeatureConfig:
        """The extraction options of the run's features (runs saved before geometry and backbone existed
        were VGG16 on the tutorial geometry)."""
        info = self.features_info
        defaults = FeatureConfig()
        return FeatureConfig(weights=self.weights.spec, precision=info.get("precision", defaults.precision),
                             image_size=info.get("image_size", defaults.image_size),
                             resize=info.get("resize", defaults.resize),
                             storage=info.get("storage", defaults.storage),
                             geometry=info.get("geometry", defaults.geometry),
                             backbone=info.get("backbone", defaults.backbone))

    @property
    def features_label(self) -> str:
        """The backbone and input geometry, e.g. "VGG16, tutorial 224x224"."""
        return self.feature_config.label

    @property
    def train_seconds(self) -> float | None:
        return self.metrics.get("train_seconds")

    def summary(self) -> str:
        """One line: every option, the epochs run, the split sizes, the training time and the weights."""
        config, metrics, n_test = self.config, self.metrics, self.evaluation.n_test
        if config.ensemble > 1:
            split = (f"{metrics.get('n_train')} train posters in {config.ensemble} folds (each network "
                     f"validates on one) / {n_test} test posters")
        else:
            split = f"{metrics.get('n_train')} train / {metrics.get('n_validation')} validation / {n_test} test posters"
        options = [option.describe(getattr(config, option.name)) for option in TRAIN_OPTIONS
                   if option.name not in ("epochs", "validation_split") and applies(option.name, config)]
        seconds = f"{self.train_seconds:.1f} s" if self.train_seconds is not None else None
        parts = [*options, self.training_text(), split, seconds, self.features_label, self.weights.label]
        return " · ".join(part for part in parts if part)

    def epochs_text(self) -> str:
        return epochs_text(self.history, self.config, self.metrics.get("epochs_run"))

    def training_text(self) -> str:
        return training_text(self.history, self.config, self.metrics.get("epochs_run"))

    def model(self):
        import zipfile

        import keras

        from core.model.classifier import custom_layers
        from core.model.kernel import kernel_layer

        custom_layers()
        kernel_layer()
        if not zipfile.is_zipfile(self.folder / "model.keras"):
            raise RunError(f"cannot load the model of run {self.folder}: model.keras is not a Keras archive "
                           "(not a zip file)", "the run folder is damaged; delete it and train again")
        try:
            return keras.models.load_model(self.folder / "model.keras", compile=False, safe_mode=True)
        except Exception as err:
            raise RunError(f"cannot load the model of run {self.folder}: {err}",
                           "the run folder is damaged; delete it and train again") from err

    def label(self) -> str:
        """A one-line description for menus: when, what, how good."""
        config = self.config
        created = self.created[:16].replace("T", " ")
        hidden = "→".join(str(size) for size in config.hidden)
        ensemble = f" ×{config.ensemble}" if config.ensemble > 1 else ""
        score = self.evaluation.precision_at_k.value
        score_text = f"P@{config.k} {score:.3f}" if np.isfinite(score) else f"P@{config.k} n/a"
        random = " · RANDOM weights" if self.weights.is_random else ""
        if config.head == "kernel":
            head = f"kernel γ {config.kernel_gamma:g} ridge {config.ridge:g}"
        else:
            head = f"{hidden}{ensemble} · {config.optimizer} {config.learning_rate:g}"
        return f"{created} · {config.feature_view} · {head} · {score_text}{random}"

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

        # genres are names: "NA", "None", "nan" or "1" stay text; only an empty cell is a missing number
        return pd.read_csv(self.folder / "per_genre.csv", dtype={"genre": str}, keep_default_na=False,
                           na_values=[""])

    def check_features(self, features: FeatureSet) -> None:
        """Refuse to apply this run to features it was not trained on."""
        expected = self.weights
        if not same_weights(features.weights.identity, expected.identity):
            raise RunError(f"run {self.folder.name} was trained on features from {expected.label}, "
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
        EvaluationSummary.from_dict(metrics)
        token = (str(folder), info.get("created", ""), (folder / "run.json").stat().st_mtime_ns)
    except (CacheError, DatasetError, KeyError, TypeError, ValueError, AttributeError, OSError) as err:
        raise RunError(f"run folder {folder} has damaged metadata: {err}",
                       "delete the run folder and train again") from err
    if metrics.get("genres") != list(vocabulary.genres):
        raise RunError(f"run {folder}: metrics.json and vocabulary.json disagree on the genre order")
    return Run(folder, info, config, vocabulary, split, metrics, history, token)


def _check_run_documents(info, genres, split, metrics, history) -> None:
    """Valid JSON of the wrong shape (a list for an object, a number for ids) is damage too."""
    problems = []
    features = info.get("features") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or not isinstance(features, dict):
        problems.append("run.json must hold an object with config and features objects")
    elif missing := [name for name in FEATURE_FIELDS if name not in features]:
        problems.append(f"run.json features lack {', '.join(missing)}")
    elif "weights_identity" not in features and not (isinstance(metrics, dict) and "weights_identity" in metrics):
        problems.append("neither run.json nor metrics.json names the weights' identity")
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
    return sorted(runs, key=lambda run: run.created, reverse=True)


def runs_for_dataset(root: Path, runs_folder: Path | None = None) -> list[Run]:
    """Saved runs trained on the dataset folder ``root``, newest first."""
    wanted = str(Path(root).resolve())
    return [run for run in list_runs(runs_folder) if run.dataset_info.root == wanted]


def find_run(features: FeatureSet, config: TrainConfig, labels: LabelsInfo, root: Path | None = None) -> Run | None:
    """The saved run for exactly these features, these labels and this configuration, if any."""
    folder = (root or runs_root()) / run_key(features, config, labels)
    try:
        run = load_run(folder)
    except RunError:
        return None
    return run if run.trained_on(labels) else None


RETRAIN_NOTE = "Its figures answer for the labels it was trained on, not today's; train it again for today's labels."


def labels_note(run: Run, current: LabelsInfo, consequence: str = RETRAIN_NOTE) -> str | None:
    """``None`` when ``run`` was trained on the ``current`` labels; else which labels it was trained on and
    ``consequence``."""
    trained = run.labels_info
    if trained is None:
        return (f"This run was saved before runs recorded their labels, so it may have been trained on other genres "
                f"than today's labels ({current.describe()}); it is never reused. {consequence}")
    if trained.key == current.key:
        return None
    if (trained.n_posters, trained.genres) == (current.n_posters, current.genres):
        what = (f"the same {current.n_posters:,} posters and {len(current.genres)} genres, but some posters' genres "
                "were different then")
    else:
        what = f"{trained.describe()}; today's labels: {current.describe()}"
    return f"This run was trained on other labels than today's: {what}. {consequence}"


def labels_state(run: Run, current: LabelsInfo) -> str:
    """The run table's ``labels`` cell: ``today's``, ``other`` or ``not recorded``."""
    if run.labels_info is None:
        return "not recorded"
    return "today's" if run.trained_on(current) else "other"


def delete_run(folder: Path) -> None:
    """Delete the files ``save_run`` wrote in ``folder`` (and the folder once empty); any other file stays."""
    folder = Path(folder)
    if not (folder / "run.json").is_file():
        raise RunError(f"{folder} is not a run folder; refusing to delete it")
    with claim_run_folder(folder) as output:
        for name in sorted([*run_files(folder), MANIFEST_FILE], key=lambda name: name != "run.json"):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            output.root.rmdir()



def epochs_per_member(history: Sequence[EpochLog]) -> list[int]:
    counts = Counter(entry.member for entry in history)
    return [counts[member] for member in sorted(counts)]


def epochs_text(history: Sequence[EpochLog], config: TrainConfig, fallback: int | None = None) -> str:
    """``12/60``, or ``9–14/60 ×5`` for an ensemble whose members stopped at different epochs; ``—`` for the
    kernel head, which has no epochs."""
    if config.head == "kernel":
        return "—"
    counts = epochs_per_member(history) or [fallback if fallback is not None else "?"]
    ran = f"{min(counts)}–{max(counts)}" if len(set(counts)) > 1 else str(counts[0])
    return f"{ran}/{config.epochs}" + (f" ×{len(counts)}" if len(counts) > 1 else "")


def training_text(history: Sequence[EpochLog], config: TrainConfig, fallback: int | None = None) -> str:
    """How the run trained, for a sentence: ``12/60 epochs`` or ``closed-form fit (no epochs)``."""
    if config.head == "kernel":
        return "closed-form fit (no epochs)"
    return f"{epochs_text(history, config, fallback)} epochs"


def created_label(run: Run) -> str:
    """The run's save time in local time, ``YYYY-MM-DD HH:MM``."""
    try:
        return dt.datetime.fromisoformat(run.created).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return "?"


def _table_value(option, config: TrainConfig):
    """An option's cell: blank where it has no effect on the run (the other head's options)."""
    if not applies(option.name, config):
        return None
    value = getattr(config, option.name)
    return option.format(value, "→") if option.kind == "int_list" else value


def runs_table(runs: Sequence[Run], current: LabelsInfo | None = None):
    """One row per run: when, every training option (``TRAIN_OPTIONS``' columns), epochs run and the
    metrics beside the frequency prior; ``run`` holds the menu label. With ``current`` labels, a ``labels``
    column says whether each run was trained on them (``labels_state``)."""
    import pandas as pd

    rows = []
    for run in runs:
        evaluation, per_member = run.evaluation, epochs_per_member(run.history)
        precision, prior = evaluation.precision_at_k.value, evaluation.prior_precision_at_k.value
        options = {option.column: _table_value(option, run.config) for option in TRAIN_OPTIONS}
        rows.append({
            "created": created_label(run), **options, "epochs": run.epochs_text(),
            "epochs run": sum(per_member) / len(per_member) if per_member else run.metrics.get("epochs_run"),
            "precision@k": precision, "prior": prior, "precision@k − prior": precision - prior,
            "recall@k": evaluation.recall_at_k.value, "micro F1": evaluation.micro_f1,
            "macro F1": evaluation.macro_f1, "mean AP": evaluation.mean_average_precision,
            "train seconds": run.train_seconds, "features": run.features_label, "weights": run.weights.label,
            **({"labels": labels_state(run, current)} if current is not None else {}),
            "run": run.label(),
        })
    return pd.DataFrame(rows)
