"""The Data page, driven through the app router with AppTest on tiny generated datasets and random weights.

Locks in:
- the page runs without exception on a preset dataset and shows the loader's counts, the genre
  frequency and co-occurrence charts and the poster grid;
- a labels.csv that is not UTF-8 is read as cp1252 and the page says so;
- a typed folder that does not exist, has no labels.csv, or whose CSV lacks the genres column gives
  an error with core's message, and the active dataset stays;
- a valid typed folder becomes the active dataset and is saved in the settings file of the cache;
- the genre filter shrinks the poster grid to the posters of that genre;
- "Extract features" on a fresh dataset computes every poster, reports computed/cached/failed and
  lists an undecodable poster by id with its reason; clicking again computes nothing;
- random weights show the not-ImageNet warning, and choosing them on the page is saved;
- choosing pooled-only storage is saved, says the 25,088-d flatten view will be missing, and the
  cache count is that of the pooled store;
- a weights file path that does not exist is an error and leaves the active weights unchanged;
- the TMDB form downloads from a fake TMDB into the cache's datasets folder, the result can be made
  the active dataset, and the API key appears nowhere on the page;
- the URL-table form into a folder the product did not make shows core's refusal and changes nothing;
- the page imports no private name from pages/_shared.py;
- above the no-click size, the descriptor box plots of an extracted set show with no "Compute visual
  descriptors" button (its undecodable poster, remembered by extraction, does not hold them back); a set
  never extracted gets descriptors and mosaic thumbnails from that button's one-time decode.
"""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.cache import cache_root
from core.data.datasets import load_dataset
from core.data.demo import DemoConfig, make_demo_dataset
from pages._shared import settings_path
from tests.fake_tmdb import API_KEY, fake_tmdb  # noqa: F401 (fixture)

APP = Path(__file__).resolve().parents[1] / "app.py"


def open_page(dataset: Path | str, weights: str = "none") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(dataset), "weights": weights, "precision": "auto"}
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return " | ".join(str(element.value) for element in elements)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def saved_settings() -> dict:
    return json.loads(settings_path().read_text())


def every_node(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from every_node(child)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict:
    """A fresh 12-poster dataset plus one truncated JPEG, extracted once through the page."""
    root = make_demo_dataset(tmp_path_factory.mktemp("extract") / "fresh", DemoConfig(n_posters=12, seed=20611))
    jpeg = (root / "posters" / "demo-0001.jpg").read_bytes()
    (root / "posters" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with open(root / "labels.csv", "a", encoding="utf-8") as labels:
        labels.write("broken,Broken poster,Drama\n")
    at = open_page(root)
    at.button(key="extract").click().run()
    assert not at.exception, at.exception
    return {"root": root, "metrics": {m.label: m.value for m in at.metric},
            "tables": [frame.value for frame in at.dataframe], "warnings": texts(at.warning),
            "errors": texts(at.error)}


def test_page_shows_report_charts_and_grid(tiny_dataset):
    at = open_page(tiny_dataset)
    assert metric(at, "Usable posters") == "40"
    assert metric(at, "Skipped items") == "0"
    assert len(at.get("plotly_chart")) == 2
    assert len(at.get("image")) == 40
    at.toggle(key="cooc_normalise").set_value(True).run()
    assert not at.exception and len(at.get("plotly_chart")) == 2


def test_genre_spellings_merged_on_load_are_listed(tiny_dataset, tmp_path):
    root = tmp_path / "spellings"
    shutil.copytree(tiny_dataset, root)
    header, first, *rest = (root / "labels.csv").read_text(encoding="utf-8").splitlines()
    genre = first.rsplit(",", 1)[1]
    (root / "labels.csv").write_text("\n".join([header, first.upper().replace("DEMO", "demo"), *rest]) + "\n",
                                     encoding="utf-8")
    at = open_page(root)
    assert f"genre {genre!r} also written as {genre.upper()!r}; merged into {genre!r}" in texts(at.info)


def test_a_labels_file_read_as_cp1252_says_so(tiny_dataset, tmp_path):
    root = tmp_path / "windows"
    shutil.copytree(tiny_dataset, root)
    header, first, *rest = (root / "labels.csv").read_text(encoding="utf-8").splitlines()
    id_, _, genres = first.split(",")
    (root / "labels.csv").write_bytes("\n".join([header, f"{id_},Caf\u00e9,{genres}", *rest, ""]).encode("cp1252"))
    at = open_page(root)
    assert (f"{root / 'labels.csv'} is not valid UTF-8 (byte 0xe9 on line 2); read as cp1252 (Windows Western)"
            in texts(at.info))


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "nowhere", "does not exist"),
    (lambda tmp: (tmp / "posters").mkdir() or tmp, "labels.csv is missing"),
    (lambda tmp: (tmp / "labels.csv").write_text("id,title\n1,A\n") and tmp, "lacks column(s) genres"),
], ids=["nonexistent", "no-labels-csv", "no-genres-column"])
def test_bad_folder_gives_the_reason_and_keeps_the_dataset(tiny_dataset, tmp_path, make, message):
    folder = make(tmp_path)
    at = open_page(tiny_dataset)
    at.text_input(key="folder_path").input(str(folder))
    at.button(key="use_folder").click().run()
    assert not at.exception
    assert message in texts(at.error)
    assert at.session_state["settings"]["dataset"] == str(tiny_dataset)


def test_valid_folder_becomes_active_and_is_saved(tiny_dataset, extracted):
    at = open_page(tiny_dataset)
    at.text_input(key="folder_path").input(str(extracted["root"]))
    at.button(key="use_folder").click().run()
    assert not at.exception
    assert at.selectbox(key="dataset_choice").value == str(extracted["root"])
    assert metric(at, "Usable posters") == "13"
    assert saved_settings()["dataset"] == str(extracted["root"])
    assert settings_path().parent == cache_root()


def test_genre_filter_reduces_the_grid(tiny_dataset):
    dataset, _ = load_dataset(tiny_dataset)
    rarest, count = list(dataset.genre_counts().items())[-1]
    at = open_page(tiny_dataset)
    at.multiselect(key="grid_genres").select(rarest).run()
    assert not at.exception
    assert 0 < count < 40
    assert len(at.get("image")) == count


def test_extract_reports_counts_and_the_corrupt_poster(extracted):
    assert extracted["metrics"]["Computed"] == "12"
    assert extracted["metrics"]["Failed"] == "1"
    assert "Undecodable posters: 1." in extracted["warnings"]
    (failed,) = [table for table in extracted["tables"] if "broken" in set(table["id"])]
    assert list(failed["id"]) == ["broken"]
    assert "broken.jpg: truncated or corrupt image" in failed["reason"][0]
    assert not extracted["errors"]


def test_second_extraction_computes_nothing(extracted):
    at = open_page(extracted["root"])
    assert metric(at, "Posters with cached features (these weights and precision)") == "12 / 13"
    at.button(key="extract").click().run()
    assert not at.exception
    assert metric(at, "Computed") == "0"
    assert metric(at, "Taken from cache") == "12"


def test_pooled_storage_is_saved_says_flatten_is_gone_and_counts_its_own_cache(extracted):
    at = open_page(extracted["root"])
    at.radio(key="storage").set_value("pooled").run()
    assert not at.exception
    assert saved_settings()["storage"] == "pooled"
    assert "no 25,088-d flatten view" in texts(at.info)
    assert metric(at, "Posters with cached features (these weights and precision)") == "0 / 13"


def test_random_weights_warn_and_choosing_them_is_saved(tiny_dataset):
    at = open_page(tiny_dataset, weights="imagenet")
    assert "RANDOM VGG16 weights" not in texts(at.warning)
    at.radio(key="weights_kind").set_value("none").run()
    assert not at.exception
    assert "RANDOM VGG16 weights" in texts(at.warning)
    assert saved_settings()["weights"] == "none"


def test_missing_weights_file_is_an_error(tiny_dataset, tmp_path):
    at = open_page(tiny_dataset)
    at.radio(key="weights_kind").set_value("file").run()
    at.text_input(key="weights_path").input(str(tmp_path / "vgg16.h5")).run()
    assert not at.exception
    assert "does not exist" in texts(at.error)
    assert at.session_state["settings"]["weights"] == "none"


def test_tmdb_download_can_become_the_active_dataset(tiny_dataset, fake_tmdb, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TMDB_API_KEY", API_KEY)
    monkeypatch.setenv("TMDB_API_BASE", fake_tmdb.api_base)
    monkeypatch.setenv("TMDB_IMAGE_BASE", fake_tmdb.image_base)
    at = open_page(tiny_dataset)
    at.number_input(key="tmdb_max_movies").set_value(5)
    at.text_input(key="tmdb_name").input("tmdb-page-test")
    at.button(key="tmdb_submit").click().run()
    assert not at.exception
    out = cache_root() / "datasets" / "tmdb-page-test"
    assert f"Saved 5 posters in {out}" in texts(at.success)
    at.button(key="tmdb_activate").click().run()
    assert not at.exception
    assert saved_settings()["dataset"] == str(out.resolve())
    assert metric(at, "Usable posters") == "5"
    assert at.selectbox(key="dataset_choice").format_func(str(out.resolve())) == "tmdb-page-test (downloaded)"
    assert all(API_KEY not in str(getattr(node, "proto", "")) for node in every_node(at._tree))


def test_url_form_refuses_a_folder_it_did_not_make(tiny_dataset, tmp_path):
    foreign = cache_root() / "datasets" / "someone-elses"
    (foreign / "posters").mkdir(parents=True)
    (foreign / "posters" / "keep.jpg").write_bytes(b"not really a jpeg")
    (foreign / "notes.txt").write_text("mine")
    table = tmp_path / "t.csv"
    table.write_text("id,title,genres,poster\n1,A,Drama,http://127.0.0.1:9/p.jpg\n")
    try:
        at = open_page(tiny_dataset)
        at.text_input(key="urls_csv").input(str(table))
        at.text_input(key="urls_name").input("someone-elses")
        at.button(key="urls_submit").click().run()
        assert not at.exception
        assert "is not empty" in texts(at.error) and "new or empty folder" in texts(at.error)
        assert sorted(p.name for p in foreign.rglob("*")) == ["keep.jpg", "notes.txt", "posters"]
        assert (foreign / "posters" / "keep.jpg").read_bytes() == b"not really a jpeg"
    finally:
        shutil.rmtree(foreign)


def test_page_imports_no_private_shared_names():
    tree = ast.parse((APP.parent / "pages" / "data.py").read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module == "pages._shared" for alias in node.names]
    assert names and not [name for name in names if name.startswith("_")]


def boxplot_shown(at: AppTest) -> bool:
    return any("descriptor_boxplot" in element.proto.id for element in at.get("plotly_chart"))


def above_the_no_click_size(monkeypatch) -> None:
    """Make a dozen posters "large" (descriptors wait for a click) and forget what this server holds."""
    import streamlit as st

    monkeypatch.setattr("pages._explain.AUTO_POSTERS", 5)
    st.cache_data.clear()
    st.cache_resource.clear()


def test_after_extraction_descriptor_plots_need_no_click_even_with_an_undecodable_poster(extracted, monkeypatch):
    above_the_no_click_size(monkeypatch)
    at = open_page(extracted["root"])
    at.toggle(key="descriptors_on").set_value(True).run()
    assert not at.exception, at.exception
    assert "compute_descriptors_data" not in {button.key for button in at.button}
    assert boxplot_shown(at)
    assert "1 posters could not be decoded and have no descriptors." in texts(at.caption)


def test_a_folder_never_extracted_gets_descriptors_and_thumbnails_from_one_click(tmp_path, monkeypatch):
    from core.features.byproducts import missing

    root = make_demo_dataset(tmp_path / "set", DemoConfig(n_posters=8, seed=7))
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    above_the_no_click_size(monkeypatch)
    at = open_page(root)
    at.toggle(key="descriptors_on").set_value(True).run()
    assert not boxplot_shown(at)
    at.button(key="compute_descriptors_data").click().run()
    assert not at.exception, at.exception
    assert boxplot_shown(at)
    dataset, _ = load_dataset(root)
    assert missing(dataset.content_keys()) == []
    at.run()
    assert boxplot_shown(at)
