"""The Home page (AppTest on the tiny random-weights dataset), and what every page script must avoid.

Behaviours locked in:
- Home runs without exception, warns about random weights, counts the cached features and the saved
  runs of the active dataset (a run saved afterwards is counted on the next visit);
- one click on "Explore the demo" extracts a fresh dataset's features and trains and saves `fast`;
  afterwards the counts say so and the button is gone; after one genre of labels.csv is edited the run is
  said not to answer for today's labels, the button is back and trains a second run (the folder unchanged);
- on the synthetic demo with ImageNet weights chosen, the one click extracts EfficientNet-Lite2 ImageNet
  features when its package is installed (the page says so first), trains on them and makes them the
  active features; any other dataset, backbone or weights choice is kept as chosen;
- a cold Home (a fresh process) imports none of the libraries it does not need for its first paint
  (scikit-learn alone took 1.4 s to import);
- no page script holds a bare expression other than a call (a string placed after the first statement,
  a name, a tuple...): Streamlit "magic" would write it onto the page.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE_SCRIPTS = [ROOT / "app.py", *sorted(path for path in (ROOT / "pages").glob("*.py")
                                         if not path.name.startswith("_"))]
NOT_FOR_FIRST_PAINT = ("sklearn", "scipy", "pandas", "tensorflow", "keras", "umap", "numba")
COLD_HOME = '''
import sys
from streamlit.testing.v1 import AppTest
from core.data.demo import DemoConfig, make_demo_dataset
root = make_demo_dataset(sys.argv[1], DemoConfig(n_posters=6))
at = AppTest.from_file(sys.argv[2], default_timeout=120)
at.session_state["settings"] = {"dataset": str(root), "weights": "none", "precision": "auto"}
at.run()
assert not at.exception, at.exception
assert at.metric, "Home was not drawn"
print(" ".join(name for name in sys.argv[3:] if name in sys.modules))
'''
DOCSTRING_HOLDERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)
NOT_WRITTEN = (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)


def magic_writes(tree: ast.AST) -> list[int]:
    """Line numbers of the expressions Streamlit magic would ``st.write`` (see streamlit's magic.py)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            for index, child in enumerate(statements):
                if not isinstance(child, ast.Expr) or isinstance(child.value, NOT_WRITTEN):
                    continue
                docstring = (index == 0 and field == "body" and isinstance(node, DOCSTRING_HOLDERS)
                             and isinstance(child.value, ast.Constant) and isinstance(child.value.value, str))
                if not docstring:
                    lines.append(child.lineno)
    return lines


@pytest.mark.parametrize("script", PAGE_SCRIPTS, ids=lambda path: path.name)
def test_page_script_writes_nothing_by_magic(script):
    assert magic_writes(ast.parse(script.read_text(), str(script))) == []


def test_magic_check_finds_a_string_after_a_constant():
    tree = ast.parse('"""Module docstring."""\nLIMIT = 3\n"""Not a docstring: shown on the page."""\n'
                     'def f():\n    x = 1\n    "shown too"\n')
    assert magic_writes(tree) == [3, 6]


def test_a_cold_home_imports_nothing_its_first_paint_does_not_need(tmp_path):
    env = {**os.environ, "POSTER_GENRE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", COLD_HOME, str(tmp_path / "demo"), str(ROOT / "app.py"),
                           *NOT_FOR_FIRST_PAINT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == []


def test_home_counts_features_and_runs(tiny_features):
    from core.model.experiment import run_experiment
    from core.model.runs import delete_run, runs_for_dataset, save_run
    from core.model.config import TrainConfig

    dataset, features = tiny_features
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(dataset.root), "weights": "none", "precision": "auto"}
    at.run()
    assert not at.exception
    assert any("RANDOM" in warning.value for warning in at.warning)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Posters with cached features"] == f"{len(features.ids)} / {len(dataset)}"
    before = int(metrics["Saved training runs on this dataset"])
    assert before == len(runs_for_dataset(dataset.root))

    result = run_experiment(dataset, features, TrainConfig(feature_view="avg", hidden=(8,), epochs=1, seed=7))
    folder = save_run(result, dataset_info={"root": str(dataset.root.resolve()), "name": dataset.name})
    try:
        at.switch_page("pages/data.py").run()
        at.switch_page("pages/home.py").run()
        counted = {metric.label: metric.value for metric in at.metric}["Saved training runs on this dataset"]
        assert int(counted) == before + 1
    finally:
        delete_run(folder)


def test_one_click_start_extracts_features_and_trains_fast(tmp_path):
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.model.runs import runs_for_dataset

    root = make_demo_dataset(tmp_path / "fresh", DemoConfig(n_posters=24, seed=5))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["settings"] = {"dataset": str(root), "weights": "none", "precision": "auto"}
    # In a fresh process the first run reroutes through app.py (pages._shared.route_through_app), and
    # AppTest then drops the next widget event; a second run is the page a user would click on.
    at.run().run()
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Posters with cached features"] == "0 / 24"
    assert at.button(key="quick_start").label == "Explore the demo"
    at.button(key="quick_start").click().run()
    assert not at.exception
    assert any("`fast` model trained" in message.value for message in at.success)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Posters with cached features"] == "24 / 24"
    assert metrics["Saved training runs on this dataset"] == "1"
    [run] = runs_for_dataset(root)
    assert run.config.head == "kernel" and run.weights.is_random
    assert not [button for button in at.button if button.key == "quick_start"], "nothing left to start"

    from tests.test_hostile_inputs import folder_hashes
    from tests.test_run_identity import edit_genre

    first_genres = (root / "labels.csv").read_text().splitlines()[1].rsplit(",", 1)[1]
    edit_genre(root, "demo-0001", "Drama" if first_genres != "Drama" else "Comedy")
    hashes = folder_hashes(root)
    at.run()
    assert any("not trained on today's labels.csv" in caption.value for caption in at.caption)
    at.button(key="quick_start").click().run()
    assert not at.exception and any("`fast` model trained" in message.value for message in at.success)
    assert len(runs_for_dataset(root)) == 2 and folder_hashes(root) == hashes
    assert not [button for button in at.button if button.key == "quick_start"], "trained on today's labels"


def test_first_touch_features_take_lite2_for_the_demo_only_when_its_package_is_installed(tmp_path, monkeypatch):
    from core.data.datasets import load_dataset
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.features import efficientnet_lite
    from core.features.pipeline import FeatureConfig
    from core.model.quickstart import first_touch_features

    demo, _ = load_dataset(make_demo_dataset(tmp_path / "demo", DemoConfig(n_posters=6, seed=1)))
    real = make_demo_dataset(tmp_path / "real", DemoConfig(n_posters=6, seed=1))
    (real / "dataset.json").unlink()
    real, _ = load_dataset(real)
    monkeypatch.setattr(efficientnet_lite, "package_installed", lambda: True)
    chosen = FeatureConfig(weights="imagenet")
    assert first_touch_features(demo, chosen) == FeatureConfig(weights="imagenet", backbone="efficientnet-lite2")
    assert first_touch_features(demo, chosen).image_size == 260
    for kept in (FeatureConfig(weights="none"), FeatureConfig(weights="imagenet", backbone="resnet50"),
                 FeatureConfig(weights=str(tmp_path / "vgg16.weights.h5"))):
        assert first_touch_features(demo, kept) == kept
    assert not real.synthetic and first_touch_features(real, chosen) == chosen
    monkeypatch.setattr(efficientnet_lite, "package_installed", lambda: False)
    assert first_touch_features(demo, chosen) == chosen


def test_one_click_on_the_demo_extracts_imagenet_lite2_features_and_makes_them_active(tmp_path):
    from core.cache import cache_root
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.features import efficientnet_lite
    from core.model.runs import runs_for_dataset

    if not efficientnet_lite.package_installed():
        pytest.skip(f"needs the package {efficientnet_lite.PACKAGE} (in requirements.txt)")
    root = make_demo_dataset(tmp_path / "fresh", DemoConfig(n_posters=24, seed=7))
    settings_file = cache_root() / "ui_settings.json"
    settings_file.unlink(missing_ok=True)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.session_state["settings"] = {"dataset": str(root), "weights": "imagenet", "precision": "auto"}
        at.run().run()
        assert any("**EfficientNet-Lite2** with its ImageNet weights" in caption.value for caption in at.caption)
        at.button(key="quick_start").click().run()
        assert not at.exception and not at.error
        assert any("`fast` model trained" in message.value for message in at.success)
        assert at.session_state["settings"]["backbone"] == "efficientnet-lite2"
        metrics = {metric.label: metric.value for metric in at.metric}
        assert metrics["Posters with cached features"] == "24 / 24"
        [run] = runs_for_dataset(root)
        assert run.feature_config.backbone == "efficientnet-lite2" and not run.weights.is_random
        assert run.features_label == "EfficientNet-Lite2, tutorial 260x260"
    finally:
        settings_file.unlink(missing_ok=True)
