"""The Train page, driven through the app router with AppTest on the tiny random-weights features.

Locks in:
- the page runs without exception and every control exists by key;
- a new browser session opens on the fast preset (kernel head), every preset one click away (a radio) with its
  cost beside it; once Train has trained with a preset, a new session opens on that one (remembered in the
  UI settings file), and an unknown remembered preset falls back to fast;
- when Train ends, right under the button: the run's precision@k with its 95% interval beside the frequency
  prior's and whether it beats the prior, kept until the controls change;
- a kernel run's comparison chart offers no network-only option (no learning rate, optimizer, hidden
  layers, epochs run) and opens on the ridge; with a network run beside it, the runs without the chosen
  option are counted as not drawn;
- switching the preset resets the controls to that preset's values (recommended: an 8-network ensemble on
  square-rooted avg45 features), and the form survives a page switch;
- a preset that would train for long on the dataset warns with its estimated time and points to fast;
- an invalid combination (early stopping with validation 0 and a single network) shows core's
  TrainingError message; with an ensemble the validation fraction is disabled and the error goes away;
- a 2-epoch training on the avg view is saved, listed in the experiment table and its metrics are
  shown beside the frequency prior; the selected run is published in session_state["selected_run"];
- training the same configuration again is answered from disk without a new run folder; after one genre of
  labels.csv is edited (the dataset folder otherwise unchanged) Train trains again, the table's labels column
  says which run was trained on today's labels, and the old run, picked, is marked and warned about;
- a 2-network ensemble saves the history of both members, and the run's loss chart draws a train and a
  validation line for each member;
- Stop (Streamlit interrupts the script at its next st call inside on_epoch, then runs it anew)
  leaves a page that says once how many epochs ran (and in which member of an ensemble) and that
  nothing was saved;
- deleting a run (with confirmation) removes its folder;
- every TrainConfig field has a widget keyed by the field name, with the option's label, and the same
  values entered on the page and as CLI flags give equal TrainConfigs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.cli.main import build_parser, train_config_from_args
from core.model.config import TRAIN_OPTIONS, TrainConfig
from core.model.runs import load_run, runs_root

APP = Path(__file__).resolve().parents[1] / "app.py"
CONTROL_KEYS = ("feature_view", "hidden", "dropout", "input_dropout", "power_normalize", "standardize",
                "learning_rate", "optimizer", "epochs", "batch_size", "test_size", "ensemble", "validation_split",
                "early_stopping", "patience", "seed", "k", "threshold", "member_mode", "head", "kernel_gamma", "ridge")


def open_train_page(root: Path, settings: bool = True) -> AppTest:
    """A new browser session on the Train page of ``root``; ``settings=False`` leaves the session to read
    them from the UI settings file, as a new browser session does."""
    at = AppTest.from_file(str(APP), default_timeout=120)
    if settings:
        at.session_state["settings"] = {"dataset": str(root), "weights": "none", "precision": "auto"}
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    return at


@pytest.fixture
def train_page(tiny_features):
    """The Train page switched to the tutorial preset, which the network tests start from."""
    dataset, _ = tiny_features
    at = open_train_page(dataset.root)
    at.radio(key="preset").set_value("tutorial").run()
    assert not at.exception
    return at


@pytest.fixture
def own_dataset(tiny_dataset, tiny_features, tmp_path):
    """A copy of the tiny dataset (same features), so the runs listed are this test's only."""
    from tests.test_run_identity import copy_dataset

    return copy_dataset(tiny_dataset, tmp_path / "posters")


@pytest.fixture
def settings_file():
    """The UI settings file, none at first (earlier tests' Train saved theirs) and removed afterwards, so no
    later test reads what this one saved."""
    from pages._shared import settings_path

    settings_path().unlink(missing_ok=True)
    yield settings_path()
    settings_path().unlink(missing_ok=True)


def widget(at: AppTest, key: str):
    for kind in ("radio", "text_input", "slider", "checkbox", "select_slider", "selectbox", "number_input",
                 "multiselect", "button"):
        found = [element for element in getattr(at, kind) if element.key == key]
        if found:
            return found[0]
    raise AssertionError(f"no widget with key {key!r}")


def run_folders() -> set[str]:
    return {path.name for path in runs_root().iterdir() if path.is_dir() and not path.name.startswith(".")}


def texts(elements) -> str:
    return " | ".join(str(element.value) for element in elements)


def train_avg(at: AppTest, hidden: str, ensemble: int = 1) -> Path:
    """Train 2 epochs on the avg view through the page; the new run folder."""
    at.radio(key="feature_view").set_value("avg")
    at.text_input(key="hidden").input(hidden)
    at.number_input(key="epochs").set_value(2)
    at.number_input(key="ensemble").set_value(ensemble)
    at.run()
    before = run_folders()
    at.button(key="train").click().run()
    assert not at.exception and not at.error
    new = run_folders() - before
    assert len(new) == 1
    return runs_root() / new.pop()


def test_page_runs_with_every_control_by_key(train_page):
    for key in ("preset", *CONTROL_KEYS, "train", "train_again"):
        widget(train_page, key)
    assert "RANDOM" in texts(train_page.warning)


def test_every_config_field_has_a_widget_with_the_option_label(train_page):
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    assert sorted(names) == sorted(option.name for option in TRAIN_OPTIONS)
    for option in TRAIN_OPTIONS:
        assert widget(train_page, option.name).label.startswith(option.label), option.name


def test_page_and_cli_give_equal_configs_for_the_same_values(train_page, monkeypatch):
    import core.model.experiment
    from core.errors import TrainingError

    trained = []

    def capture(dataset, features, config, **callbacks):
        trained.append(config)
        raise TrainingError("captured the configuration")

    monkeypatch.setattr(core.model.experiment, "run_experiment", capture)
    at = train_page
    at.radio(key="feature_view").set_value("avg")
    at.text_input(key="hidden").input("64,32")
    at.slider(key="dropout").set_value(0.3)
    at.slider(key="input_dropout").set_value(0.2)
    at.checkbox(key="power_normalize").check()
    at.checkbox(key="standardize").check()
    at.selectbox(key="optimizer").set_value("adam")
    at.select_slider(key="learning_rate").set_value(2e-3)
    at.number_input(key="epochs").set_value(7)
    at.number_input(key="batch_size").set_value(32)
    at.number_input(key="seed").set_value(5)
    at.slider(key="test_size").set_value(0.25)
    at.number_input(key="ensemble").set_value(1)
    at.slider(key="validation_split").set_value(0.15)
    at.checkbox(key="early_stopping").check()
    at.number_input(key="patience").set_value(4)
    at.number_input(key="k").set_value(2)
    at.slider(key="threshold").set_value(0.4)
    at.run()
    assert not at.exception and not at.error
    args = build_parser().parse_args([
        "train", "--dataset", "d", "--out", "o", "--preset", "tutorial", "--feature-view", "avg", "--hidden", "64,32",
        "--dropout", "0.3", "--input-dropout", "0.2", "--power-normalize", "--standardize", "--optimizer", "adam",
        "--lr", "0.002", "--epochs", "7", "--batch-size", "32", "--seed", "5", "--test-size", "0.25",
        "--ensemble", "1", "--validation-split", "0.15", "--early-stopping", "--patience", "4", "--k", "2",
        "--threshold", "0.4"])
    expected = train_config_from_args(args)
    at.button(key="train").click().run()
    assert "captured the configuration" in texts(at.error)
    assert trained == [expected]
    changed = next(caption.value for caption in at.caption if "Changed from" in caption.value)
    assert changed.endswith(", ".join(name for name in expected.to_dict()
                                      if expected.to_dict()[name] != TrainConfig().to_dict()[name]))


def test_preset_switch_resets_the_controls(train_page):
    at = train_page
    assert (widget(at, "feature_view").value, widget(at, "optimizer").value) == ("flatten", "rmsprop")
    assert widget(at, "learning_rate").value == pytest.approx(1e-4)
    assert widget(at, "hidden").value == "1024,256"
    at.radio(key="preset").set_value("recommended").run()
    assert not at.exception
    shown = (widget(at, "feature_view").value, widget(at, "optimizer").value, widget(at, "hidden").value)
    assert shown == ("avg45", "adam", "512")
    assert widget(at, "learning_rate").value == pytest.approx(2e-3)
    assert widget(at, "dropout").value == pytest.approx(0.7) and widget(at, "input_dropout").value == pytest.approx(0.5)
    assert widget(at, "early_stopping").value is True
    assert widget(at, "power_normalize").value is True and widget(at, "standardize").value is True
    assert widget(at, "ensemble").value == 8
    assert widget(at, "validation_split").disabled
    assert not at.error and "Changed from" not in texts(at.caption)
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/train.py").run()
    assert widget(at, "feature_view").value == "avg45" and at.radio(key="preset").value == "recommended"
    at.radio(key="preset").set_value("tutorial").run()
    assert widget(at, "feature_view").value == "flatten" and widget(at, "early_stopping").value is False
    assert widget(at, "ensemble").value == 1 and widget(at, "power_normalize").value is False
    assert not widget(at, "validation_split").disabled


def test_a_preset_that_would_train_for_long_warns_and_points_to_fast(train_page, monkeypatch):
    monkeypatch.setattr("core.model.config.LONG_TRAINING_S", 0.01)  # 40 posters: a long training made short
    at = train_page
    at.radio(key="preset").set_value("recommended").run()
    assert "recommended would train for about" in texts(at.warning) and "fast preset" in texts(at.warning)
    at.radio(key="preset").set_value("fast").run()
    assert "would train for about" not in texts(at.warning)


def test_the_fast_preset_greys_out_the_network_options_and_trains_in_closed_form(train_page):
    at = train_page
    assert widget(at, "kernel_gamma").disabled and widget(at, "ridge").disabled and not widget(at, "hidden").disabled
    at.radio(key="preset").set_value("fast").run()
    assert widget(at, "head").value == "kernel" and widget(at, "feature_view").value == "avg45"
    for key in ("hidden", "dropout", "optimizer", "learning_rate", "epochs", "ensemble", "early_stopping"):
        assert widget(at, key).disabled, key
    assert not widget(at, "kernel_gamma").disabled and not widget(at, "ridge").disabled
    assert "closed-form fit" in texts(at.caption)
    at.select_slider(key="ridge").set_value(3.0)
    at.run()
    before = run_folders()
    at.button(key="train").click().run()
    assert not at.exception and not at.error
    (folder,) = run_folders() - before
    run = load_run(runs_root() / folder)
    assert (run.config.head, run.config.ridge) == ("kernel", 3.0) and run.history == []
    summary = run.summary()
    assert "closed-form fit (no epochs)" in summary and "ridge 3" in summary and "hidden" not in summary
    assert "closed-form fit (no epochs)" in texts(at.caption)
    table = next(frame.value for frame in at.dataframe if "optimizer" in frame.value.columns)
    row = table[table["head"] == "kernel"].iloc[0]
    assert row["epochs"] == "—" and row["optimizer"] is None and row["ridge"] == 3.0


def test_early_stopping_without_validation_shows_the_training_error(train_page):
    at = train_page
    at.number_input(key="ensemble").set_value(1)
    at.slider(key="validation_split").set_value(0.0)
    at.checkbox(key="early_stopping").check().run()
    assert "early stopping needs a validation split" in texts(at.error)
    assert at.button(key="train").disabled
    at.number_input(key="ensemble").set_value(3).run()
    assert not at.error and not at.button(key="train").disabled
    assert "ensemble" in texts(at.caption)


def test_train_save_list_reload_and_delete(train_page):
    at = train_page
    folder = train_avg(at, "32")
    saved = run_folders()
    assert at.session_state["selected_run"] == str(folder)
    assert at.session_state["training_in_progress"] is False
    labels = [metric.label for metric in at.metric]
    assert "Precision@3" in labels and "Recall@3" in labels
    assert all("vs prior" in str(metric.proto.delta) for metric in at.metric if metric.label.endswith("@3"))
    assert "frequency prior" in texts(at.caption)
    table = next(frame.value for frame in at.dataframe if "optimizer" in frame.value.columns)
    assert "2/2" in set(table["epochs"]) and "avg" in set(table["view"])

    at.button(key="train").click().run()
    assert "already trained — loaded from disk" in texts(at.success)
    assert run_folders() == saved

    at.multiselect(key="delete_select").set_value([str(folder)])
    at.checkbox(key="delete_confirm").check()
    at.button(key="delete_runs").click().run()
    assert not at.exception
    assert not Path(folder).exists()
    assert "Deleted 1 run" in texts(at.success)


def test_an_ensemble_saves_and_charts_every_member(train_page):
    run = load_run(train_avg(train_page, "16", ensemble=2))
    at = train_page
    assert run.config.ensemble == 2
    assert sorted((entry.member, entry.epoch) for entry in run.history) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(entry.val_loss is not None for entry in run.history)
    (chart,) = [element for element in at.get("plotly_chart") if "run_loss" in element.proto.id]
    names = [trace["name"] for trace in json.loads(chart.proto.spec)["data"]]
    assert names == ["member 1 train", "member 1 validation", "member 2 train", "member 2 validation"]
    table = next(frame.value for frame in at.dataframe if "optimizer" in frame.value.columns)
    assert "2/2 ×2" in set(table["epochs"])


@pytest.mark.parametrize("fast_reruns, members, said", [
    (True, 1, "Training was stopped after 2 epochs"),
    (False, 1, "Training was stopped after 2 epochs"),
    (True, 3, "Training was stopped in member 2/3 after 2 epochs"),
], ids=["fast-reruns-stop-then-new-run", "rerun-request", "ensemble-member-2"])
def test_stop_during_training_reports_stopped_and_saves_nothing(train_page, monkeypatch, fast_reruns, members,
                                                                said):
    """What clicking Stop does: with runner.fastReruns (our config) Streamlit stops the running script
    at its next st call and starts a new run; without it, the running script itself reruns."""
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    import core.model.experiment
    from core.model.classifier import EpochLog

    calls = []

    def interrupted_training(dataset, features, config, *, on_epoch=None, should_stop=None, on_batch=None):
        calls.append(config)
        if len(calls) > 1:
            raise AssertionError("the run after Stop must not train again")
        member = 2 if config.ensemble > 1 else 1
        on_epoch(EpochLog(1, 0.7, None, 0.1, member))
        ctx = get_script_run_ctx()
        if fast_reruns:
            ctx.script_requests.request_stop()
        else:
            ctx.script_requests.request_rerun(RerunData(page_script_hash=ctx.page_script_hash))
        on_epoch(EpochLog(2, 0.6, None, 0.1, member))
        raise AssertionError("Stop did not interrupt training")

    monkeypatch.setattr(core.model.experiment, "run_experiment", interrupted_training)
    at = train_page
    at.number_input(key="ensemble").set_value(members).run()
    before = run_folders()
    at.button(key="train").click().run()
    if fast_reruns:
        at.run()
    assert not at.exception
    assert f"{said}; the run was not saved" in texts(at.warning)
    assert run_folders() == before and len(calls) == 1
    at.run()
    assert "Training was stopped" not in texts(at.warning)


def test_train_retrains_after_one_genre_is_edited_and_marks_the_old_run(tiny_dataset, tiny_features, tmp_path):
    """A run answers only for the labels it was trained on: after one genre of labels.csv changes, Train
    trains again instead of loading the old run, which is listed as trained on other labels."""
    from tests.test_hostile_inputs import folder_hashes
    from tests.test_run_identity import copy_dataset, edit_genre

    root = copy_dataset(tiny_dataset, tmp_path / "posters")
    at = open_train_page(root)
    at.radio(key="preset").set_value("tutorial").run()
    widget(at, "seed").set_value(107)
    old = train_avg(at, "12")
    at.run()
    assert "already trained: Train will load it from disk" in texts(at.caption)
    edit_genre(root, "demo-0001", "Comedy")
    hashes = folder_hashes(root)
    at.run()
    assert "already trained: Train will load it from disk" not in texts(at.caption)
    before = run_folders()
    at.button(key="train").click().run()
    assert not at.exception and not at.error and "already trained" not in texts(at.success)
    [new] = run_folders() - before
    assert at.session_state["selected_run"] == str(runs_root() / new) and folder_hashes(root) == hashes
    table = next(frame.value for frame in at.dataframe if "labels" in frame.value.columns)
    assert sorted(table["labels"]) == ["other", "today's"]
    assert "1 of them were not trained on today's labels" in texts(at.caption)
    assert not [warning for warning in at.warning if "other labels" in str(warning.value)]
    at.selectbox(key="run_select").set_value(str(old)).run()
    assert "· OTHER LABELS" in at.selectbox(key="run_select").format_func(str(old))
    assert ("This run was trained on other labels than today's: the same 40 posters and 8 genres, but some "
            "posters' genres were different then") in texts(at.warning)


def test_a_new_session_opens_on_fast_with_every_preset_one_click_away_and_its_cost(tiny_features):
    from core.model.config import PRESET_TABLE

    at = open_train_page(tiny_features[0].root)
    preset = at.radio(key="preset")
    assert preset.value == "fast" and preset.options == ["tutorial", "fast", "recommended"]
    assert list(preset.proto.captions) == [PRESET_TABLE[name].cost for name in preset.options]
    assert preset.proto.captions[0].startswith("about 12 minutes of training on the dev set")
    assert (widget(at, "head").value, widget(at, "feature_view").value) == ("kernel", "avg45")
    assert widget(at, "learning_rate").disabled and "Changed from" not in texts(at.caption)
    at.radio(key="preset").set_value("tutorial").run()
    assert (widget(at, "head").value, widget(at, "feature_view").value) == ("mlp", "flatten")


def test_a_new_session_opens_on_the_preset_last_trained_with(own_dataset, settings_file):
    at = open_train_page(own_dataset)
    at.radio(key="preset").set_value("recommended").run()
    at.radio(key="preset").set_value("tutorial").run()
    assert not settings_file.exists()
    widget(at, "seed").set_value(203)
    train_avg(at, "8")
    assert json.loads(settings_file.read_text())["train_preset"] == "tutorial"
    again = open_train_page(own_dataset, settings=False)
    assert again.session_state["settings"]["dataset"] == str(own_dataset)
    assert again.radio(key="preset").value == "tutorial" and widget(again, "feature_view").value == "flatten"
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), "train_preset": "renamed"}))
    assert open_train_page(own_dataset, settings=False).radio(key="preset").value == "fast"


def document_order(at: AppTest) -> list:
    return list(at.main)


def train_fast(at: AppTest, seed: int) -> Path:
    """Train the fast preset (the kernel head, one solve) through the page; the new run folder. A seed of
    the test's own, so no other test's run of the same features and labels answers instead."""
    widget(at, "seed").set_value(seed).run()
    before = run_folders()
    at.button(key="train").click().run()
    assert not at.exception and not at.error
    (folder,) = run_folders() - before
    return runs_root() / folder


def test_the_headline_appears_right_under_train_with_its_interval_and_the_prior(own_dataset):
    at = open_train_page(own_dataset)
    with pytest.raises(KeyError):
        at.get_by_key("headline")
    run = load_run(train_fast(at, 201))
    evaluation = run.evaluation
    model, prior = evaluation.precision_at_k, evaluation.prior_precision_at_k
    nodes = document_order(at)
    train = nodes.index(at.button(key="train"))
    headline = nodes.index(at.get_by_key("headline"))
    results = next(index for index, node in enumerate(nodes) if node.type == "header" and node.value == "Results")
    first_metric = next(index for index, node in enumerate(nodes) if node.type == "metric")
    assert train < headline < first_metric < results
    metric = nodes[first_metric]
    assert metric.label == "Precision@3 of this run" and metric.value == f"{model.value:.3f}"
    assert metric.proto.delta == f"{model.value - prior.value:+.3f} vs prior"
    inside = " | ".join(str(node.value) for node in nodes[headline:results] if node.type in ("caption", "markdown"))
    assert f"95% bootstrap interval {model.low:.3f}–{model.high:.3f}" in inside
    assert f"frequency prior {prior.value:.3f} ({prior.low:.3f}–{prior.high:.3f})" in inside
    assert "than the frequency prior" in inside and f"{evaluation.n_test} test posters" in inside
    at.run()
    assert at.get_by_key("headline")
    at.select_slider(key="ridge").set_value(3.0).run()
    with pytest.raises(KeyError):
        at.get_by_key("headline")


def test_a_kernel_runs_comparison_chart_offers_only_what_applies(own_dataset):
    from core.model.config import MLP_ONLY, OPTIONS_BY_NAME

    at = open_train_page(own_dataset)
    train_fast(at, 202)
    offered = at.selectbox(key="compare_x").options
    network_only = {OPTIONS_BY_NAME[name].column for name in MLP_ONLY}
    assert network_only & set(offered) == set() and "epochs run" not in offered
    assert {"ridge", "kernel γ", "view", "train seconds"} <= set(offered)
    assert at.selectbox(key="compare_x").value == "ridge"
    (chart,) = [element for element in at.get("plotly_chart") if "compare_chart" in element.proto.id]
    assert json.loads(chart.proto.spec)["layout"]["xaxis"]["title"]["text"] == "ridge"
    at.radio(key="preset").set_value("tutorial").run()
    widget(at, "seed").set_value(202)
    train_avg(at, "8")
    offered = at.selectbox(key="compare_x").options
    assert {"learning rate", "ridge", "epochs run"} <= set(offered)
    assert at.selectbox(key="compare_x").value == "ridge"
    at.selectbox(key="compare_x").set_value("learning rate").run()
    assert "1 of the 2 runs have no learning rate (it does not apply to their head) and are not drawn" in texts(
        at.caption)
