"""Train: hyperparameter experiments on the cached features, compared against the frequency prior."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.errors import PosterGenreError, TrainingError
from core.features.pipeline import FeatureSet
from core.model.classifier import BatchProgress, EpochLog, training_fraction
from core.model.config import (OPTIONS_BY_NAME, PRESET_TABLE, PRESETS, TRAIN_OPTIONS, TrainConfig,
                               TrainOption, applies, check_config, config_from_values, config_values,
                               long_training_note)
from core.model.experiment import ExperimentResult, LabelsInfo, run_experiment
from core.model.runs import (METRIC_COLUMNS, Run, comparable_columns, delete_run, find_run, first_comparable,
                             training_text, runs_table, save_run)
from pages._shared import (active_dataset, current_labels, load_settings, require_features, route_through_app,
                           save_settings)
from pages._sweep import sweep_section
from pages._widgets import (SELECTED_RUN, dataset_runs, fmt, metric_with_prior, per_genre_table,
                            random_run_warning, remember_run, run_selector, show_per_genre)

CONTROL_KEYS = tuple(option.name for option in TRAIN_OPTIONS)
CONTROL_COLUMNS = (("Features", "Network"), ("Optimisation",), ("Split, ensemble and stopping", "Evaluation"))
FORM_MEMORY = "train_form"
HIDDEN_TABLE_COLUMNS = ("run", "epochs run", "precision@k − prior", "mean AP")
MEMBER_COLOURS = px.colors.qualitative.Plotly
CHART_EVERY_S = 0.5
# A new browser session opens on FIRST_PRESET (made for sliders: seconds, not minutes), or on the preset last
# trained with, saved under LAST_PRESET in the UI settings file (ui_settings.json).
FIRST_PRESET = "fast"
LAST_PRESET = "train_preset"
HEADLINE = "train_headline"


# ---- controls ---------------------------------------------------------------------------------

def set_controls(config: TrainConfig) -> None:
    for key, value in config_values(config).items():
        st.session_state[key] = value


def apply_preset() -> None:
    set_controls(PRESETS[st.session_state.preset])


def opening_preset() -> str:
    """The preset last trained with (in any session, saved in the UI settings), else ``FIRST_PRESET``."""
    saved = load_settings().get(LAST_PRESET)
    return saved if saved in PRESETS else FIRST_PRESET


def init_controls() -> None:
    """Restore the form after a page switch (Streamlit drops widget state of pages not shown); a new session
    opens on ``opening_preset()``."""
    memory = st.session_state.get(FORM_MEMORY, {})
    st.session_state.setdefault("preset", memory.get("preset") or opening_preset())
    defaults = {**config_values(PRESETS[st.session_state.preset]), **memory}
    for key in CONTROL_KEYS:
        st.session_state.setdefault(key, defaults[key])


def remember_controls() -> None:
    st.session_state[FORM_MEMORY] = {key: st.session_state[key] for key in ("preset", *CONTROL_KEYS)}


def preset_controls(n_posters: int) -> str:
    preset = st.radio("Start from preset", list(PRESETS), key="preset", on_change=apply_preset,
                      captions=[PRESET_TABLE[name].cost for name in PRESETS],
                      help="Changing the preset resets every control below to its values.")
    st.caption(f"**{preset}**: {PRESET_TABLE[preset].what}")
    if note := long_training_note(preset, n_posters):
        st.warning(note)
    with st.expander("The presets at a glance"):
        st.dataframe(pd.DataFrame([{"preset": name, "what it is": entry.what, "what it costs": entry.cost}
                                   for name, entry in PRESET_TABLE.items()]), hide_index=True, key="presets_table")
    return preset


def option_widget(option: TrainOption) -> None:
    """The widget of one training option, keyed by its field name, with the option's label, help and range."""
    key, help_text = option.name, option.help or None
    low, high = option.widget_bounds()
    off = not applies(option.name, TrainConfig(head=st.session_state.head))
    if option.kind == "bool":
        st.checkbox(option.label, key=key, help=help_text, disabled=off)
    elif option.kind == "choice" and option.choice_notes:
        st.radio(option.label, option.choices, key=key, captions=list(option.choice_notes), help=help_text,
                 disabled=off)
    elif option.kind == "choice":
        st.selectbox(option.label, option.choices, key=key, help=help_text, disabled=off)
    elif option.kind == "int_list":
        st.text_input(option.label, key=key, help=help_text, disabled=off)
    elif option.grid:
        values = sorted({*option.grid, float(st.session_state[key])})
        st.select_slider(f"{option.label} (log scale)", values, key=key, help=help_text, disabled=off,
                         format_func=lambda value: f"{value:.0e}" if value < 0.01 else f"{value:g}")
    elif option.kind == "float":
        unused = key == "validation_split" and st.session_state.ensemble > 1
        st.slider(option.label, low, high, step=option.step, key=key, help=help_text, disabled=unused or off)
        if unused and not off:
            st.caption("Validation fraction unused: each of the networks validates on its own fold.")
    else:
        st.number_input(option.label, min_value=low, max_value=high, step=option.step, key=key, help=help_text,
                        disabled=off)


def train_controls() -> None:
    for column, groups in zip(st.columns(len(CONTROL_COLUMNS)), CONTROL_COLUMNS):
        with column:
            for group in groups:
                st.markdown(f"**{group}**")
                for option in TRAIN_OPTIONS:
                    if option.group == group:
                        option_widget(option)
    if st.session_state.head == "kernel":
        st.caption("Kernel head: a closed-form fit, so the network, optimisation, ensemble and stopping options "
                   "(greyed out) have no effect, and there are no epochs or loss curves.")


def config_from_controls(n_genres: int) -> TrainConfig:
    """The controls as a checked ``TrainConfig``; raises ``TrainingError`` for invalid combinations."""
    config = config_from_values({key: st.session_state[key] for key in CONTROL_KEYS})
    check_config(config, n_genres=n_genres)
    return config


def changed_from(preset: str, config: TrainConfig) -> list[str]:
    base = PRESETS[preset].to_dict()
    return [name for name, value in config.to_dict().items() if base[name] != value]


def use_tutorial_features() -> None:
    save_settings(backbone="vgg16", geometry="tutorial", storage="full")


def needs_flatten(features: FeatureSet, config: TrainConfig | None) -> bool:
    """Say so, and offer the tutorial geometry, when the options need the flatten view these features lack."""
    if config is None or config.feature_view != "flatten" or features.config.stored != "pooled":
        return False
    st.warning(f"The flatten view needs the tutorial's features: {features.config.flatten_unavailable()}.")
    st.button("Switch to VGG16 on the tutorial's 224x224 squash (full rows), then extract them", key="use_tutorial",
              on_click=use_tutorial_features, help="Changes the Data page's backbone, geometry and storage; the "
                                                   "features of these are extracted on the Data page.")
    st.caption("Or choose the avg, max or avg45 view (the recommended preset uses avg45).")
    return True


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


def train_live(dataset, features: FeatureSet, config: TrainConfig, record: dict) -> ExperimentResult:
    """Train with a progress bar and live loss curves; Stop makes Streamlit interrupt the script at the
    next st call in ``on_epoch``. ``record`` (a dict held in session_state) outlives that interruption."""
    st.button("Stop", key="stop", help="Stops after the current epoch; the run is not saved.")
    progress = st.progress(0.0, text=f"Preparing the {config.feature_view} features and building the model "
                                     "(the first training in this server also loads TensorFlow)…")
    chart = st.empty()
    history: list[EpochLog] = []
    drawn = {"at": 0.0}

    # Mutating ``record`` is not a Streamlit yield point (assigning to session_state is), so the
    # epoch and member are stored even when Stop interrupts at the next st call.
    def on_epoch(entry: EpochLog) -> None:
        history.append(entry)
        record["last_epoch"], record["member"] = entry.epoch, entry.member
        progress.progress(training_fraction(config, entry.member, entry.epoch), text=epoch_text(entry, config))
        if time.monotonic() - drawn["at"] >= CHART_EVERY_S:
            drawn["at"] = time.monotonic()
            chart.plotly_chart(loss_figure(history, config.ensemble, "Live loss"),
                               key=f"live_loss_{entry.member}_{entry.epoch}")

    shown = {"at": 0.0}

    def on_batch(step: BatchProgress) -> None:
        if time.monotonic() - shown["at"] < 0.25:
            return
        shown["at"] = time.monotonic()
        member = "" if config.ensemble == 1 else f"{config.ensemble} networks together · " \
            if config.member_mode == "stacked" else f"member {step.member}/{config.ensemble} · "
        done = training_fraction(config, step.member, step.epoch - 1 + step.batch / max(step.batches, 1))
        progress.progress(done, text=f"{member}epoch {step.epoch}/{config.epochs} · batch {step.batch}/{step.batches}")

    result = run_experiment(dataset, features, config, on_epoch=on_epoch, on_batch=on_batch)
    progress.progress(1.0, text=f"done: {training_text(result.history, config)} in {result.seconds:.1f} s")
    return result


def save_trained(dataset, result: ExperimentResult, record: dict) -> Path:
    folder = save_run(result)
    record["saved"] = str(folder)
    st.session_state.training_in_progress = False
    return folder


def train_or_load(dataset, features: FeatureSet, config: TrainConfig, labels: LabelsInfo, again: bool) -> None:
    existing = find_run(features, config, labels)
    if existing is not None and not again:
        select_run(existing.folder)
        st.session_state[HEADLINE] = str(existing.folder)
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
    st.session_state[HEADLINE] = str(folder)
    st.success(f"Saved run {folder.name}" + (" (replaced the earlier run of this configuration)" if existing else ""))


def headline(features: FeatureSet, config: TrainConfig | None, labels: LabelsInfo) -> None:
    """Right under Train, once it has trained (or loaded) the run of the controls' configuration: its
    precision@k against the frequency prior, with both intervals; kept until the controls change."""
    folder = st.session_state.get(HEADLINE)
    run = find_run(features, config, labels) if config is not None and folder else None
    if run is None or str(run.folder) != folder:
        return
    evaluation, k = run.evaluation, run.config.k
    with st.container(border=True, key="headline"):
        score, verdict = st.columns([1, 2])
        metric_with_prior(score, f"Precision@{k} of this run", evaluation.precision_at_k,
                          evaluation.prior_precision_at_k)
        verdict.markdown(verdict_text(run))
        verdict.caption(f"{evaluation.n_test:,} test posters · full results, per genre, under Results below.")


def verdict_text(run: Run) -> str:
    evaluation = run.evaluation
    if not evaluation.overlaps_prior():
        return "**Better than the frequency prior**: the 95% intervals of the two precisions do not overlap."
    if evaluation.precision_at_k.value > evaluation.prior_precision_at_k.value:
        return ("**Not clearly better than the frequency prior**: the 95% intervals overlap, so always answering "
                "the most frequent genres may do as well on these test posters.")
    return ("**Not better than the frequency prior**: always answering the most frequent genres does at least as "
            "well on these test posters.")


# ---- saved runs -------------------------------------------------------------------------------

def select_run(folder: Path) -> None:
    """Show ``folder`` in the run menu below (drawn later in this script run) and on the other pages."""
    remember_run(folder)
    st.session_state.run_select = str(folder)


def show_table(table: pd.DataFrame) -> None:
    number = {name: st.column_config.NumberColumn(format="%.3f")
              for name in ("precision@k", "prior", "recall@k", "micro F1", "macro F1")}
    shown = [column for column in table.columns if column not in HIDDEN_TABLE_COLUMNS]
    st.dataframe(table[shown], hide_index=True, key="runs_table", column_config={
        **number, OPTIONS_BY_NAME["learning_rate"].column: st.column_config.NumberColumn(format="%.0e"),
        OPTIONS_BY_NAME["power_normalize"].column: st.column_config.CheckboxColumn("√ features"),
        "train seconds": st.column_config.NumberColumn(format="%.1f")})


def comparison_chart(table: pd.DataFrame, runs: list[Run]) -> None:
    """Runs against one hyperparameter: only the options that apply to at least one of ``runs`` are offered."""
    columns = comparable_columns([run.config for run in runs])
    if st.session_state.get("compare_x") not in columns:
        st.session_state.pop("compare_x", None)
    x_col, y_col = st.columns(2)
    x = x_col.selectbox("Hyperparameter (x)", columns, key="compare_x", index=first_comparable(columns))
    y = y_col.selectbox("Metric (y)", METRIC_COLUMNS, key="compare_y")
    if missing := int(table[x].isna().sum()):
        st.caption(f"{missing} of the {len(table)} runs have no {x} (it does not apply to their head) and are "
                   "not drawn.")
    log_scale = {option.column for option in TRAIN_OPTIONS if option.grid}
    figure = px.scatter(table, x=x, y=y, color=OPTIONS_BY_NAME["feature_view"].column, hover_name="run",
                        log_x=x in log_scale, hover_data={"created": True, "epochs": True, "prior": ":.3f"})
    figure.update_traces(marker_size=11)
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(figure, key="compare_chart")


def show_results(run: Run) -> None:
    config, evaluation = run.config, run.evaluation
    random_run_warning(run)
    st.caption(run.summary())
    precision_col, recall_col, f1_col, ap_col = st.columns(4)
    metric_with_prior(precision_col, f"Precision@{config.k}", evaluation.precision_at_k,
                      evaluation.prior_precision_at_k)
    metric_with_prior(recall_col, f"Recall@{config.k}", evaluation.recall_at_k, evaluation.prior_recall_at_k)
    f1_col.metric("Micro / macro F1", f"{fmt(evaluation.micro_f1)} / {fmt(evaluation.macro_f1)}")
    f1_col.caption(f"genres scored ≥ {evaluation.threshold:g} count as predicted")
    ap_col.metric("Mean average precision", fmt(evaluation.mean_average_precision))
    ap_col.caption("mean over genres of the per-genre AP")
    if evaluation.overlaps_prior():
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
st.caption("Start from a preset (fast for moving sliders, the tutorial's recipe, or the recommended one), move "
           "the hyperparameters, and compare every run against the frequency prior.")
stopped_notice()
dataset, _ = active_dataset()
features = require_features(dataset)
labels = current_labels(dataset, features)
n_genres = len(dataset.genre_counts())

init_controls()
preset = preset_controls(len(dataset))
train_controls()
remember_controls()
try:
    config = config_from_controls(n_genres)
except TrainingError as err:
    config = None
    st.error(str(err))

if needs_flatten(features, config):
    config = None
if config is not None:
    changes = changed_from(preset, config)
    if changes:
        st.caption(f"Changed from the {preset} preset: {', '.join(changes)}")
    if find_run(features, config, labels) is not None:
        st.caption("This configuration is already trained: Train will load it from disk.")
again = st.checkbox("train again (even if this configuration was already trained)", key="train_again")
if st.button("Train", key="train", type="primary", disabled=config is None):
    save_settings(**{LAST_PRESET: preset})
    train_or_load(dataset, features, config, labels, again)
headline(features, config, labels)
sweep_section(dataset, features, config)

st.header("Results")
show_notice()
runs = dataset_runs(dataset)
if not runs:
    st.info("No saved runs for this dataset yet: choose a preset and press Train.")
    st.stop()
show_results(run_selector(runs, key="run_select", label="Show run", current=labels))

st.header("Experiments")
st.caption(f"{len(runs)} saved run(s) on this dataset; every run is also available on the Predictions page.")
if stale := sum(not run.trained_on(labels) for run in runs):
    st.caption(f"{stale} of them were not trained on today's labels (column labels): their figures answer for "
               "the labels they were trained on, and Train never reuses them.")
table = runs_table(runs, labels)
show_table(table)
comparison_chart(table, runs)
delete_controls(runs)
