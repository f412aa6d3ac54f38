"""Extraction on Ray (``core.features.ray_engine``).

Behaviours locked in:
- the Ray engine's rows equal the in-process rows (to bfloat16 tolerance), in the same feature store;
- the Ray engine caches each poster's thumbnail and visual descriptors, equal bit for bit to those of the
  standalone paths (and so to in-process extraction's), and remembers the undecodable poster;
- posters already cached are not sent to the cluster, and a second run computes nothing;
- a poster that fails to decode is reported by name with the in-process reason;
- the driver stores each batch as it arrives, so a job killed after one batch keeps that batch;
- a failure on the workers becomes an ``EngineError`` naming the workers' own error;
- actors are planned one per GPU, or one per node without GPUs, and impossible plans are refused;
- without Ray, ``--engine ray`` explains how to install it; the CLI flags build the engine;
- the Data page offers the Ray cluster only when an address is configured, and says how to install Ray.

The Ray tests share one local cluster (``num_cpus=2``) and one Ray job, and skip when Ray is not installed.
"""
from __future__ import annotations

import builtins
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.cli.main import build_parser, engine_from_args, main
from core.data.datasets import Dataset, load_dataset
from core.errors import EngineError
from core.features.pipeline import FeatureConfig, extract_features
from core.features.extractor import ROW_DIM
from core.features.ray_engine import RayEngine, engine_for, import_ray, plan_actors
from core.features.store import FeatureStore
from core.features.weights import resolve_weights

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed: python -m pip install -r requirements-scale.txt")
APP = Path(__file__).resolve().parents[1] / "app.py"
CONFIG = FeatureConfig(weights="none")
BROKEN = 30
PRECACHED = 15


@pytest.fixture(scope="module")
def local_ray():
    from core.features.ray_engine import connect

    ray = connect(num_cpus=2, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-cache")


@pytest.fixture(scope="module")
def ray_run(local_ray, tiny_dataset, tmp_path_factory, ray_cache):
    """One Ray job on a copy of the tiny posters with one broken file and some rows already cached.

    The second run leaves the broken poster out: undecodable posters are retried each time, as in-process.
    """
    root = tmp_path_factory.mktemp("ray") / "posters"
    shutil.copytree(tiny_dataset, root)
    dataset, _ = load_dataset(root)
    dataset.posters[BROKEN].path.write_bytes(b"not an image at all")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POSTER_GENRE_CACHE", str(ray_cache))
        extract_features(Dataset(root, dataset.posters[:PRECACHED], dataset.name), CONFIG)
        calls = []
        first = extract_features(dataset, CONFIG, engine=RayEngine(), progress=calls.append)
        again_calls = []
        decodable = Dataset(root, [p for i, p in enumerate(dataset.posters) if i != BROKEN], dataset.name)
        again = extract_features(decodable, CONFIG, engine=RayEngine(), progress=again_calls.append)
        local = extract_features(dataset, CONFIG)
    return dataset, first, calls, again, again_calls, local


@needs_ray
def test_ray_rows_equal_in_process_rows(ray_run, tiny_features):
    dataset, first, _, _, _, _ = ray_run
    _, reference = tiny_features
    assert first.ids == [poster.id for i, poster in enumerate(dataset.posters) if i != BROKEN]
    expected = np.asarray(reference.rows)[[reference.ids.index(id_) for id_ in first.ids]]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(first.rows), expected, rtol=2e-2, atol=2e-2 * scale)


@needs_ray
def test_ray_writes_the_thumbnails_and_descriptors_in_process_extraction_writes(ray_run, ray_cache, monkeypatch,
                                                                               tmp_path):
    from core.analysis.mosaic import cached_thumbnails, missing_thumbnails, poster_thumbnail
    from core.features.byproducts import missing
    from core.features.descriptors import dataset_descriptors, image_descriptors

    dataset, first, _, _, _, _ = ray_run
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(ray_cache))
    keys = dataset.content_keys()
    assert missing(keys) == [] and missing_thumbnails(keys) == [keys[BROKEN]]
    decodable = [i for i in range(len(dataset)) if i != BROKEN]
    cached = cached_thumbnails(keys)
    for i in decodable[PRECACHED:]:  # made on the cluster (the first ones were extracted in-process)
        np.testing.assert_array_equal(cached[keys[i]],
                                      poster_thumbnail(dataset.paths[i], root=tmp_path / "standalone"))
    result = dataset_descriptors(dataset)
    assert result.n_computed == 0 and result.ids == first.ids
    np.testing.assert_array_equal(result.values, np.stack([image_descriptors(dataset.paths[i]) for i in decodable]))


@needs_ray
def test_cached_posters_are_not_sent_to_the_cluster(ray_run):
    dataset, first, calls, _, _, _ = ray_run
    sent = len(dataset) - PRECACHED
    assert (first.n_computed, first.n_cached) == (sent - 1, PRECACHED)
    assert calls[-1].done == calls[-1].total == sent
    assert calls[-1].failed == 1


@needs_ray
def test_second_ray_run_computes_nothing(ray_run):
    _, first, _, again, again_calls, _ = ray_run
    assert again.n_computed == 0 and again.n_cached == len(first.ids)
    assert again_calls == []
    np.testing.assert_array_equal(np.asarray(again.rows), np.asarray(first.rows))


@needs_ray
def test_broken_image_is_named_as_in_process(ray_run):
    dataset, first, _, _, _, local = ray_run
    broken = dataset.posters[BROKEN]
    assert [(item.id, item.path) for item in first.failed] == [(broken.id, str(broken.path))]
    assert broken.path.name in first.failed[0].reason
    assert first.failed[0].reason == local.failed[0].reason


def test_actors_one_per_gpu_or_per_node():
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}, nodes=2) == (8, 1.0)
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}, nodes=2, gpus_per_actor=2) == (4, 2)
    assert plan_actors({"CPU": 32.0}, nodes=4) == (4, 0.0)
    assert plan_actors({"CPU": 32.0}, nodes=4, actors=3) == (3, 0.0)


def test_impossible_actor_plans_are_refused():
    with pytest.raises(EngineError, match="--gpus-per-actor 1 but the Ray cluster has 0 GPUs"):
        plan_actors({"CPU": 2.0}, nodes=1, gpus_per_actor=1)
    with pytest.raises(EngineError, match="--actors 0 must be at least 1"):
        plan_actors({"CPU": 2.0}, nodes=1, actors=0)


def test_missing_ray_explains_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EngineError, match="not installed") as caught:
        import_ray()
    assert "requirements-scale.txt" in caught.value.hint


def test_cli_ray_without_ray_prints_error_and_hint(monkeypatch, capsys, tiny_dataset):
    def missing():
        raise EngineError("the Ray engine needs Ray Data, which is not installed", "pip install -r requirements-scale.txt")

    monkeypatch.setattr("core.features.ray_engine.import_ray", missing)
    code = main(["extract", "--dataset", str(tiny_dataset), "--weights", "none", "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: the Ray engine needs Ray Data" in err and "hint: pip install -r requirements-scale.txt" in err


def test_cli_flags_choose_the_engine(monkeypatch):
    monkeypatch.setattr("core.features.ray_engine.import_ray", lambda: None)
    args = build_parser().parse_args(["extract", "--dataset", "d", "--engine", "ray", "--ray-address",
                                      "ray://head:10001", "--actors", "4", "--gpus-per-actor", "1"])
    assert engine_from_args(args) == RayEngine(address="ray://head:10001", actors=4, gpus_per_actor=1.0)
    assert engine_from_args(build_parser().parse_args(["extract", "--dataset", "d"])) is None
    with pytest.raises(EngineError, match="unknown extraction engine 'spark'"):
        engine_for("spark")


def test_data_page_offers_ray_only_when_an_address_is_configured(monkeypatch, tiny_dataset):
    from streamlit.testing.v1 import AppTest

    def open_data_page() -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.session_state["settings"] = {"dataset": str(tiny_dataset), "weights": "none", "precision": "auto"}
        at.switch_page("pages/data.py").run()
        assert not at.exception, at.exception
        return at

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not [radio for radio in open_data_page().radio if radio.key == "extraction_engine"]

    def missing():
        raise EngineError("the Ray engine needs Ray Data, which is not installed", "pip install -r requirements-scale.txt")

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setattr("core.features.ray_engine.import_ray", missing)
    at = open_data_page()
    choice = at.radio(key="extraction_engine")
    assert choice.options == ["This process", "Ray cluster"] and choice.value == "local"
    choice.set_value("ray").run()
    errors = " | ".join(str(error.value) for error in at.error)
    assert "not installed" in errors and "requirements-scale.txt" in errors and "runs in this process" in errors


def fake_batch(keys: list[str], errors: list[str]) -> dict[str, np.ndarray]:
    rows = np.stack([np.full(ROW_DIM, float(i), np.float32) for i in range(len(keys))])
    return {"key": np.array(keys), "row": rows, "error": np.array(errors)}


def test_killed_job_keeps_the_batches_already_stored(tmp_path):
    store = FeatureStore("fake", ROW_DIM, root=tmp_path)
    batches = [fake_batch(["a", "b"], ["", "b.jpg: not an image"]), fake_batch(["c"], [""])]

    def kill(progress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RayEngine._store_batches(iter(batches), store, total=3, progress=kill)
    reopened = FeatureStore("fake", ROW_DIM, root=tmp_path)
    assert reopened.missing(["a", "b", "c"]) == ["b", "c"]
    assert RayEngine._store_batches(iter(batches[1:]), reopened, total=1, progress=None) == {}
    np.testing.assert_array_equal(reopened.gather(["a", "c"]), np.zeros((2, ROW_DIM), np.float32))


def test_worker_failure_names_the_workers_error(monkeypatch, tmp_path):
    class FakeRayError(Exception):
        pass

    class FailingJob:
        def iter_batches(self, **_):
            raise FakeRayError("ActorDiedError: the actor died\n  File ray_engine.py\n"
                               "core.errors.WeightsError: a Ray worker resolved weights 'w.h5' to file:sha256:1")
            yield

    fake_ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0}, nodes=lambda: [{"Alive": True}],
                               exceptions=SimpleNamespace(RayError=FakeRayError))
    monkeypatch.setattr("core.features.ray_engine.connect", lambda address: fake_ray)
    monkeypatch.setattr(RayEngine, "pipeline", staticmethod(lambda *args: FailingJob()))
    weights = resolve_weights("none")
    with pytest.raises(EngineError, match="the Ray job failed: core.errors.WeightsError: a Ray worker") as caught:
        RayEngine()(FeatureStore("fake", ROW_DIM, root=tmp_path), [(tmp_path / "a.jpg", "a")], CONFIG, weights,
                    "float32", None)
    assert "same paths" in caught.value.hint
