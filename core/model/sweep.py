"""Sweeps: one base configuration, one or more options each given a list of values, optionally several
seeds; every combination is trained (or read back when it was trained before) and tabulated.
"""
from __future__ import annotations

import csv
import itertools
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from core.cache import atomic_write_text
from core.errors import TrainingError
from core.outputs import OutputFolder, OutputKind, check_output, claim, claimed
from core.progress import Progress, ProgressFn
from core.model.config import (OPTIONS_BY_NAME, TRAIN_OPTIONS, TrainConfig, TrainOption, applies, check_config,
                               settled)

SWEEP_TABLE = "sweep.csv"
MAX_RUNS = 200
LIST_SEPARATOR = ";"
SWEEPABLE = tuple(option.name for option in TRAIN_OPTIONS if option.name != "seed")


def sweep_option(name: str) -> TrainOption:
    """The option a sweep names by field name (``learning_rate``) or by CLI flag (``lr``, ``batch-size``)."""
    wanted = name.strip().lstrip("-").replace("-", "_")
    for option in TRAIN_OPTIONS:
        if wanted == option.name or wanted in (flag.lstrip("-").replace("-", "_") for flag in option.flags):
            return option
    raise TrainingError(f"{name!r} is not a training option",
                        f"choose from {', '.join(OPTIONS_BY_NAME)} (or a CLI flag such as lr)")


def parse_values(name: str, text: str) -> tuple[Any, ...]:
    """The values of one option from text: comma-separated, or ';'-separated for a list option such as
    hidden sizes (``512;1024,256``). Syntax only; ``check_sweep`` checks the ranges."""
    option = sweep_option(name)
    separator = LIST_SEPARATOR if option.kind == "int_list" else ","
    values = tuple(option.parse(part.strip()) for part in str(text).split(separator) if part.strip())
    if not values:
        raise TrainingError(f"no values given for {option.what}", "e.g. 0.3,0.5,0.7")
    return values


def parse_assignment(text: str) -> tuple[str, tuple[Any, ...]]:
    """``dropout=0.3,0.5,0.7`` (the CLI's ``--set``) as ``("dropout", (0.3, 0.5, 0.7))``."""
    name, equals, values = text.partition("=")
    if not equals:
        raise TrainingError(f"--set {text!r} is not OPTION=VALUES", "e.g. --set dropout=0.3,0.5,0.7")
    return sweep_option(name).name, parse_values(name, values)


def values_text(name: str, values: Sequence[Any]) -> str:
    """The text ``parse_values`` reads back."""
    option = sweep_option(name)
    return (LIST_SEPARATOR if option.kind == "int_list" else ",").join(option.format(value) for value in values)


@dataclass(frozen=True)
class SweepConfig:
    """``grid`` pairs a ``TrainConfig`` field with the values it takes; ``seeds`` repeats every combination."""

    base: TrainConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...] = ()

    @property
    def parameters(self) -> list[str]:
        return [name for name, _ in self.grid]

    def configs(self) -> list[TrainConfig]:
        """Every combination, seeds innermost, in the order given."""
        seeds = self.seeds or (self.base.seed,)
        values = [list(options) for _, options in self.grid]
        return [settled(replace(self.base, **dict(zip(self.parameters, combo)), seed=seed))
                for combo in itertools.product(*values) for seed in seeds]


@dataclass
class SweepResult:
    sweep: SweepConfig
    folders: list[Path] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    stopped_by_user: bool = False
    seconds: float = 0.0


def check_sweep(sweep: SweepConfig) -> list[TrainConfig]:
    """The sweep's configurations, each validated; raises ``TrainingError`` naming the bad value."""
    if not sweep.grid:
        raise TrainingError("a sweep needs at least one option with a list of values",
                            "e.g. --set dropout=0.3,0.5,0.7")
    for name, values in sweep.grid:
        if name not in OPTIONS_BY_NAME:
            raise TrainingError(f"{name!r} is not a training option", f"choose from {', '.join(SWEEPABLE)}")
        if name == "seed":
            raise TrainingError("sweep seeds with the seeds list, not as an option", "e.g. --seeds 0,1,2")
        if not values:
            raise TrainingError(f"option {name!r} has no values to sweep")
    if len(set(sweep.parameters)) != len(sweep.parameters):
        raise TrainingError(f"an option is named twice in the sweep: {sweep.parameters}")
    if "head" not in sweep.parameters:
        for name in sweep.parameters:
            if not applies(name, sweep.base):
                raise TrainingError(f"{OPTIONS_BY_NAME[name].what} has no effect with the {sweep.base.head} head, "
                                    "so every value would train the same model",
                                    f"sweep one of {', '.join(n for n in SWEEPABLE if applies(n, sweep.base))}")
    configs = sweep.configs()
    if len(configs) > MAX_RUNS:
        raise TrainingError(f"the sweep has {len(configs)} runs, more than {MAX_RUNS}",
                            "sweep fewer values or seeds")
    for config in configs:
        try:
            check_config(config)
        except TrainingError as err:
            changed = ", ".join(f"{name}={getattr(config, name)!r}" for name in sweep.parameters)
            raise TrainingError(f"sweep value {changed}: {err.message}", err.hint) from err
    return configs


def run_sweep(dataset, features, sweep: SweepConfig, *, retrain: bool = False,
              on_progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None, on_run: Callable[[Path], None] | None = None,
              train_options: dict | None = None) -> SweepResult:
    """Train every configuration of ``sweep`` into the runs cache, reusing any trained before on the same
    features and labels.

    ``should_stop`` is asked between runs and passed to training, so Stop ends the current run unsaved
    and keeps the finished ones; ``on_run`` hears of each finished run folder as soon as it is there.
    ``train_options`` go to ``run_experiment`` (e.g. ``on_epoch``).
    """
    from core.model.experiment import labels_info, run_experiment
    from core.model.runs import find_run, save_run

    configs = check_sweep(sweep)
    labels = labels_info(dataset, features.ids)
    result = SweepResult(sweep)
    started = time.perf_counter()
    trained_seconds, trained = 0.0, 0
    for index, config in enumerate(configs):
        if should_stop and should_stop():
            result.stopped_by_user = True
            break
        if on_progress:
            left = _seconds_left(configs[index:], features, labels, trained_seconds / trained if trained else None)
            on_progress(_progress(index, len(configs), sum(result.reused), left))
        existing = None if retrain else find_run(features, config, labels)
        if existing is not None:
            result.folders.append(existing.folder)
            result.reused.append(True)
            if on_run:
                on_run(existing.folder)
            continue
        outcome = run_experiment(dataset, features, config, should_stop=should_stop, **(train_options or {}))
        if outcome.stopped_by_user:
            result.stopped_by_user = True
            break
        result.folders.append(save_run(outcome))
        result.reused.append(False)
        if on_run:
            on_run(result.folders[-1])
        trained_seconds += outcome.seconds
        trained += 1
    if on_progress and not result.stopped_by_user:
        on_progress(_progress(len(configs), len(configs), sum(result.reused), 0.0))
    result.seconds = time.perf_counter() - started
    return result


def _progress(done: int, total: int, reused: int, seconds_left: float | None) -> Progress:
    return Progress(done, total, "runs", f"{reused} reused" if reused else "", seconds_left=seconds_left)


def _seconds_left(remaining: Sequence[TrainConfig], features, labels, per_run: float | None) -> float | None:
    from core.model.runs import find_run

    if per_run is None:
        return None
    return per_run * sum(1 for config in remaining if find_run(features, config, labels) is None)


def sweep_table(runs: Sequence, parameters: Sequence[str]) -> pd.DataFrame:
    """One row per run: every option of its configuration and every figure of its metrics.json."""
    rows = []
    for run in runs:
        config = run.config.to_dict()
        config["hidden"] = ",".join(str(size) for size in run.config.hidden)
        metrics = {name: value for name, value in run.metrics.items() if not isinstance(value, (list, dict))}
        rows.append({"run": str(run.folder), **config, **metrics, "swept": ", ".join(parameters)})
    return pd.DataFrame(rows)


def write_sweep(out: Path | OutputFolder, runs: Sequence, parameters: Sequence[str]) -> Path:
    """``out/<combination>/`` (each run's files, linked or copied from the runs cache) and ``out/sweep.csv``.

    ``out`` is a path (waited for while another writes it) or the output ``claim_sweep_folder`` holds;
    only the files of the product's earlier sweep there are replaced or removed (``core.outputs``),
    every other file is kept.
    """
    from core.model.runs import run_files

    table = sweep_table(runs, parameters)
    names = [combination_name(run.config, parameters) for run in runs]
    table.insert(0, "folder", names)

    def write(staging: Path) -> None:
        for run, name in zip(runs, names):
            (staging / name).mkdir(exist_ok=True)
            for file in run_files(run.folder):
                _link_or_copy(str(run.folder / file), str(staging / name / file))
        atomic_write_text(staging / SWEEP_TABLE, table.to_csv(index=False))

    with claimed(out, SWEEP_OUTPUT, wait=True) as output:
        output.replace_with(write)
    return output.root / SWEEP_TABLE


def claim_sweep_folder(out: str | Path):
    """Hold ``out`` for a sweep until the block ends; refused before any training if it is a link, under a
    file, a file, another command's, or a non-empty folder that is not a sweep's."""
    return claim(out, SWEEP_OUTPUT)


def check_sweep_folder(out: str | Path) -> None:
    """Raise what ``claim_sweep_folder`` would raise, changing nothing."""
    check_output(out, SWEEP_OUTPUT)


def legacy_sweep_files(out: Path) -> set[str] | None:
    """A sweep folder written before manifests: a sweep.csv with the product's columns (a user's own
    sweep.csv does not count) and the run files in the combination folders it lists."""
    from core.model.runs import legacy_run_files

    try:
        with open(out / SWEEP_TABLE, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows or rows[0][:2] != ["folder", "run"] or "swept" not in rows[0]:
        return None
    files = {SWEEP_TABLE}
    for name in {row[0] for row in rows[1:] if row}:
        if name and Path(name).name == name and not name.startswith(".") and not (out / name).is_symlink():
            files |= {f"{name}/{file}" for file in legacy_run_files(out / name) or ()}
    return files


SWEEP_OUTPUT = OutputKind("sweep", TrainingError, "choose a new or empty folder for --out, or the folder of an "
                          "earlier sweep to replace it", marker=SWEEP_TABLE, legacy=legacy_sweep_files)


def combination_name(config: TrainConfig, parameters: Sequence[str]) -> str:
    """A folder name for one run of a sweep: ``dropout=0.5_learning_rate=0.001_seed=0``."""
    return "_".join(f"{name}={OPTIONS_BY_NAME[name].format(getattr(config, name), '-')}"
                    for name in (*parameters, "seed"))


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target
