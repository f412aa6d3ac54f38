"""AppTest of the "see why" sections (pages/_explain.py) on 40 synthetic posters with random weights.

Locks in: the Clusters page draws the poster mosaic of the map with its grid caption, and of a
box/lasso selection only; "Find clusters" shows the number of clusters and the noise share, a map
coloured by cluster, one card per cluster with typical posters, and the colour-vs-genre table; a
selection gets its own card against the rest; the Data page draws per-genre box plots of a descriptor;
the Predictions page draws a Grad-CAM overlay for a test poster, for the genre and opacity chosen,
and says the weights are RANDOM.
"""
from __future__ import annotations


from streamlit.elements.plotly_chart import PlotlySelectionState, PlotlyState
from streamlit.testing.v1 import AppTest

from core.features.descriptors import NAMES
from tests.test_page_clusters import charts, open_page, show_map
from tests.test_page_predictions import open_page as open_predictions
from tests.test_page_predictions import saved_run  # noqa: F401  (fixture)


def chart(at: AppTest, key: str) -> dict:
    specs = [spec for element_id, spec in charts(at).items() if key in element_id]
    assert len(specs) == 1, f"{key} is not shown"
    return specs[0]


def captions(at: AppTest) -> str:
    return "\n".join(element.value for element in at.caption)


def test_mosaic_of_the_whole_map(tiny_dataset, tiny_features):
    at = show_map(open_page(tiny_dataset))
    image = chart(at, "mosaic_chart")["data"][0]
    assert image["type"] == "image"
    assert "of 40 posters on a" in captions(at)


def test_mosaic_follows_the_map_selection(tiny_dataset, tiny_features):
    at = show_map(open_page(tiny_dataset))
    selection = PlotlyState(selection=PlotlySelectionState(
        points=[{"customdata": [row]} for row in range(6)], point_indices=list(range(6)), box=[], lasso=[]))
    at.session_state["umap_chart"] = selection
    at.run()
    assert not at.exception, at.exception
    assert "of 6 posters on a" in captions(at)
    assert any("Selection: 6 posters vs the rest" in element.value for element in at.markdown)


def test_find_clusters_shows_counts_cards_and_the_structure_table(tiny_dataset, tiny_features):
    at = show_map(open_page(tiny_dataset))
    at.slider(key="cluster_min_size").set_value(5).run()
    at.button(key="find_clusters").click().run()
    assert not at.exception, at.exception
    metrics = {metric.label: metric.value for metric in at.metric}
    assert "Clusters" in metrics and metrics["Noise (in no cluster)"].endswith("%")
    n_clusters = int(metrics["Clusters"])
    cards = [element.value for element in at.markdown if element.value.startswith("**Cluster ")]
    assert len(cards) == min(n_clusters, 12)
    colours = {trace["name"] for trace in chart(at, "explain_map")["data"]}
    assert colours <= {f"cluster {c}" for c in range(n_clusters)} | {"noise"}
    table = next(frame.value for frame in at.dataframe if "kind" in frame.value.columns)
    assert len(table) == len(NAMES) + 8 and set(table["kind"]) == {"descriptor", "genre"}
    at.selectbox(key="explain_colour_clusters").set_value("brightness").run()
    spec = chart(at, "explain_map")
    assert spec["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "brightness"


def test_data_page_draws_descriptor_boxplots(tiny_dataset):
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.session_state["settings"] = {"dataset": str(tiny_dataset), "weights": "none", "precision": "auto"}
    at.run()
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    at.toggle(key="descriptors_on").set_value(True).run()
    at.selectbox(key="descriptor_box").set_value("saturation").run()
    boxes = chart(at, "descriptor_boxplot")["data"]
    assert boxes[0]["type"] == "box" and boxes[0]["y"] is not None


def test_gradcam_overlay_for_a_test_poster(tiny_dataset, saved_run):  # noqa: F811
    at = open_predictions(tiny_dataset, saved_run.folder)
    at.toggle(key="gradcam_on").set_value(True).run()
    genres = at.selectbox(key="gradcam_genre").options
    assert len(genres) == len(saved_run.vocabulary)
    at.slider(key="gradcam_opacity").set_value(0.8).run()
    assert not at.exception, at.exception
    overlays = [image for element in at.image for image in element.proto.imgs if "block5_conv3" in image.caption]
    assert len(overlays) == 1
    assert any("RANDOM VGG16 weights" in element.value for element in at.warning)
    assert not any("with caution" in element.value for element in at.info)
