"""Train: hyperparameter experiments on the cached features, compared against the frequency prior."""
from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.errors import PosterGenreError, TrainingError
from core.model.experiment import ExperimentResult, run_experiment
from core.features.views import FEATURE_VIEWS
from core.features.pipeline import FeatureSet
from core.model.runs import Run, delete_run, find_run, save_run
from core.model.config import OPTIMIZERS, PRESET_NOTES, PRESETS, TrainConfig, check_config
from core.model.classifier import BatchProgress, EpochLog
from pages._shared import active_dataset, require_features, route_through_app
from pages._widgets import (SELECTED_RUN, dataset_runs, fmt, metric_with_prior, per_genre_table,
                            random_run_warning, remember_run, run_selector, show_per_genre)

LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
CONTROL_KEYS = ("view", "power_normalize", "standardize", "input_dropout", "hidden", "dropout", "learning_rate",
                "optimizer", "epochs", "batch_size", "seed", "test_size", "ensemble", "validation_split",
                "early_stopping", "patience", "k", "threshold")
FORM_MEMORY = "train_form"
X_CHOICES = ("learning rate", "dropout", "input dropout", "hidden", "view", "optimizer", "power normalize",
             "standardize", "ensemble", "epochs run", "batch", "seed", "test fraction", "train seconds")
Y_CHOICES = ("precision@k", "recall@k", "precision@k − prior", "micro F1", "macro F1", "mean AP")
MEMBER_COLOURS = px.colors.qualitative.Plotly
ENSEMBLE_HELP = ("K networks, each trained on (K−1)/K of the training posters and early-stopped on the "
                 "remaining fold; their genre probabilities are averaged. Steadier than one network, "
                 "K times the training time. With K > 1 the validation fraction is not used.")


# ---- controls ---------------------------------------------------------------------------------

def control_values(config: TrainConfig) -> dict:
    """Widget values (by session-state key) that show ``config``."""
    values = {"view" if name == "feature_view" else name: value for name, value in vars(config).items()}
    values["hidden"] = ",".join(str(size) for size in config.hidden)
    return values


def set_controls(config: TrainConfig) -> None:
    for key, value in control_values(config).items():
        st.session_state[key] = value


def apply_preset() -> None:
    set_controls(PRESETS[st.session_state.preset])


def init_controls() -> None:
    """Restore the form after a page switch (Streamlit drops widget state of pages not shown)."""
    memory = st.session_state.get(FORM_MEMORY, {})
    st.session_state.setdefault("preset", memory.get("preset", "tutorial"))
    defaults = {**control_values(PRESETS[st.session_state.preset]), **memory}
    for key in CONTROL_KEYS:
        st.session_state.setdefault(key, defaults[key])


def remember_controls() -> None:
    st.session_state[FORM_MEMORY] = {key: st.session_state[key] for key in ("preset", *CONTROL_KEYS)}


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise TrainingError(f"hidden layer sizes {text!r} are not a list of positive integers",
                            "write them comma-separated, e.g. 1024,256 or 512")
    return sizes


def preset_controls() -> str:
    preset = st.selectbox("Start from preset", list(PRESETS), key="preset", on_change=apply_preset,
                          help="Changing the preset resets every control below to its values.")
    st.caption(f"**{preset}**: {PRESET_NOTES[preset]}")
    return preset



def train_controls() -> None:
    features_col, network_col, fitting_col = st.columns(3)
    with features_col:
        st.markdown("**Features**")
        st.radio("Feature view", list(FEATURE_VIEWS), key="view", captions=list(FEATURE_VIEWS.values()))
        st.caption("The pooled views come from the same cache as the tutorial's flattened vector and train "
                   "much faster than its 25,088 dimensions.")
        st.checkbox("Square-root features", key="power_normalize",
                    help="sign(x)·√|x| of each feature, inside the model and before standardising: damps the "
                         "few very large activations of pooled CNN features.")
        st.checkbox("Standardize features", key="standardize",
                    help="Mean 0, variance 1 per feature, measured on the training split.")
        st.slider("Dropout on the input features", 0.0, 0.9, step=0.05, key="input_dropout",
                  help="Drops a random share of the (standardised) features at each training step, so no "
                       "network leans on a few of them.")
        st.markdown("**Network**")
        st.text_input("Hidden layer sizes", key="hidden", help="Comma-separated, e.g. 1024,256 (the tutorial) or 512")
        st.slider("Dropout after each hidden layer", 0.0, 0.95, step=0.05, key="dropout")
    with network_col:
        st.markdown("**Optimisation**")
        st.selectbox("Optimizer", OPTIMIZERS, key="optimizer")
        rates = sorted({*LEARNING_RATES, float(st.session_state.learning_rate)})
        st.select_slider("Learning rate (log scale)", rates, key="learning_rate",
                         format_func=lambda rate: f"{rate:.0e}")
        st.number_input("Epochs", min_value=1, max_value=2000, step=1, key="epochs")
        st.number_input("Batch size", min_value=1, max_value=8192, step=16, key="batch_size")
        st.number_input("Seed (split, initialisation, bootstrap)", min_value=0, step=1, key="seed")
    with fitting_col:
        st.markdown("**Split, ensemble and stopping**")
        st.slider("Test fraction", 0.05, 0.9, step=0.05, key="test_size")
        members = st.number_input("Ensemble (networks averaged)", min_value=1, max_value=20, step=1,
                                  key="ensemble", help=ENSEMBLE_HELP)
        st.slider("Validation fraction (of the rest)", 0.0, 0.9, step=0.05, key="validation_split",
                  disabled=members > 1)
        if members > 1:
            st.caption("Validation fraction unused: each of the networks validates on its own fold.")
        st.checkbox("Early stopping on validation loss", key="early_stopping",
                    help="With an ensemble, each network stops on the loss of its own held-out fold.")
        st.number_input("Patience (epochs)", min_value=1, max_value=500, step=1, key="patience")
        st.markdown("**Evaluation**")
        st.number_input("k (top-k genres per poster)", min_value=1, max_value=50, step=1, key="k")
        st.slider("Threshold for F1", 0.05, 0.95, step=0.05, key="threshold")


def config_from_controls(n_genres: int) -> TrainConfig:
    """The controls as a checked ``TrainConfig``; raises ``TrainingError`` for invalid combinations."""
    state = st.session_state
    ensemble = int(state.ensemble)
    config = TrainConfig(
        feature_view=state.view, hidden=parse_hidden(state.hidden), dropout=round(state.dropout, 4),
        input_dropout=round(state.input_dropout, 4), power_normalize=bool(state.power_normalize),
        standardize=bool(state.standardize),
        learning_rate=float(state.learning_rate), optimizer=state.optimizer, epochs=int(state.epochs),
        batch_size=int(state.batch_size), seed=int(state.seed), test_size=round(state.test_size, 4),
        ensemble=ensemble, validation_split=round(state.validation_split, 4) if ensemble == 1 else 0.0,
        early_stopping=bool(state.early_stopping), patience=int(state.patience), k=int(state.k),
        threshold=round(state.threshold, 4))
    check_config(config)
    if config.k > n_genres:
        raise TrainingError(f"k={config.k} but the dataset has only {n_genres} genres",
                            f"choose k between 1 and {n_genres}")
    return config


def changed_from(preset: str, config: TrainConfig) -> list[str]:
    base = PRESETS[preset].to_dict()
    return [name for name, value in config.to_dict().items() if base[name] != value]


# ---- training ---------------------------------------------------------------------------------


def stopped_notice() -> None:
    """A training interrupted by Stop (Streamlit stops the script at its next st call) leaves its flag
    set: say so once."""
    if st.session_state.pop("training_in_progress", False):
        record = st.session_state.pop("training_progress", {})
        if record.get("saved"):
            return
        epochs, members = record.get("last_epoch", 0), record.get("members", 1)
        where = f"in member {record.get('member', 1)}/{members} " if members > 1 else ""
        st.warning(f"Training was stopped {where}after {epochs} epoch{'' if epochs == 1 else 's'}; "
                   "the run was not saved.")


def loss_figure(history: list[EpochLog], members: int = 1, title: str = "Loss per epoch") -> go.Figure:
    """Train (solid) and validation (dashed) loss, one colour per member of an ensemble."""
    figure = go.Figure()
    for member in sorted({entry.member for entry in history}):
        entries = [entry for entry in history if entry.member == member]
        prefix = f"member {member} " if members > 1 else ""
        line = {"color": MEMBER_COLOURS[(member - 1) % len(MEMBER_COLOURS)]}
        mode = "lines+markers" if members == 1 and len(entries) <= 40 else "lines"
        epochs = [entry.epoch for entry in entries]
        figure.add_trace(go.Scatter(x=epochs, y=[entry.loss for entry in entries], name=f"{prefix}train",
                                    mode=mode, line=line, legendgroup=str(member)))
        if any(entry.val_loss is not None for entry in entries):
            figure.add_trace(go.Scatter(x=epochs, y=[entry.val_loss for entry in entries],
                                        name=f"{prefix}validation", mode=mode, line={**line, "dash": "dash"},
                                        legendgroup=str(member)))
    figure.update_layout(title=title, xaxis_title="epoch", yaxis_title="binary cross-entropy",
                         height=320, margin=dict(l=10, r=10, t=40, b=10))
    if members > 1:
        figure.update_layout(height=420, legend=dict(orientation="h", yanchor="top", y=-0.3, tracegroupgap=2,
                                                     font_size=11))
    return figure


def epoch_text(entry: EpochLog, config: TrainConfig) -> str:
    member = f"member {entry.member}/{config.ensemble} · " if config.ensemble > 1 else ""
    validation = f" · validation {entry.val_loss:.4f}" if entry.val_loss is not None else ""
    return (f"{member}epoch {entry.epoch}/{config.epochs} · loss {entry.loss:.4f}{validation} "
            f"· {entry.seconds:.1f} s/epoch")


def epochs_per_member(history: list[EpochLog]) -> list[int]:
    counts = Counter(entry.member for entry in history)
    return [counts[member] for member in sorted(counts)]


def epochs_text(history: list[EpochLog], config: TrainConfig, fallback=None) -> str:
    """``12/60``, or ``9–14/60 ×5`` for an ensemble whose members stopped at different epochs."""
    counts = epochs_per_member(history) or [fallback if fallback is not None else "?"]
    ran = f"{min(counts)}–{max(counts)}" if len(set(counts)) > 1 else str(counts[0])
    return f"{ran}/{config.epochs}" + (f" ×{len(counts)}" if len(counts) > 1 else "")


def train_live(dataset, features: FeatureSet, config: TrainConfig, record: dict) -> ExperimentResult:
    """Train with a progress bar and live loss curves; Stop makes Streamlit interrupt the script at the
    next st call in ``on_epoch``. ``record`` (a dict held in session_state) outlives that interruption."""
    st.button("Stop", key="stop", help="Stops after the current epoch; the run is not saved.")
    progress = st.progress(0.0, text=f"Preparing the {config.feature_view} features and building the model "
                                     "(the first training in this server also loads TensorFlow)…")
    chart = st.empty()
    history: list[EpochLog] = []

    # Mutating ``record`` is not a Streamlit yield point (assigning to session_state is), so the
    # epoch and member are stored even when Stop interrupts at the next st call.
    def on_epoch(entry: EpochLog) -> None:
        history.append(entry)
        record["last_epoch"], record["member"] = entry.epoch, entry.member
        done = (entry.member - 1 + entry.epoch / config.epochs) / config.ensemble
        progress.progress(min(done, 1.0), text=epoch_text(entry, config))
        chart.plotly_chart(loss_figure(history, config.ensemble, "Live loss"),
                           key=f"live_loss_{entry.member}_{entry.epoch}")

    shown = {"at": 0.0}

    def on_batch(step: BatchProgress) -> None:
        if time.monotonic() - shown["at"] < 0.25:
            return
        shown["at"] = time.monotonic()
        member = f"member {step.member}/{config.ensemble} · " if config.ensemble > 1 else ""
        within = (step.epoch - 1 + step.batch / max(step.batches, 1)) / config.epochs
        progress.progress(min((step.member - 1 + within) / config.ensemble, 1.0),
                          text=f"{member}epoch {step.epoch}/{config.epochs} · batch {step.batch}/{step.batches}")

    result = run_experiment(dataset, features, config, on_epoch=on_epoch, on_batch=on_batch)
    progress.progress(1.0, text=f"done: {epochs_text(result.history, config)} epochs in {result.seconds:.1f} s")
    return result


def save_trained(dataset, result: ExperimentResult, record: dict) -> Path:
    folder = save_run(result, dataset_info={"root": str(dataset.root.resolve()), "name": dataset.name,
                                            "synthetic": dataset.synthetic, "n_posters": len(dataset)})
    record["saved"] = str(folder)
    st.session_state.training_in_progress = False
    return folder


def train_or_load(dataset, features: FeatureSet, config: TrainConfig, again: bool) -> None:
    existing = find_run(features, config)
    if existing is not None and not again:
        select_run(existing.folder)
        st.success("Same configuration already trained — loaded from disk (tick “train again” to retrain).")
        return
    record = {"last_epoch": 0, "member": 1, "members": config.ensemble}
    st.session_state.training_progress = record
    st.session_state.training_in_progress = True
    networks = f"{config.ensemble} networks on " if config.ensemble > 1 else ""
    try:
        with st.status(f"Training {networks}{len(features.ids):,} posters…", expanded=True) as status:
            result = train_live(dataset, features, config, record)
            folder = save_trained(dataset, result, record)
            status.update(label=f"Trained in {result.seconds:.1f} s and saved", state="complete", expanded=False)
    except PosterGenreError as err:
        st.session_state.training_in_progress = False
        st.error(str(err))
        return
    select_run(folder)
    st.success(f"Saved run {folder.name}" + (" (replaced the earlier run of this configuration)" if existing else ""))


# ---- saved runs -------------------------------------------------------------------------------

def select_run(folder: Path) -> None:
    """Show ``folder`` in the run menu below (drawn later in this script run) and on the other pages."""
    remember_run(folder)
    st.session_state.run_select = str(folder)


def created_label(run: Run) -> str:
    try:
        return dt.datetime.fromisoformat(run.info["created"]).astimezone().strftime("%Y-%m-%d %H:%M")
    except (KeyError, ValueError):
        return "?"


def hidden_label(config: TrainConfig) -> str:
    return "→".join(str(size) for size in config.hidden)


def runs_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        config, metrics = run.config, run.metrics
        precision, prior = metrics.get("precision_at_k"), metrics.get("prior_precision_at_k")
        per_member = epochs_per_member(run.history)
        rows.append({
            "created": created_label(run), "view": config.feature_view, "hidden": hidden_label(config),
            "dropout": config.dropout, "input dropout": config.input_dropout,
            "power normalize": config.power_normalize, "standardize": config.standardize,
            "learning rate": config.learning_rate,
            "optimizer": config.optimizer, "ensemble": config.ensemble,
            "epochs": epochs_text(run.history, config, metrics.get("epochs_run")),
            "epochs run": sum(per_member) / len(per_member) if per_member else metrics.get("epochs_run"),
            "batch": config.batch_size, "seed": config.seed, "test fraction": config.test_size, "k": config.k,
            "precision@k": precision, "prior": prior,
            "precision@k − prior": None if precision is None or prior is None else precision - prior,
            "recall@k": metrics.get("recall_at_k"), "micro F1": metrics.get("micro_f1"),
            "macro F1": metrics.get("macro_f1"), "mean AP": metrics.get("mean_average_precision"),
            "train seconds": metrics.get("train_seconds"), "weights": metrics.get("weights"),
            "run": run.label(),
        })
    return pd.DataFrame(rows)


TABLE_COLUMNS = ("created", "view", "power normalize", "standardize", "input dropout", "hidden", "dropout",
                 "learning rate", "optimizer", "ensemble", "epochs", "batch", "seed", "k", "precision@k", "prior",
                 "recall@k", "micro F1", "macro F1", "train seconds", "weights")


def show_table(table: pd.DataFrame) -> None:
    number = {name: st.column_config.NumberColumn(format="%.3f")
              for name in ("precision@k", "prior", "recall@k", "micro F1", "macro F1")}
    st.dataframe(table[list(TABLE_COLUMNS)], hide_index=True, key="runs_table", column_config={
        **number, "learning rate": st.column_config.NumberColumn(format="%.0e"),
        "power normalize": st.column_config.CheckboxColumn("√ features"),
        "train seconds": st.column_config.NumberColumn(format="%.1f")})


def comparison_chart(table: pd.DataFrame) -> None:
    x_col, y_col = st.columns(2)
    x = x_col.selectbox("Hyperparameter (x)", X_CHOICES, key="compare_x")
    y = y_col.selectbox("Metric (y)", Y_CHOICES, key="compare_y")
    figure = px.scatter(table, x=x, y=y, color="view", hover_name="run", log_x=x == "learning rate",
                        hover_data={"created": True, "epochs": True, "prior": ":.3f"})
    figure.update_traces(marker_size=11)
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(figure, key="compare_chart")


def run_summary(run: Run) -> str:
    config, metrics = run.config, run.metrics
    if config.ensemble > 1:
        split = (f"{metrics.get('n_train')} train posters in {config.ensemble} folds (each network validates on "
                 f"one) / {metrics.get('n_test')} test posters")
    else:
        split = (f"{metrics.get('n_train')} train / {metrics.get('n_validation')} validation / "
                 f"{metrics.get('n_test')} test posters")
    parts = [f"{config.feature_view} features", "signed square root" if config.power_normalize else None,
             "standardized" if config.standardize else None,
             f"input dropout {config.input_dropout}" if config.input_dropout else None,
             f"hidden {hidden_label(config)}",
             f"dropout {config.dropout}", f"{config.optimizer} {config.learning_rate:.0e}",
             f"ensemble of {config.ensemble}" if config.ensemble > 1 else None,
             f"{epochs_text(run.history, config, metrics.get('epochs_run'))} epochs",
             f"batch {config.batch_size}", f"seed {config.seed}", split,
             f"{fmt(metrics.get('train_seconds'), 1)} s", metrics.get("weights")]
    return " · ".join(str(part) for part in parts if part is not None)


def show_results(run: Run) -> None:
    metrics, config = run.metrics, run.config
    random_run_warning(run)
    st.caption(run_summary(run))
    precision_col, recall_col, f1_col, ap_col = st.columns(4)
    metric_with_prior(precision_col, f"Precision@{config.k}", metrics, "precision_at_k")
    metric_with_prior(recall_col, f"Recall@{config.k}", metrics, "recall_at_k")
    f1_col.metric("Micro / macro F1", f"{fmt(metrics.get('micro_f1'))} / {fmt(metrics.get('macro_f1'))}")
    f1_col.caption(f"genres scored ≥ {metrics.get('threshold')} count as predicted")
    ap_col.metric("Mean average precision", fmt(metrics.get("mean_average_precision")))
    ap_col.caption("mean over genres of the per-genre AP")
    low, prior_high = metrics.get("precision_at_k_low"), metrics.get("prior_precision_at_k_high")
    if low is not None and prior_high is not None and low <= prior_high:
        st.info("The precision interval overlaps the prior's: on this test set the model is not clearly "
                "better than always answering the most frequent genres.")
    curves, genres = st.columns(2)
    if run.history:
        curves.plotly_chart(loss_figure(run.history, config.ensemble), key="run_loss")
    table = per_genre_table(run)
    if table is None:
        genres.info("This run's per-genre table (per_genre.csv) is missing or damaged.")
    else:
        genres.plotly_chart(ap_figure(table), key="run_ap")
        show_per_genre(table, config.k)
    st.button("Copy this run's settings into the controls", key="load_config", on_click=set_controls,
              args=(config,))


def ap_figure(table: pd.DataFrame) -> go.Figure:
    ordered = table.sort_values("average_precision", ascending=False)
    figure = px.bar(ordered, x="genre", y="average_precision", hover_data=["support"],
                    title="Average precision per genre")
    figure.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1])
    return figure


def delete_selected() -> None:
    folders = st.session_state.get("delete_select") or []
    if not folders:
        st.session_state.train_notice = ("info", "Choose the runs to delete first.")
        return
    if not st.session_state.get("delete_confirm"):
        st.session_state.train_notice = ("warning", "Tick the confirmation box to delete the selected runs.")
        return
    try:
        for folder in folders:
            delete_run(Path(folder))
    except PosterGenreError as err:
        st.session_state.train_notice = ("error", str(err))
        return
    st.session_state.train_notice = ("success", f"Deleted {len(folders)} run(s).")
    st.session_state.delete_select = []
    st.session_state.delete_confirm = False
    if st.session_state.get(SELECTED_RUN) in folders:
        st.session_state.pop(SELECTED_RUN)


def delete_controls(runs: list[Run]) -> None:
    labels = {str(run.folder): run.label() for run in runs}
    with st.expander("Delete runs"):
        st.multiselect("Runs to delete", list(labels), format_func=labels.get, key="delete_select")
        st.checkbox("Yes, delete the selected runs and their models permanently", key="delete_confirm")
        st.button("Delete", key="delete_runs", on_click=delete_selected)


def show_notice() -> None:
    notice = st.session_state.pop("train_notice", None)
    if notice:
        kind, text = notice
        getattr(st, kind)(text)


# ---- page -------------------------------------------------------------------------------------

route_through_app()
st.title("Train")
st.caption("Start from the tutorial's recipe or the recommended one, move the hyperparameters, "
           "and compare every run against the frequency prior.")
stopped_notice()
dataset, _ = active_dataset()
features = require_features(dataset)
n_genres = len(dataset.genre_counts())

init_controls()
preset = preset_controls()
train_controls()
remember_controls()
try:
    config = config_from_controls(n_genres)
except TrainingError as err:
    config = None
    st.error(str(err))

if config is not None:
    changes = changed_from(preset, config)
    if changes:
        st.caption(f"Changed from the {preset} preset: {', '.join(changes)}")
    if find_run(features, config) is not None:
        st.caption("This configuration is already trained: Train will load it from disk.")
again = st.checkbox("train again (even if this configuration was already trained)", key="train_again")
if st.button("Train", key="train", type="primary", disabled=config is None):
    train_or_load(dataset, features, config, again)

st.header("Results")
show_notice()
runs = dataset_runs(dataset)
if not runs:
    st.info("No saved runs for this dataset yet: choose a preset and press Train.")
    st.stop()
show_results(run_selector(runs, key="run_select", label="Show run"))

st.header("Experiments")
st.caption(f"{len(runs)} saved run(s) on this dataset; every run is also available on the Predictions page.")
table = runs_table(runs)
show_table(table)
comparison_chart(table)
delete_controls(runs)
