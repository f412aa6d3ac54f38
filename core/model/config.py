"""Training options: ``TrainConfig``, the table that declares each of its options once, validation
and the named presets.

``TRAIN_OPTIONS`` is the single description of a training option (flag, label, help, kind, range,
page group). The CLI's flags, the Train page's widgets, ``check_config`` and the run table are all
generated from it, so a new option is added in two places: a ``TrainConfig`` field and its entry.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from core.errors import TrainingError
from core.features.views import FEATURE_VIEWS, VIEW_DIMS

OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
KERNEL_GAMMAS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
MAX_LEARNING_RATE = 1.0
"""Ten times the largest step on the slider; every optimizer here diverges long before it."""
MAX_KERNEL_GAMMA = 100.0
"""Far past the useful 0.125-4: at γ 100 a poster's similarity to any other is exp(−200) or less (distances are
per feature, about 2 on standardised features), so the kernel head can only predict the genre frequencies."""
MAX_HIDDEN_UNITS = 8192
MAX_HIDDEN_LAYERS = 8
# Weights of every network of a run together (an ensemble keeps all of its members): 200 M float32
# parameters are 0.8 GB, about 3.2 GB with Adam's moments and the gradients while training.
MAX_PARAMETERS = 200_000_000
KINDS = ("int", "float", "bool", "choice", "int_list")
GROUPS = ("Features", "Network", "Optimisation", "Split, ensemble and stopping", "Evaluation")
ENSEMBLE_HELP = ("K networks, each trained on (K−1)/K of the training posters and early-stopped on the "
                 "remaining fold; their genre probabilities are averaged. Steadier than one network, "
                 "K times the training time. With K > 1 the validation fraction is not used.")
HEADS = ("mlp", "kernel")
HEAD_NOTES = ("the tutorial's network, trained epoch by epoch (every option of Network, Optimisation and stopping)",
              "kernel ridge regression, fitted in closed form in about a second (RBF width and ridge only)")
MEMBER_MODES = ("stacked", "sequential")
"""How an ensemble trains: all members in one Keras model (one batched matmul per layer), or one by one."""


@dataclass(frozen=True)
class TrainConfig:
    feature_view: str = "flatten"
    hidden: tuple[int, ...] = (1024, 256)
    dropout: float = 0.0
    input_dropout: float = 0.0
    standardize: bool = False
    learning_rate: float = 1e-4
    optimizer: str = "rmsprop"
    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    test_size: float = 0.2
    validation_split: float = 0.0
    early_stopping: bool = False
    patience: int = 8
    power_normalize: bool = False
    ensemble: int = 1
    k: int = 3
    threshold: float = 0.5
    member_mode: str = "stacked"
    head: str = "mlp"
    kernel_gamma: float = 1.0
    ridge: float = 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "hidden" in known:
            known["hidden"] = tuple(int(size) for size in known["hidden"])
        return cls(**known)


@dataclass(frozen=True)
class TrainOption:
    """One ``TrainConfig`` field as the CLI, the Train page, validation and the run table see it.

    ``low``/``high`` are the valid range (``None``: unbounded), open at an end when ``low_open`` /
    ``high_open``; a slider's ends are the closed range moved in by one ``step``. ``grid`` lists the
    values of a log-scale slider.
    """

    name: str
    kind: str
    label: str
    column: str
    group: str
    help: str = ""
    flags: tuple[str, ...] = ()
    noun: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    step: float | None = None
    choices: tuple[str, ...] = ()
    choice_notes: tuple[str, ...] = ()
    grid: tuple[float, ...] = ()

    @property
    def flag(self) -> str:
        """The main CLI flag (``--name-with-dashes`` unless declared)."""
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")

    @property
    def what(self) -> str:
        """What messages call the option."""
        return self.noun or self.column

    def parse(self, text: str, name: str | None = None) -> Any:
        """A value from its text form (CLI argument, page text box); syntax only, ranges are
        ``check_config``'s. ``name`` is what the message calls the option (default: ``what``)."""
        try:
            if self.kind == "int_list":
                return _sizes(str(text))
            if self.kind == "bool":
                return {"true": True, "false": False}[str(text).strip().lower()]
            return {"int": int, "float": float, "choice": str}[self.kind](text)
        except (ValueError, KeyError) as err:
            raise TrainingError(f"{name or self.what} {text!r} is not {self._expected()}",
                                self._example()) from err

    def format(self, value: Any, separator: str = ",") -> str:
        """The text form ``parse`` reads back (``separator="→"`` for tables)."""
        if self.kind == "int_list":
            return separator.join(str(size) for size in value)
        return f"{value:g}" if self.kind == "float" else str(value)

    def coerce(self, value: Any) -> Any:
        """A form value (text box, slider, number box) as the ``TrainConfig`` field's type; slider
        floats are rounded to 6 significant digits so 0.1 + 0.2 steps read 0.3."""
        if self.kind == "int_list" or (isinstance(value, str) and self.kind != "choice"):
            return self.parse(value)
        if self.kind == "float":
            return float(f"{float(value):.6g}")
        return {"int": int, "bool": bool, "choice": str}[self.kind](value)

    def describe(self, value: Any) -> str | None:
        """A phrase for a run summary: ``hidden 1024→256``; a bool option by its name when on."""
        if self.kind == "bool":
            return self.column if value else None
        return f"{self.column} {self.format(value, '→')}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is invalid for this option, or ``None``."""
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind == "int_list":
            return self._sizes_problem(value)
        if self.kind == "float" and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        return None if self._in_range(value) else f"must be {self.range_text()}, got {value}"

    def range_text(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"> {low}" if self.low_open else f"≥ {low}"
        if self.low_open and self.high_open:
            return f"between {low} and {high}"
        if not self.low_open and not self.high_open and self.kind == "int":
            return f"between {low} and {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def widget_bounds(self) -> tuple[float | None, float | None]:
        """The closed range a widget offers: an open end moves in by one step."""
        step = self.step or 0
        low = None if self.low is None else self.low + (step if self.low_open else 0)
        high = None if self.high is None else self.high - (step if self.high_open else 0)
        return low, high

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _sizes_problem(self, sizes: tuple[int, ...]) -> str | None:
        if not sizes or any(size < 1 for size in sizes):
            return f"must be positive, got {list(sizes)}"
        if any(size > MAX_HIDDEN_UNITS for size in sizes):
            return f"must be at most {MAX_HIDDEN_UNITS:,} units a layer, got {list(sizes)}"
        if len(sizes) > MAX_HIDDEN_LAYERS:
            return f"must list at most {MAX_HIDDEN_LAYERS} layers, got {len(sizes)}"
        return None

    def _expected(self) -> str:
        return {"int": "a whole number", "float": "a number", "bool": "true or false", "choice": "a choice",
                "int_list": "a list of positive integers"}[self.kind]

    def _example(self) -> str | None:
        return "write them comma-separated, e.g. 1024,256 or 512" if self.kind == "int_list" else None


def _sizes(text: str) -> tuple[int, ...]:
    """``"1024, 256"`` → ``(1024, 256)``; an empty part (``"1,,2"``, ``"8,"``) is a typo, not a separator."""
    compact = text.replace(" ", "")
    if not compact:
        return ()
    parts = compact.split(",")
    if not all(parts):
        raise ValueError(f"empty size in {text!r}")
    return tuple(int(part) for part in parts)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption("feature_view", "choice", "Feature view", "view", "Features", noun="feature view",
                choices=tuple(FEATURE_VIEWS), choice_notes=tuple(FEATURE_VIEWS.values()),
                help="Which VGG16 features the network reads; the pooled views come from the same cache as "
                     "the tutorial's flattened vector and train much faster than its 25,088 dimensions."),
    TrainOption("power_normalize", "bool", "Square-root features", "power normalize", "Features",
                help="sign(x)·√|x| of each feature, inside the model and before standardising: damps the "
                     "few very large activations of pooled CNN features."),
    TrainOption("standardize", "bool", "Standardize features", "standardize", "Features",
                help="Mean 0, variance 1 per feature, measured on the training split."),
    TrainOption("input_dropout", "float", "Dropout on the input features", "input dropout", "Features",
                low=0.0, high=1.0, high_open=True, step=0.05,
                help="Drops a random share of the (standardised) features at each training step, so no "
                     "network leans on a few of them."),
    TrainOption("head", "choice", "Classifier", "head", "Network", choices=HEADS, choice_notes=HEAD_NOTES,
                help="What reads the features: the tutorial's MLP, or a kernel ridge regression that fits in "
                     "one linear solve (no epochs) and scores within a few thousandths of the best ensemble."),
    TrainOption("kernel_gamma", "float", "RBF kernel sharpness γ", "kernel γ", "Network", low=0.0, low_open=True,
                high=MAX_KERNEL_GAMMA, grid=KERNEL_GAMMAS,
                help="Kernel head: similarity exp(−γ·|x − z|²/d) between two posters' d prepared features; "
                     "larger γ, more local."),
    TrainOption("ridge", "float", "Ridge penalty", "ridge", "Network", low=0.0, low_open=True, grid=RIDGES,
                help="Kernel head: the penalty on the fitted coefficients; larger is smoother."),
    TrainOption("hidden", "int_list", "Hidden layer sizes", "hidden", "Network", noun="hidden sizes",
                help="Comma-separated, e.g. 1024,256 (the tutorial) or 512."),
    TrainOption("dropout", "float", "Dropout after each hidden layer", "dropout", "Network",
                low=0.0, high=1.0, high_open=True, step=0.05,
                help="Share of each hidden layer's units dropped at each training step."),
    TrainOption("optimizer", "choice", "Optimizer", "optimizer", "Optimisation", choices=OPTIMIZERS,
                help="The tutorial used RMSprop; Adam trains the pooled views faster."),
    TrainOption("learning_rate", "float", "Learning rate", "learning rate", "Optimisation",
                flags=("--lr", "--learning-rate"), low=0.0, low_open=True, high=MAX_LEARNING_RATE,
                grid=LEARNING_RATES,
                help="Step size of the optimizer."),
    TrainOption("epochs", "int", "Epochs", "max epochs", "Optimisation", noun="epochs", low=1, step=1,
                help="Passes over the training posters (the most, with early stopping)."),
    TrainOption("batch_size", "int", "Batch size", "batch", "Optimisation", noun="batch size", low=1, step=16,
                help="Posters per gradient step."),
    TrainOption("seed", "int", "Seed (split, initialisation, bootstrap)", "seed", "Optimisation",
                low=0, high=2**32 - 1, step=1, help="Fixes the split, the initial weights and the bootstrap."),
    TrainOption("test_size", "float", "Test fraction", "test fraction", "Split, ensemble and stopping",
                low=0.0, high=1.0, low_open=True, high_open=True, step=0.05,
                help="Share of the posters held out for the test metrics."),
    TrainOption("ensemble", "int", "Ensemble (networks averaged)", "ensemble", "Split, ensemble and stopping",
                noun="ensemble size", low=1, step=1, help=ENSEMBLE_HELP),
    TrainOption("member_mode", "choice", "How an ensemble trains", "member mode", "Split, ensemble and stopping",
                choices=MEMBER_MODES, choice_notes=("all networks in one model, one batched step each",
                                                    "one network after another (the original path)"),
                help="Both give each network its own fold, early stopping and best weights; stacked is faster."),
    TrainOption("validation_split", "float", "Validation fraction (of the rest)", "validation fraction",
                "Split, ensemble and stopping", low=0.0, high=1.0, high_open=True, step=0.05,
                help="Share of the training posters that only measures the validation loss (one network)."),
    TrainOption("early_stopping", "bool", "Early stopping on validation loss", "early stopping",
                "Split, ensemble and stopping",
                help="Stops a network once its validation loss has not improved for `patience` epochs and "
                     "keeps its best weights; with an ensemble, each network stops on the loss of its own "
                     "held-out fold."),
    TrainOption("patience", "int", "Patience (epochs)", "patience", "Split, ensemble and stopping", low=1, step=1,
                help="Epochs without a better validation loss before early stopping ends training."),
    TrainOption("k", "int", "k (top-k genres per poster)", "k", "Evaluation", low=1, step=1,
                help="Precision and recall count the k highest-scored genres of each poster."),
    TrainOption("threshold", "float", "Threshold for F1", "threshold", "Evaluation",
                low=0.0, high=1.0, low_open=True, high_open=True, step=0.05,
                help="A genre scored at or above it counts as predicted for micro and macro F1."),
)
OPTIONS_BY_NAME = {option.name: option for option in TRAIN_OPTIONS}
MLP_ONLY = frozenset({"hidden", "dropout", "input_dropout", "optimizer", "learning_rate", "epochs", "batch_size",
                      "validation_split", "early_stopping", "patience", "ensemble", "member_mode"})
KERNEL_ONLY = frozenset({"kernel_gamma", "ridge"})


def applies(name: str, config: TrainConfig) -> bool:
    """Whether option ``name`` has any effect on ``config``'s training (the other head's options do not)."""
    if config.head == "kernel":
        return name not in MLP_ONLY
    return name not in KERNEL_ONLY


def settled(config: TrainConfig) -> TrainConfig:
    """``config`` with the options it does not use at their defaults, so equal trainings get one run key:
    the other head's options; an ensemble validates on its own folds, so its validation fraction is unused;
    a single network has no members to stack."""
    unused = {name: getattr(TrainConfig, name) for name in MLP_ONLY | KERNEL_ONLY if not applies(name, config)}
    config = replace(config, **unused)
    if config.ensemble > 1:
        return replace(config, validation_split=0.0)
    return replace(config, member_mode=TrainConfig.member_mode)


_RECOMMENDED = TrainConfig(
    feature_view="avg45", hidden=(512,), dropout=0.7, input_dropout=0.5, power_normalize=True,
    standardize=True, learning_rate=2e-3, optimizer="adam", epochs=100, batch_size=256, validation_split=0.0,
    early_stopping=True, patience=8, ensemble=8)


@dataclass(frozen=True)
class Preset:
    """A named starting point: its options, what it is, and what it costs (times on the 4,596 IMDb dev
    posters on a CPU, ``bench/quality.py``)."""

    config: TrainConfig
    what: str
    cost: str
    dev_seconds: float | None = None
    """Training time on the dev set's training posters, for a preset of networks, whose time grows in
    proportion to the training posters; None for the kernel head, whose time does not."""

    @property
    def note(self) -> str:
        return f"{self.what} Cost: {self.cost}"

    def seconds_for(self, n_train: int) -> float | None:
        """About how long training takes on ``n_train`` posters, scaled from the dev set's time."""
        return None if self.dev_seconds is None else self.dev_seconds * n_train / DEV_TRAIN_POSTERS


DEV_TRAIN_POSTERS = 3_677
"""Training posters of the dev set (4,596 posters, 80/20), on which the presets' times were measured."""


PRESET_TABLE: dict[str, Preset] = {
    "tutorial": Preset(
        TrainConfig(),
        "Exactly the tutorial: 25,088-d flattened VGG16 features, 1024→256, RMSprop 1e-4, 60 epochs; "
        "on real posters it does not beat guessing the most frequent genres.",
        "about 12 minutes of training on the dev set on 2 AVX2 cores (4 with bfloat16); needs the full (flatten) "
        "features of the tutorial geometry.", dev_seconds=735),
    "fast": Preset(
        settled(TrainConfig(feature_view="avg45", power_normalize=True, standardize=True, head="kernel")),
        "recommended's features (avg45, square-rooted, standardised) read by kernel ridge regression instead of "
        "networks: one linear solve, no epochs; on the dev set 0.003 below recommended's top-3 precision (6 seeds).",
        "about 3 s of training on the dev set, 60x less than recommended; the one to move sliders and sweep with."),
    "recommended": Preset(
        _RECOMMENDED,
        "The best measured on real posters (bench/quality.py): block4 and block5 average-pooled (1,024-d), "
        "square-rooted, standardised and half dropped out in training, one hidden layer of 512 with strong "
        "dropout, Adam, and an average of 8 networks, each early-stopped on its own eighth of the training posters; "
        "best on poster-shaped features (geometry poster: +0.008 top-3 precision on the dev set).",
        "about 2 minutes of training on the dev set on 2 AVX2 cores (8 networks); works on pooled features of any "
        "geometry or backbone.", dev_seconds=160),
}
"""Every preset once: ``PRESETS`` (the options) and ``PRESET_NOTES`` (one line each) are made from it."""
PRESETS: dict[str, TrainConfig] = {name: preset.config for name, preset in PRESET_TABLE.items()}
PRESET_NOTES: dict[str, str] = {name: preset.note for name, preset in PRESET_TABLE.items()}
LONG_TRAINING_S = 600.0
"""From this estimated training time on, the Train page warns and points to ``fast``."""


def long_training_note(preset: str, n_posters: int) -> str | None:
    """A warning when ``preset`` would train for long on a dataset of ``n_posters``, else None."""
    n_train = round(n_posters * (1 - PRESETS[preset].test_size))
    seconds = PRESET_TABLE[preset].seconds_for(n_train)
    if seconds is None or seconds < LONG_TRAINING_S:
        return None
    return (f"On these {n_posters:,} posters, {preset} would train for about {seconds / 60:.0f} minutes on 2 CPU cores "
            f"(its dev-set time scaled to {n_train:,} training posters). The fast preset trains 80,000 posters in "
            "under a minute (bench/scale.py).")


def n_parameters(config: TrainConfig, n_genres: int = 0) -> int:
    """Weights and biases of all the run's networks (the genre layer counts when ``n_genres`` is known)."""
    widths = [VIEW_DIMS.get(config.feature_view, 0), *config.hidden, n_genres]
    per_network = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))
    return per_network * max(config.ensemble, 1)


def check_config(config: TrainConfig, n_genres: int | None = None) -> None:
    """Raise ``TrainingError`` naming every invalid option; ``n_genres`` also bounds k when known."""
    problems = []
    for option in TRAIN_OPTIONS:
        problem = option.problem(getattr(config, option.name))
        if problem:
            problems.append(f"{option.what} {problem}")
    hint = None
    if n_genres is not None and config.k > n_genres:
        problems.append(f"k={config.k} but the dataset has only {n_genres} genres")
        hint = f"choose k between 1 and {n_genres}"
    if config.head == "mlp" and config.early_stopping and config.validation_split <= 0 and config.ensemble < 2:
        problems.append("early stopping needs a validation split > 0 (or an ensemble, whose members "
                        "validate on their own folds)")
    if not problems and config.head == "mlp" and n_parameters(config, n_genres or 0) > MAX_PARAMETERS:
        problems.append(f"{n_parameters(config, n_genres or 0):,} network parameters exceed the limit of "
                        f"{MAX_PARAMETERS:,} (they would not fit in memory)")
        hint = "use fewer or smaller hidden layers, a pooled feature view or a smaller ensemble"
    if problems:
        raise TrainingError("invalid training configuration: " + "; ".join(problems), hint)


def config_values(config: TrainConfig) -> dict[str, Any]:
    """``config`` as form values by field name (hidden sizes as text, "1024,256")."""
    return {option.name: option.format(getattr(config, option.name)) if option.kind == "int_list"
            else getattr(config, option.name) for option in TRAIN_OPTIONS}


def config_from_values(values: dict[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` of form values by field name (the inverse of ``config_values``), settled."""
    return settled(TrainConfig(**{option.name: option.coerce(values[option.name]) for option in TRAIN_OPTIONS}))


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    return replace(config, **{key: value for key, value in overrides.items() if value is not None})
