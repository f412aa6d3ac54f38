"""``python -m core``: the pipeline from the command line (demo, extract, train, evaluate, predict, downloads)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from core.errors import PosterGenreError
from core.progress import ProgressLine
from core.features.ray_engine import ENGINES, RAY_ADDRESS_ENV, engine_for
from core.features.weights import WEIGHTS_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="generate the synthetic demo poster set (offline, seeded)")
    demo.add_argument("--out", type=Path, required=True, help="folder to write posters/ and labels.csv into")
    demo.add_argument("--n", type=int, default=500, help="number of posters (default 500)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    extract = commands.add_parser("extract", help="compute and cache VGG16 features of a dataset")
    _feature_args(extract)
    extract.set_defaults(func=cmd_extract)

    train = commands.add_parser("train", help="extract what is not cached, train, evaluate, save a run")
    _feature_args(train)
    train.add_argument("--out", type=Path, required=True, help="run folder to write")
    _train_args(train)
    train.set_defaults(func=cmd_train)

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
                        help=f"imagenet (download), none (random, tests only) or a weights file path; "
                             f"default ${WEIGHTS_ENV} or imagenet")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--batch-size-extract", type=int, default=32, help="posters per VGG16 batch")
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
    from core.features.views import FEATURE_VIEWS
    from core.model.config import OPTIMIZERS, PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="recommended")
    parser.add_argument("--feature-view", choices=list(FEATURE_VIEWS), default=None)
    parser.add_argument("--hidden", default=None, help="hidden layer sizes, e.g. 1024,256")
    parser.add_argument("--dropout", type=float, default=None, help="dropout after each hidden layer")
    parser.add_argument("--input-dropout", type=float, default=None, help="dropout on the input features")
    parser.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--test-size", type=float, default=None)
    parser.add_argument("--validation-split", type=float, default=None)
    parser.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--k", type=int, default=None, help="top-k for precision/recall (default 3)")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def cmd_demo(args: argparse.Namespace) -> int:
    from core.data.demo import DemoConfig, make_demo_dataset

    line = ProgressLine("generating")
    out = make_demo_dataset(args.out, DemoConfig(n_posters=args.n, seed=args.seed),
                            progress=lambda done, total: line.show(f"[{done}/{total}]", final=done == total))
    print(f"wrote a SYNTHETIC demo dataset of {args.n} posters to {out}")
    return 0


def _load(args: argparse.Namespace):
    from core.data.datasets import load_dataset

    dataset, report = load_dataset(args.dataset)
    for item in report.skipped:
        print(f"skipped {item.id}: {item.reason}", file=sys.stderr)
    kind = "SYNTHETIC " if dataset.synthetic else ""
    print(f"{kind}dataset {dataset.name}: {len(dataset)} posters, {len(dataset.genre_counts())} genres"
          f" ({len(report.skipped)} skipped)")
    return dataset


def _features(args: argparse.Namespace, dataset):
    from core.features.pipeline import FeatureConfig, extract_features
    from core.features.weights import resolve_weights

    config = FeatureConfig(weights=resolve_weights(args.weights).spec, precision=args.precision,
                           batch_size=args.batch_size_extract)
    engine = engine_from_args(args)
    line = ProgressLine("extracting")
    features = extract_features(dataset, config, engine=engine,
                                progress=lambda p: line.show(p.line(), final=p.done == p.total))
    for item in features.failed:
        print(f"skipped {item.id}: {item.reason}", file=sys.stderr)
    if features.weights.is_random:
        print("WARNING: RANDOM weights (weights=none): these are not ImageNet features", file=sys.stderr)
    print(f"features: {len(features.ids)} posters x {features.features.shape[1]} from {features.weights.label}, "
          f"{features.precision}; computed {features.n_computed}, cached {features.n_cached}, "
          f"failed {len(features.failed)} ({features.seconds:.1f}s)")
    return features


def cmd_extract(args: argparse.Namespace) -> int:
    _features(args, _load(args))
    return 0


def train_config_from_args(args: argparse.Namespace):
    from core.model.config import PRESETS, with_overrides

    hidden = None
    if args.hidden:
        try:
            hidden = tuple(int(size) for size in args.hidden.split(",") if size.strip())
        except ValueError as err:
            raise PosterGenreError(f"--hidden {args.hidden!r} is not a list of sizes", "e.g. --hidden 1024,256") from err
    return with_overrides(
        PRESETS[args.preset], feature_view=args.feature_view, hidden=hidden, dropout=args.dropout,
        input_dropout=args.input_dropout, standardize=args.standardize, learning_rate=args.lr, optimizer=args.optimizer, epochs=args.epochs,
        batch_size=args.batch_size, test_size=args.test_size, validation_split=args.validation_split,
        early_stopping=args.early_stopping, patience=args.patience, k=args.k, threshold=args.threshold,
        seed=args.seed)


def cmd_train(args: argparse.Namespace) -> int:
    from core.model.experiment import run_experiment
    from core.model.runs import save_run
    from core.model.config import check_config

    config = train_config_from_args(args)
    check_config(config)
    dataset = _load(args)
    features = _features(args, dataset)
    line = ProgressLine("training")

    def on_epoch(entry) -> None:
        val = "" if entry.val_loss is None else f" val_loss {entry.val_loss:.4f}"
        line.show(f"epoch {entry.epoch}/{config.epochs} loss {entry.loss:.4f}{val}", final=entry.epoch == config.epochs)

    result = run_experiment(dataset, features, config, on_epoch=on_epoch)
    folder = save_run(result, args.out, dataset_info=_dataset_info(dataset))
    print(_summary(result.evaluation, features.weights))
    print(f"run saved to {folder} ({result.seconds:.1f}s, {len(result.history)} epochs)")
    return 0


def _dataset_info(dataset) -> dict:
    return {"root": str(dataset.root.resolve()), "name": dataset.name, "synthetic": dataset.synthetic,
            "n_posters": len(dataset)}


def _summary(evaluation, weights) -> str:
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
    from core.data.datasets import load_dataset
    from core.analysis.metrics import evaluate
    from core.model.runs import load_run
    from core.features.weights import Weights

    run = load_run(args.run)
    root = args.dataset or Path(run.info.get("dataset", {}).get("root", ""))
    dataset, _ = load_dataset(root)
    genres_of = {poster.id: poster.genres for poster in dataset.posters}
    missing = [id_ for id_ in run.split["test"] + run.split["train"] if id_ not in genres_of]
    if missing:
        raise PosterGenreError(f"{len(missing)} posters of run {args.run} are not in dataset {root}",
                               "pass --dataset with the folder the run was trained on")
    y_test = run.vocabulary.encode([genres_of[id_] for id_ in run.split["test"]])
    y_train = run.vocabulary.encode([genres_of[id_] for id_ in run.split["train"]])
    k = args.k or run.config.k
    if not 1 <= k <= len(run.vocabulary):
        raise PosterGenreError(f"--k {k} is out of range for a run with {len(run.vocabulary)} genres",
                               f"choose k between 1 and {len(run.vocabulary)}")
    threshold = run.config.threshold if args.threshold is None else args.threshold
    evaluation = evaluate(y_test, run.test_scores(), y_train, run.vocabulary.genres, k=k, threshold=threshold,
                          seed=run.config.seed)
    info = run.features_info
    print(_summary(evaluation, Weights("none" if info["random_weights"] else "file", info["weights_identity"],
                                       info["weights_label"])))
    if args.per_genre:
        print(evaluation.per_genre.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.model.predict import predict_images

    for result in predict_images(args.run, args.images, k=args.k, weights=args.weights):
        if result.error:
            print(f"skipped {result.name}: {result.error}", file=sys.stderr)
            continue
        ranked = ", ".join(f"{genre} {prob:.2f}" for genre, prob in result.top)
        print(f"{result.name}: {ranked}")
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
        print("\ninterrupted: work done so far is cached; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
