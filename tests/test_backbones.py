"""Behaviours locked in for the backbone and input-geometry options (``core.features.backbones``, their
use in ``core.features.pipeline``, ``core.cli``, saved runs, Grad-CAM and the Train page), with random
weights on a few demo posters.

- The store's key differs by geometry, image size and backbone; the default configuration's description
  holds neither field, so caches extracted before the options existed stay valid.
- The poster geometry extracts ``(n, 1536)`` pooled VGG16 rows from a 224x336 input (pooled storage is
  implied); its flatten view raises ``ConfigError`` saying the view always comes from the tutorial's
  224x224 squash, with a hint naming ``--geometry tutorial``; the CLI says which features it made.
- ResNet50 with random weights gives ``(n, 5120)`` rows laid out ``[conv4 average | conv5 average |
  conv5 max]`` exactly as a plain Keras ``ResNet50(weights=None)`` built with the same seed computes them,
  and views of 3,072 / 2,048 / 2,048 columns; its flatten view is refused naming ResNet50.
- ``--geometry``, ``--image-size`` and ``--backbone`` reach ``FeatureConfig`` for extract, train and sweep.
- A run on poster-geometry features records it: ``Run.feature_config``/``features_label``, the run table's
  features column and summary; it predicts an uploaded poster, and Grad-CAM explains it; Grad-CAM refuses
  a ResNet50 run with a ``RunError`` naming the backbone.
- The Train page names the run's backbone and geometry, opens on the fast preset (pooled view, no warning),
  and with poster features the tutorial preset (flatten view) says the view is unavailable, disables Train
  and offers to switch to the tutorial geometry.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.cli.main import _feature_config, build_parser, main
from core.data.datasets import load_dataset
from core.data.demo import DemoConfig, make_demo_dataset
from core.errors import ConfigError, RunError
from core.features.backbones import BACKBONES
from core.features.extractor import preprocess
from core.features.pipeline import FeatureConfig, extract_features, store_for
from core.data.images import load_pixels
from core.features.weights import RANDOM_SEED
from core.model.config import TrainConfig
from core.model.experiment import run_experiment
from core.model.runs import load_run, runs_table, save_run

POSTER = FeatureConfig(weights="none", geometry="poster", batch_size=4)
RESNET = FeatureConfig(weights="none", backbone="resnet50", batch_size=4, precision="float32")
"""float32 because the layout test compares values with a float32 Keras model (``auto`` is bfloat16 on CPUs
that have it, and 4% of bfloat16 values differ from float32 by up to 21%)."""
TINY_RUN = TrainConfig(feature_view="avg", hidden=(8,), epochs=2, batch_size=4, k=1, test_size=0.25)


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("posters") / "set", DemoConfig(n_posters=12, seed=11))


@pytest.fixture(scope="module")
def poster_features(posters):
    dataset, _ = load_dataset(posters)
    return dataset, extract_features(dataset, POSTER)


@pytest.fixture(scope="module")
def poster_run(poster_features, tmp_path_factory):
    dataset, features = poster_features
    return load_run(save_run(run_experiment(dataset, features, TINY_RUN), tmp_path_factory.mktemp("runs") / "poster"))


def test_store_key_differs_by_geometry_size_and_backbone_and_defaults_keep_the_old_key():
    configs = [FeatureConfig(weights="none"), FeatureConfig(weights="none", geometry="poster"),
               FeatureConfig(weights="none", geometry="poster", image_size=256),
               FeatureConfig(weights="none", backbone="resnet50"),
               FeatureConfig(weights="none", backbone="resnet50", geometry="poster")]
    stores = [store_for(config)[0] for config in configs]
    assert len({store.folder for store in stores}) == len(configs)
    described = [json.loads((store.folder / "config.json").read_text()) for store in stores]
    assert not {"geometry", "backbone"} & set(described[0])
    assert described[1]["geometry"] == "poster" and described[3]["backbone"] == "resnet50"
    assert [store.dim for store in stores] == [25600, 1536, 1536, 5120, 5120]


def test_poster_geometry_gives_pooled_rows_of_a_2_to_3_input_and_refuses_flatten(poster_features, posters):
    dataset, features = poster_features
    assert POSTER.input_size == (224, 336) and POSTER.stored == "pooled" and POSTER.label == "VGG16, poster 224x336"
    assert features.rows.shape == (12, 1536)
    assert load_pixels(dataset.paths[0], POSTER.input_size).shape == (336, 224, 3)
    assert {name: features.view(name).shape[1] for name in ("avg", "max", "avg45")} == {
        "avg": 512, "max": 512, "avg45": 1024}
    with pytest.raises(ConfigError, match="not available for features of the poster geometry .224x336.: it always "
                                          "comes from the tutorial's 224x224 squash") as caught:
        features.view("flatten")
    assert "--geometry tutorial" in caught.value.hint and "avg45" in caught.value.hint


def test_poster_features_differ_from_the_tutorial_squash(poster_features, posters):
    dataset, features = poster_features
    tutorial = extract_features(dataset, FeatureConfig(weights="none", batch_size=4))
    assert features.key != tutorial.key
    assert not np.allclose(features.view("avg"), tutorial.view("avg"), rtol=1e-2, atol=1e-2)


def test_resnet50_rows_follow_the_declared_layout(posters, tmp_path):
    import keras

    root = make_demo_dataset(tmp_path / "three", DemoConfig(n_posters=3, seed=2))
    dataset, _ = load_dataset(root)
    features = extract_features(dataset, RESNET)
    spec = BACKBONES["resnet50"]
    assert features.rows.shape == (3, spec.pooled_dim) == (3, 5120)
    keras.utils.set_random_seed(RANDOM_SEED)
    plain = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    both = keras.Model(plain.inputs, [plain.output, plain.get_layer("conv4_block6_out").output])
    pixels = np.stack([load_pixels(path) for path in dataset.paths])
    top, mid = (np.asarray(x) for x in both(preprocess(pixels, "resnet50"), training=False))
    expected = np.hstack([mid.mean(axis=(1, 2)), top.mean(axis=(1, 2)), top.max(axis=(1, 2))])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(features.rows), expected, rtol=2e-3, atol=2e-3 * scale)
    assert {name: features.view(name).shape[1] for name in ("avg45", "avg", "max")} == {
        "avg45": 3072, "avg": 2048, "max": 2048}
    with pytest.raises(ConfigError, match="not available for ResNet50 features"):
        features.view("flatten")


@pytest.mark.parametrize("command", ["extract", "train", "sweep"])
def test_cli_feature_flags_reach_the_feature_config(command, tmp_path):
    extra = {"extract": [], "train": ["--out", str(tmp_path)], "sweep": ["--out", str(tmp_path), "--set", "dropout=0.1"]}
    args = build_parser().parse_args([command, "--dataset", str(tmp_path), "--weights", "none", "--geometry", "poster",
                                      "--image-size", "256", "--backbone", "resnet50", *extra[command]])
    config = _feature_config(args)
    assert (config.geometry, config.image_size, config.backbone) == ("poster", 256, "resnet50")
    assert config.input_size == (256, 384)
    defaults = _feature_config(build_parser().parse_args([command, "--dataset", str(tmp_path), *extra[command]]))
    assert (defaults.geometry, defaults.image_size, defaults.backbone) == ("tutorial", 224, "vgg16")


def test_cli_refuses_unknown_backbone_and_geometry(tmp_path, capsys):
    for flag, value in (("--backbone", "vgg19"), ("--geometry", "square")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["extract", "--dataset", str(tmp_path), flag, value])
        assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_cli_extract_says_which_features_it_made(poster_features, posters, capsys):
    assert main(["extract", "--dataset", str(posters), "--weights", "none", "--geometry", "poster"]) == 0
    assert "12 posters x 1536 (pooled), VGG16, poster 224x336" in capsys.readouterr().out


def test_a_poster_geometry_run_records_its_features_predicts_and_explains(poster_run, poster_features, tmp_path):
    from core.model.gradcam import GradCam
    from core.model.predict import Predictor

    assert poster_run.feature_config.geometry == "poster" and poster_run.features_label == "VGG16, poster 224x336"
    assert "VGG16, poster 224x336" in poster_run.summary()
    assert runs_table([poster_run])["features"].tolist() == ["VGG16, poster 224x336"]
    dataset, features = poster_features
    poster = dataset.paths[0]
    prediction = Predictor(poster_run).predict_image(poster, poster.name)
    assert prediction.error is None and prediction.features.shape == (1536,)
    row = np.asarray(features.rows[0])
    np.testing.assert_allclose(prediction.features, row, rtol=1e-2, atol=1e-2 * np.abs(row).max())
    heatmap = GradCam(poster_run, cache_dir=tmp_path / "gradcam").heatmap(poster)
    assert heatmap.values.shape == (28, 28) and 0.0 <= heatmap.values.min() and heatmap.values.max() <= 1.0


def test_gradcam_refuses_a_resnet50_run(poster_run, tmp_path):
    from core.model.gradcam import GradCam

    folder = shutil.copytree(poster_run.folder, tmp_path / "resnet-run")
    info = json.loads((folder / "run.json").read_text())
    info["features"]["backbone"] = "resnet50"
    (folder / "run.json").write_text(json.dumps(info))
    run = load_run(folder)
    assert run.features_label == "ResNet50, poster 224x336"
    with pytest.raises(RunError, match="ResNet50, poster 224x336 features; Grad-CAM here explains VGG16 and "
                                          "EfficientNet-Lite2 runs only") \
            as caught:
        GradCam(run)
    assert "--backbone vgg16" in caught.value.hint


def test_train_page_names_the_runs_features_and_offers_the_tutorial_geometry(poster_features, poster_run):
    from streamlit.testing.v1 import AppTest

    from core.model.runs import runs_root

    dataset, _ = poster_features
    shutil.copytree(poster_run.folder, runs_root() / "poster-run")
    app = Path(__file__).resolve().parents[1] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(dataset.root), "weights": "none", "precision": "auto",
                                    "geometry": "poster"}
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception and "The flatten view needs" not in " | ".join(str(w.value) for w in at.warning)
    at.radio(key="preset").set_value("tutorial").run()
    captions = " | ".join(element.value for element in at.caption)
    assert "Features of this run: VGG16, poster 224x336" in captions
    warnings = " | ".join(element.value for element in at.warning)
    assert "RANDOM VGG16 weights" in warnings and "(VGG16, poster 224x336)" in warnings
    assert "The flatten view needs the tutorial's features" in warnings
    assert at.button(key="train").disabled
    at.button(key="use_tutorial").click().run()
    assert {key: at.session_state["settings"][key] for key in ("geometry", "backbone", "storage")} == {
        "geometry": "tutorial", "backbone": "vgg16", "storage": "full"}
