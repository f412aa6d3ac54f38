"""AppTest of the Clusters page on 40 synthetic posters with random VGG16 weights.

Behaviours locked in:
- the page runs without an exception, warns that the features come from random weights, and has its
  source, UMAP, colour, poster-pick and k controls;
- an uncached map waits for "Compute map", then draws a plotly map whose points carry row ids;
  a later visit (Streamlit's memory cache cleared) reads it from core's disk cache without a click;
- colouring by one genre splits the map into that genre and the rest;
- a box/lasso selection shows the selected posters and their genre shares; a single clicked point
  becomes the picked poster;
- above the picker's limit a search box narrows the poster list, and a clicked point is still picked;
- the nearest-neighbour section shows the picked poster and its neighbours as images, read from the
  neighbour index once it is on disk (no search against every row on each pick);
- the agreement table has an "overall" row first and one row per genre, with a lift per row;
- a saved run's last hidden layer is a map source; a run that does not match the features is
  refused with its RunError message;
- right after extraction of a set above the no-click size, the mosaic and the descriptor colourings show
  with no "Build the mosaic" / "Compute visual descriptors" button; a folder extracted before (no
  thumbnails or descriptors) shows both buttons, and one click on "Build the mosaic" decodes each poster
  once, draws the mosaic and makes the descriptors too (their button is gone); the next rerun decodes nothing.
"""
from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.elements.plotly_chart import PlotlySelectionState, PlotlyState
from streamlit.testing.v1 import AppTest

from core.features.views import FEATURE_VIEWS

APP = Path(__file__).resolve().parents[1] / "app.py"


def open_page(tiny_dataset: Path) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(tiny_dataset), "weights": "none", "precision": "auto"}
    at.run()
    at.switch_page("pages/clusters.py").run()
    assert not at.exception, at.exception
    return at


def show_map(at: AppTest) -> AppTest:
    buttons = [button for button in at.button if button.key == "compute_map"]
    if buttons:
        buttons[0].click().run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> dict[str, dict]:
    return {element.proto.id: json.loads(element.proto.spec) for element in at.get("plotly_chart")}


def umap_spec(at: AppTest) -> dict:
    specs = [spec for element_id, spec in charts(at).items() if "umap_chart" in element_id]
    assert len(specs) == 1, "the UMAP map is not shown"
    return specs[0]


def plotly_array(value) -> np.ndarray:
    """A trace's data array, whether plotly sent it as a list or as base64 typed-array data."""
    if isinstance(value, dict) and "bdata" in value:
        shape = [int(n) for n in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.asarray(value)


def image_count(at: AppTest) -> int:
    return sum(len(element.proto.imgs) for element in at.image)


def texts(at: AppTest) -> str:
    return "\n".join(element.value for element in [*at.caption, *at.markdown, *at.info, *at.subheader])


@pytest.fixture
def page(tiny_features, tiny_dataset) -> AppTest:
    return show_map(open_page(tiny_dataset))


def test_page_runs_with_its_controls_and_the_random_weights_warning(page):
    assert any("RANDOM" in warning.value for warning in page.warning)
    assert page.radio(key="map_source").value == "features"
    assert len(page.selectbox(key="map_view").options) == len(FEATURE_VIEWS) == 4
    for key in ("umap_neighbors", "umap_min_dist", "umap_pca", "n_similar", "agreement_k"):
        page.slider(key=key)
    assert page.selectbox(key="umap_metric").options == ["cosine", "euclidean", "correlation"]
    page.selectbox(key="color_genre")
    page.selectbox(key="pick_poster")


def test_map_waits_for_a_click_then_comes_from_the_disk_cache(tiny_features, tiny_dataset):
    at = open_page(tiny_dataset)
    at.slider(key="umap_min_dist").set_value(0.37).run()
    assert [button.key for button in at.button] == ["compute_map"]
    assert not any("umap_chart" in element_id for element_id in charts(at))
    show_map(at)
    spec = umap_spec(at)
    rows = sorted(int(point[0]) for trace in spec["data"] for point in plotly_array(trace["customdata"]))
    assert rows == list(range(len(tiny_features[1].ids)))
    hover = [text for trace in spec["data"] for text in trace["hovertext"]]
    poster = tiny_features[0].posters[0]
    assert f"<b>{poster.title}</b><br>{', '.join(poster.genres)}" in hover
    assert "Map computed in" in texts(at)

    st.cache_data.clear()
    again = open_page(tiny_dataset)
    again.slider(key="umap_min_dist").set_value(0.37).run()
    assert not [button for button in again.button if button.key == "compute_map"]
    umap_spec(again)
    assert "Map loaded from the disk cache" in texts(again)


def test_colouring_by_one_genre_splits_the_map_in_two(page, tiny_features):
    dataset, _ = tiny_features
    genre = next(iter(dataset.genre_counts()))
    page.selectbox(key="color_genre").set_value(genre).run()
    assert not page.exception
    assert sorted(trace["name"] for trace in umap_spec(page)["data"]) == sorted([genre, f"not {genre}"])


def test_agreement_table_has_overall_first_and_one_row_per_genre(page, tiny_features):
    dataset, _ = tiny_features
    table = page.dataframe[0].value
    assert table["genre"].iloc[0] == "overall"
    assert sorted(table["genre"].iloc[1:]) == sorted(dataset.genre_counts())
    assert {"observed", "chance", "lift"} <= set(table.columns)
    page.slider(key="agreement_k").set_value(3).run()
    assert not page.exception
    assert "k=3" in " ".join(metric.label for metric in page.metric)


def test_nearest_neighbours_show_the_picked_poster_and_its_neighbours(page):
    assert image_count(page) == 1 + page.slider(key="n_similar").value
    pick = page.selectbox(key="pick_poster")
    pick.set_value(pick.options[5]).run()
    assert not page.exception
    page.slider(key="n_similar").set_value(4).run()
    assert image_count(page) == 1 + 4


def test_a_picked_posters_neighbours_come_from_the_neighbour_index_once_it_is_on_disk(page, monkeypatch):
    import core.analysis.neighbours as neighbours

    def search_every_row(*args, **kwargs):
        raise AssertionError("searched every row although the neighbour index is on disk")

    monkeypatch.setattr(neighbours, "nearest_neighbors", search_every_row)
    pick = page.selectbox(key="pick_poster")
    pick.set_value(pick.options[7]).run()
    assert not page.exception
    assert image_count(page) == 1 + page.slider(key="n_similar").value


def fake_selection(monkeypatch, rows: list[int]) -> None:
    """AppTest cannot drag a box, so the map's chart call answers with a selection of ``rows``."""
    draw = st.plotly_chart

    def plotly_chart(figure, *args, **kwargs):
        event = draw(figure, *args, **kwargs)
        if kwargs.get("key") != "umap_chart":
            return event
        points = [{"customdata": [row]} for row in rows]
        return PlotlyState({"selection": PlotlySelectionState(
            {"points": points, "point_indices": rows, "box": [{}] if len(rows) > 1 else [], "lasso": []})})

    monkeypatch.setattr(st, "plotly_chart", plotly_chart)


def test_a_box_selection_shows_its_posters_and_genre_shares(page, monkeypatch):
    fake_selection(monkeypatch, [2, 5, 7])
    page.run()
    assert not page.exception
    assert "Selection: 3 posters" in [header.value for header in page.subheader]
    assert any("selection_genres" in element_id for element_id in charts(page))
    assert image_count(page) == 3 + 1 + page.slider(key="n_similar").value


def test_a_single_clicked_point_becomes_the_picked_poster(page, monkeypatch, tiny_features):
    fake_selection(monkeypatch, [11])
    page.run()
    assert not page.exception
    assert page.selectbox(key="pick_poster").value == tiny_features[1].ids[11]


def test_above_the_picker_limit_posters_are_searched_and_a_click_still_picks(page, monkeypatch, tiny_features):
    monkeypatch.setattr("pages._widgets.PICKER_OPTIONS", 10)
    page.run()
    assert len(page.selectbox(key="pick_poster").options) == 10
    assert "The first 10 are listed" in texts(page)
    dataset, features = tiny_features
    wanted = features.ids[25]
    label = f"{next(p.title for p in dataset.posters if p.id == wanted)} ({wanted})"
    page.text_input(key="pick_poster_search").input(label).run()
    pick = page.selectbox(key="pick_poster")
    assert pick.value == features.ids[0] and pick.options[1:] == [label], "the one match, after the current pick"
    pick.set_value(wanted).run()
    assert not page.exception and page.selectbox(key="pick_poster").value == wanted
    fake_selection(monkeypatch, [33])
    page.run()
    assert page.selectbox(key="pick_poster").value == features.ids[33]
    page.text_input(key="pick_poster_search").input("no such poster").run()
    assert "No title or id contains “no such poster”" in texts(page)
    assert page.selectbox(key="pick_poster").value == features.ids[33]


@pytest.fixture(scope="module")
def trained_runs(tiny_features, tmp_path_factory) -> Path:
    """A 2-epoch run on the avg view (hidden 32 → 8) saved in a runs folder of its own."""
    from core.model.experiment import run_experiment
    from core.model.runs import save_run
    from core.model.config import TrainConfig

    dataset, features = tiny_features
    root = tmp_path_factory.mktemp("runs")
    config = TrainConfig(feature_view="avg", hidden=(32, 8), epochs=2, batch_size=16)
    save_run(run_experiment(dataset, features, config), root / "tiny-run",
             dataset_info={"root": str(dataset.root.resolve()), "name": dataset.name})
    return root


def test_a_runs_last_hidden_layer_is_a_map_source(trained_runs, tiny_dataset, monkeypatch):
    monkeypatch.setattr("core.model.runs.runs_root", lambda: trained_runs)
    at = open_page(tiny_dataset)
    at.radio(key="map_source").set_value("run").run()
    assert not at.exception and not at.error
    assert len(at.selectbox(key="map_run").options) == 1
    show_map(at)
    umap_spec(at)
    assert "hidden layer 2 (8-d)" in texts(at)
    assert at.dataframe[0].value["genre"].iloc[0] == "overall"


def test_a_kernel_head_run_is_mapped_by_its_similarities_to_its_centres(tiny_features, tiny_dataset, monkeypatch,
                                                                          tmp_path):
    from dataclasses import replace

    from core.model.config import PRESETS
    from core.model.experiment import run_experiment
    from core.model.runs import save_run

    dataset, features = tiny_features
    result = run_experiment(dataset, features, replace(PRESETS["fast"], feature_view="avg"))
    save_run(result, tmp_path / "runs" / "kernel-run",
             dataset_info={"root": str(dataset.root.resolve()), "name": dataset.name})
    monkeypatch.setattr("core.model.runs.runs_root", lambda: tmp_path / "runs")
    at = open_page(tiny_dataset)
    at.radio(key="map_source").set_value("run").run()
    show_map(at)
    umap_spec(at)
    n_train = len(result.split.train)
    assert f"kernel similarities ({n_train}-d)" in texts(at) and "has no hidden layer" in texts(at)


def test_a_run_trained_on_other_posters_is_refused(trained_runs, tiny_dataset, monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_runs / "tiny-run", runs / "other-run")
    split = json.loads((runs / "other-run" / "split.json").read_text())
    split["test"].append("poster-from-elsewhere")
    (runs / "other-run" / "split.json").write_text(json.dumps(split))
    monkeypatch.setattr("core.model.runs.runs_root", lambda: runs)
    at = open_page(tiny_dataset)
    at.radio(key="map_source").set_value("run").run()
    assert not at.exception
    assert any("trained on another dataset" in error.value for error in at.error)


# ---- thumbnails and descriptors made by extraction (issue 23) -------------------------------------

@pytest.fixture(scope="module")
def extracted_cache(tiny_dataset, tmp_path_factory) -> Path:
    """``tiny_dataset`` extracted (random weights) into a cache of its own, so its thumbnails and descriptors
    can only come from extraction."""
    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    cache = tmp_path_factory.mktemp("extracted") / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POSTER_GENRE_CACHE", str(cache))
        dataset, _ = load_dataset(tiny_dataset)
        extract_features(dataset, FeatureConfig(weights="none"))
    return cache


def use_cache(cache: Path, monkeypatch) -> None:
    """Point the app at ``cache``, forget what this server holds in memory or found on disk, and make 40
    posters "large" (above the size up to which thumbnails and descriptors are made without asking)."""
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(cache))
    monkeypatch.setattr("pages._explain.AUTO_POSTERS", 10)
    st.cache_data.clear()
    st.cache_resource.clear()


def button_keys(at: AppTest) -> set[str]:
    return {button.key for button in at.button}


def test_after_extraction_the_mosaic_and_descriptors_come_without_a_click(extracted_cache, tiny_dataset,
                                                                          monkeypatch, tmp_path):
    from core.features.descriptors import NAMES

    use_cache(Path(shutil.copytree(extracted_cache, tmp_path / "cache")), monkeypatch)
    at = show_map(open_page(tiny_dataset))
    assert not {"build_mosaic", "compute_descriptors"} & button_keys(at)
    assert any("mosaic_chart" in element_id for element_id in charts(at))
    assert "of 40 posters on a" in "\n".join(element.value for element in at.caption)
    assert [option.split(":")[0] for option in at.selectbox(key="explain_colour").options] == list(NAMES)


def test_a_folder_extracted_before_gets_thumbnails_and_descriptors_from_one_decode_each(
        extracted_cache, tiny_dataset, monkeypatch, tmp_path):
    from core.data.datasets import load_dataset
    from core.features import byproducts

    cache = Path(shutil.copytree(extracted_cache, tmp_path / "cache"))
    shutil.rmtree(cache / "thumbnails")
    shutil.rmtree(cache / "descriptors")
    use_cache(cache, monkeypatch)
    at = show_map(open_page(tiny_dataset))
    assert {"build_mosaic", "compute_descriptors"} <= button_keys(at)
    assert not any("mosaic_chart" in element_id for element_id in charts(at))
    decoded: list = []
    original = byproducts.open_rgb
    monkeypatch.setattr(byproducts, "open_rgb", lambda path: decoded.append(path) or original(path))
    at.button(key="build_mosaic").click().run()
    assert not at.exception, at.exception
    assert len(decoded) == len(set(map(str, decoded))) == 40
    assert any("mosaic_chart" in element_id for element_id in charts(at))
    assert "compute_descriptors" not in button_keys(at)
    dataset, _ = load_dataset(tiny_dataset)
    assert byproducts.missing(dataset.content_keys()) == []
    decoded.clear()
    at.run()
    assert decoded == [] and not {"build_mosaic", "compute_descriptors"} & button_keys(at)
