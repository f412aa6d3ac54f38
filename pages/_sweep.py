"""The Train page's sweep section: many runs from one click, and their chart.

Imported by pages/train.py (not run as a page, so Streamlit magic does not apply here).
"""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.errors import PosterGenreError
from core.model.config import OPTIONS_BY_NAME, TrainConfig, applies
from core.model.runs import load_run
from core.model.sweep import SWEEPABLE, SweepConfig, parse_values, run_sweep, sweep_table, values_text
from pages._shared import progress_bar
from pages._widgets import remember_run

LAST_SWEEP = "sweep_last"
METRICS = {"precision_at_k": "precision@k", "recall_at_k": "recall@k", "micro_f1": "micro F1",
           "macro_f1": "macro F1", "mean_average_precision": "mean AP"}
PRIOR_OF = {"precision_at_k": "prior_precision_at_k", "recall_at_k": "prior_recall_at_k"}


def sweep_controls(base: TrainConfig) -> SweepConfig | None:
    """One or two options with their values, and seeds; ``None`` (with a message) until they parse."""
    options = [name for name in SWEEPABLE if applies(name, base)]
    if chosen := st.session_state.get("sweep_params"):
        st.session_state["sweep_params"] = [name for name in chosen if name in options]
    names = st.multiselect("Options to sweep (one or two)", options, max_selections=2, key="sweep_params",
                           format_func=lambda name: OPTIONS_BY_NAME[name].label,
                           help="Only the options that apply to the chosen head.")
    grid = []
    columns = st.columns(max(len(names), 1) + 1)
    try:
        for column, name in zip(columns, names):
            st.session_state.setdefault(f"sweep_values_{name}", values_text(name, [getattr(base, name)]))
            text = column.text_input(f"Values of {OPTIONS_BY_NAME[name].label}", key=f"sweep_values_{name}",
                                     help="Comma-separated; a list option takes ';' between its values, "
                                          "e.g. 512;1024,256")
            grid.append((name, parse_values(name, text)))
        st.session_state.setdefault("sweep_seeds", str(base.seed))
        seeds_text = columns[-1].text_input("Seeds", key="sweep_seeds",
                                            help="Comma-separated; every combination is trained once per seed.")
        seeds = parse_values("seed", seeds_text)
    except PosterGenreError as err:
        st.error(str(err))
        return None
    if not grid:
        st.caption("Choose one or two options above to sweep them; every other option keeps the value set in "
                   "the controls.")
        return None
    return SweepConfig(base=base, grid=tuple(grid), seeds=tuple(seeds))


def run_sweep_live(dataset, features, sweep: SweepConfig) -> None:
    """Train the sweep with one progress bar; Stop keeps the runs finished so far."""
    st.button("Stop", key="stop_sweep", help="Stops the sweep; runs already finished are kept.")
    box = st.empty()
    finished: list[str] = []
    st.session_state[LAST_SWEEP] = {"parameters": sweep.parameters, "folders": finished}

    result = run_sweep(dataset, features, sweep, on_progress=progress_bar(box, "Preparing the sweep…"),
                       on_run=lambda folder: finished.append(str(folder)))
    st.session_state[LAST_SWEEP] = {"parameters": sweep.parameters, "folders": [str(f) for f in result.folders]}
    box.progress(1.0, text=f"done: {len(result.folders)} runs ({sum(result.reused)} reused) in "
                           f"{result.seconds:.1f} s")


def sweep_figure(table: pd.DataFrame, parameters: list[str], metric: str) -> go.Figure:
    """One parameter: the metric against its values with 95% intervals, seeds as separate points and the
    frequency prior as a line. Two parameters: a heatmap of the metric's mean over seeds."""
    label = METRICS[metric]
    if len(parameters) == 2:
        x, y = parameters
        pivot = table.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
        figure = px.imshow(pivot, text_auto=".3f", aspect="auto", color_continuous_scale="Viridis",
                           labels={"color": f"{label} (mean over seeds)"})
        figure.update_xaxes(type="category")
        figure.update_yaxes(type="category")
    else:
        x = parameters[0]
        data = table.assign(seed=table["seed"].astype(str),
                            error_plus=table[f"{metric}_high"] - table[metric]
                            if f"{metric}_high" in table else None,
                            error_minus=table[metric] - table[f"{metric}_low"] if f"{metric}_low" in table else None)
        categorical = not pd.api.types.is_numeric_dtype(data[x])
        figure = px.scatter(data, x=x, y=metric, color="seed", custom_data=["run"],
                            error_y="error_plus" if f"{metric}_high" in table else None,
                            error_y_minus="error_minus" if f"{metric}_low" in table else None,
                            log_x=x == "learning_rate", labels={metric: label})
        if metric in PRIOR_OF and PRIOR_OF[metric] in data:
            prior = float(data[PRIOR_OF[metric]].mean())
            figure.add_hline(y=prior, line_dash="dash", line_color="grey",
                             annotation_text=f"frequency prior {prior:.3f}")
        if categorical:
            figure.update_xaxes(type="category")
        figure.update_traces(marker_size=11)
    figure.update_layout(height=420, margin=dict(l=10, r=10, t=30, b=10))
    return figure


def show_sweep(last: dict) -> None:
    runs = []
    for folder in last["folders"]:
        try:
            runs.append(load_run(folder))
        except PosterGenreError:
            continue
    if not runs:
        return
    parameters = list(last["parameters"])
    table = sweep_table(runs, parameters)
    metric = st.selectbox("Metric", list(METRICS), format_func=METRICS.get, key="sweep_metric")
    event = st.plotly_chart(sweep_figure(table, parameters, metric), key="sweep_chart", on_select="rerun",
                            selection_mode="points")
    if len(parameters) == 1:
        st.caption("Click a point to open that run on the Predictions page.")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    if points and points[0].get("customdata"):
        remember_run(points[0]["customdata"][0])
        st.switch_page("pages/predictions.py")
    st.dataframe(table[["run", *parameters, "seed", metric] + [c for c in (PRIOR_OF.get(metric),) if c]],
                 hide_index=True, key="sweep_table",
                 column_config={"run": st.column_config.TextColumn("run folder", width="small")})


def sweep_section(dataset, features, base: TrainConfig | None) -> None:
    st.header("Sweep")
    st.caption("Train every combination of the values below (and every seed) in one go, starting from the "
               "controls above. Configurations trained before are read from disk.")
    if base is None:
        st.info("Fix the training controls above first: the sweep starts from them.")
        return
    sweep = sweep_controls(base)
    if st.button("Run sweep", key="run_sweep", disabled=sweep is None):
        try:
            run_sweep_live(dataset, features, sweep)
        except PosterGenreError as err:
            st.error(str(err))
    last = st.session_state.get(LAST_SWEEP)
    if last and last.get("folders"):
        show_sweep(last)
