"""Training options: ``TrainConfig``, its validation and the named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from core.errors import TrainingError

OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
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

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        if "hidden" in known:
            known["hidden"] = tuple(int(size) for size in known["hidden"])
        return cls(**known)


PRESETS: dict[str, TrainConfig] = {
    "tutorial": TrainConfig(),
    "recommended": TrainConfig(
        feature_view="avg45", hidden=(512,), dropout=0.7, input_dropout=0.5, power_normalize=True,
        standardize=True, learning_rate=2e-3, optimizer="adam", epochs=100, batch_size=256, validation_split=0.0,
        early_stopping=True, patience=8, ensemble=8),
}
PRESET_NOTES = {
    "tutorial": "exactly the tutorial: 25,088-d flattened features, 1024→256, RMSprop 1e-4, 60 epochs",
    "recommended": "measured best on real posters (bench/quality.py): block4 and block5 average-pooled "
                   "(1,024-d), square-rooted, standardised and half dropped out in training, one hidden layer "
                   "of 512 with strong dropout, Adam, and an average of 8 networks, each early-stopped on its "
                   "own eighth of the training posters",
}


def check_config(config: TrainConfig) -> None:
    from core.features.views import FEATURE_VIEWS

    problems = []
    if config.feature_view not in FEATURE_VIEWS:
        problems.append(f"feature view must be one of {', '.join(FEATURE_VIEWS)}, got {config.feature_view!r}")
    if config.k < 1:
        problems.append(f"k must be ≥ 1, got {config.k}")
    if not 0 < config.threshold < 1:
        problems.append(f"threshold must be between 0 and 1, got {config.threshold}")
    if config.patience < 1:
        problems.append(f"patience must be ≥ 1, got {config.patience}")
    if not config.hidden or any(size < 1 for size in config.hidden):
        problems.append(f"hidden sizes must be positive, got {list(config.hidden)}")
    if not 0 <= config.dropout < 1:
        problems.append(f"dropout must be in [0, 1), got {config.dropout}")
    if not 0 <= config.input_dropout < 1:
        problems.append(f"input dropout must be in [0, 1), got {config.input_dropout}")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if not config.learning_rate > 0:
        problems.append(f"learning rate must be positive, got {config.learning_rate}")
    if config.epochs < 1 or config.batch_size < 1:
        problems.append(f"epochs and batch size must be ≥ 1, got {config.epochs} and {config.batch_size}")
    if not 0 < config.test_size < 1:
        problems.append(f"test fraction must be between 0 and 1, got {config.test_size}")
    if not 0 <= config.validation_split < 1:
        problems.append(f"validation fraction must be in [0, 1), got {config.validation_split}")
    if config.ensemble < 1:
        problems.append(f"ensemble size must be ≥ 1, got {config.ensemble}")
    if config.early_stopping and config.validation_split <= 0 and config.ensemble < 2:
        problems.append("early stopping needs a validation split > 0 (or an ensemble, whose members "
                        "validate on their own folds)")
    if problems:
        raise TrainingError("invalid training configuration: " + "; ".join(problems))


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    return replace(config, **{key: value for key, value in overrides.items() if value is not None})
