"""Behaviours locked in for feature extraction (``core.features.pipeline``, ``core.features.store``,
``core.features.extractor``, ``core.features.weights``), with random VGG16 weights on a 12-poster demo set.

- A cold extraction gives ``(n, 25600)`` rows kept as float16 shards and read as float32, row ``i``
  being the extractor's output for poster ``ids[i]`` (within float16 rounding), with progress reported
  after every batch; ``features`` is its first 25,088 columns, nothing read; the store holds the shards
  only (no second copy of a dataset's rows), about 51 KB a poster.
- Re-running computes nothing and returns identical values; adding 3 posters computes exactly 3.
- An extraction interrupted after its first batch resumes with only the rest, and ends equal to a
  cold full extraction.
- A truncated shard (removed) or one without its sidecar counts as missing and is recomputed by the next
  extraction; a shard whose bytes changed in place (flipped, or ``inf`` at the same size) fails its
  checksum when first read: the read raises ``CacheError`` with a hint, the shard is removed, and the
  next extraction computes exactly its posters; all with values equal to the cold extraction.
  Computed + cached counts are never negative and never exceed the posters, even when a shard breaks
  after it was computed.
- ``check_feature_config`` refuses batch sizes below 1, image sizes below 32, unknown resize,
  precision and storage with ``ConfigError`` before anything runs.
- Pooled-only storage keeps ``(n, 1536)`` rows (about 3 KB a poster) in its own store folder; its
  avg/max/avg45 views equal the full rows' views within float16 rounding, and the flatten view and
  ``features`` raise ``ConfigError`` saying the tutorial's 25,088-d view is not available.
- ``cached_features`` / ``cache_status`` compute nothing and tell what is cached.
- Different precision, weights or image size → a different store folder; batch size does not matter.
- A poster that fails to decode (truncated JPEG, non-image) is reported in ``failed`` by id with its
  reason and excluded from ids; duplicate images under two ids both get (identical) rows.
- ``feature_view`` avg/max are ``(n, 512)`` and equal manual numpy pooling of the ``(7, 7, 512)`` rows;
  avg45 is ``(n, 1024)``: the row's block4 part, then the avg view.
- The random-weights extractor equals a plain Keras ``VGG16(weights=None)`` built with the same seed
  (block5_pool flattened, then block4_pool averaged over positions);
  bfloat16 agrees with float32 within a loose tolerance; ``preprocess`` never modifies its input.
- ``resolve_weights`` handles imagenet / none / a missing file / an existing file (sha256 identity)
  and the ``POSTER_GENRE_WEIGHTS`` default; a file that is not VGG16 weights and a failing ImageNet
  download raise ``WeightsError`` with a useful message and hint. ``same_weights`` treats a known
  local ImageNet file as the ImageNet download and random weights as different from both.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.cache import file_sha256
from core.data.datasets import load_dataset, write_labels
from core.data.demo import DemoConfig, make_demo_dataset
from core.errors import CacheError, ConfigError, WeightsError
from core.features.extractor import FEATURE_DIM, ROW_DIM, get_extractor, preprocess, resolve_precision
from core.features.pipeline import (FeatureConfig, cache_status, cached_features, check_feature_config, extract_features,
                                   store_for)
from core.features.store import FeatureStore, ShardedRows
from core.features.views import POOLED_DIM, feature_view, pool_features
from core.data.images import load_pixels
from core.features.weights import (IMAGENET_FILE_SHA256, IMAGENET_IDENTITY, RANDOM_SEED, default_weights_spec,
                                  resolve_weights, same_weights)

CONFIG = FeatureConfig(weights="none", batch_size=4)


class Reference:
    def __init__(self, cache: Path, root: Path, features, progress: list) -> None:
        self.cache = cache
        self.root = root
        self.set = features
        self.values = np.array(features.rows)
        self.progress = progress

    def rows(self, ids) -> np.ndarray:
        return self.values[[self.set.ids.index(id_) for id_ in ids]]


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("twelve") / "set", DemoConfig(n_posters=12, seed=5))


@pytest.fixture(scope="module")
def reference(twelve, tmp_path_factory) -> Reference:
    """A cold full extraction of ``twelve`` in its own cache folder (never damaged by tests)."""
    cache = tmp_path_factory.mktemp("reference-cache")
    calls: list = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POSTER_GENRE_CACHE", str(cache))
        dataset, _ = load_dataset(twelve)
        features = extract_features(dataset, CONFIG, progress=calls.append)
    return Reference(cache, twelve, features, calls)


@pytest.fixture
def warm_cache(reference, tmp_path, monkeypatch) -> Path:
    """A private copy of the reference cache, so a test can damage it."""
    cache = tmp_path / "cache"
    shutil.copytree(reference.cache, cache)
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(cache))
    return cache


@pytest.fixture
def cold_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cold"))
    return tmp_path / "cold"


def _copy(root: Path, dst: Path) -> Path:
    return Path(shutil.copytree(root, dst))


def _rows(root: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    with open(root / "labels.csv", encoding="utf-8") as handle:
        return [(r["id"], r["title"], tuple(r["genres"].split("|"))) for r in csv.DictReader(handle)]


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write a new file (new inode), so memory maps of the old one never see the change."""
    path.unlink()
    path.write_bytes(data)


def _store_folder() -> Path:
    return store_for(CONFIG)[0].folder


def _shard_of(folder: Path, index: int = 0) -> Path:
    return sorted(folder.glob("shard-*.npy"))[index]


def test_cold_extraction_gives_float16_shards_read_as_float32_rows(reference):
    features = reference.set
    dataset, _ = load_dataset(reference.root)
    assert isinstance(features.features, ShardedRows)
    assert features.features.shape == (12, FEATURE_DIM) == (12, 25088)
    assert features.rows.dtype == np.float16 and reference.values.dtype == np.float32
    assert features.features[3:5].dtype == np.float32
    assert features.ids == dataset.ids and len(set(features.keys)) == 12
    assert (features.n_computed, features.n_cached, features.failed) == (12, 0, [])
    assert features.weights.is_random and features.precision == resolve_precision("auto")
    assert np.isfinite(reference.values).all() and reference.values.std() > 0
    assert not np.allclose(reference.values[0], reference.values[1])


def test_progress_is_reported_after_every_batch(reference):
    assert [(p.done, p.total) for p in reference.progress] == [(4, 12), (8, 12), (12, 12)]
    assert reference.progress[-1].line().startswith("[12/12]")


def test_row_i_is_the_extractor_output_for_poster_i(reference):
    dataset, _ = load_dataset(reference.root)
    extractor = get_extractor(resolve_weights("none"), resolve_precision("auto"))
    direct = extractor(np.stack([load_pixels(dataset.paths[i]) for i in (0, 7)]))
    np.testing.assert_allclose(direct, reference.values[[0, 7]], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(reference.values, reference.values.astype(np.float16).astype(np.float32))


def test_store_holds_float16_shards_only_about_51_kb_a_poster(reference):
    shards = sorted((reference.cache / "features").glob("*/shard-*.npy"))
    assert len(shards) == 3 and all(np.load(path, mmap_mode="r").dtype == np.float16 for path in shards)
    stored = sum(path.stat().st_size for path in shards)
    assert ROW_DIM * 2 * 12 < stored < ROW_DIM * 2 * 12 + 3 * 256
    assert {path.name for path in shards[0].parent.iterdir()} <= (
        {path.name for path in shards} | {path.with_suffix(".json").name for path in shards}
        | {"config.json", ".lock"})


def test_rerun_computes_nothing_and_returns_identical_values(reference, warm_cache):
    dataset, _ = load_dataset(reference.root)
    again = extract_features(dataset, CONFIG)
    assert (again.n_computed, again.n_cached) == (0, 12)
    np.testing.assert_array_equal(np.asarray(again.rows), reference.values)
    assert again.key == reference.set.key


def test_adding_three_posters_computes_exactly_three(reference, warm_cache, tmp_path):
    root = _copy(reference.root, tmp_path / "fifteen")
    extra = make_demo_dataset(tmp_path / "extra", DemoConfig(n_posters=3, seed=77))
    rows = _rows(root)
    for id_, title, genres in _rows(extra):
        shutil.copy(extra / "posters" / f"{id_}.jpg", root / "posters" / f"new-{id_}.jpg")
        rows.append((f"new-{id_}", title, genres))
    write_labels(root, rows)
    dataset, _ = load_dataset(root)
    features = extract_features(dataset, CONFIG)
    assert (features.n_computed, features.n_cached) == (3, 12)
    assert features.features.shape == (15, FEATURE_DIM)
    np.testing.assert_array_equal(np.asarray(features.rows[:12]), reference.values)


def test_interrupted_extraction_resumes_with_only_the_rest(reference, cold_cache):
    dataset, _ = load_dataset(reference.root)

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(dataset, CONFIG, progress=interrupt)
    assert len(list(_store_folder().glob("shard-*.npy"))) == 1
    assert cache_status(dataset, CONFIG) == (4, 12)
    resumed = extract_features(dataset, CONFIG)
    assert (resumed.n_computed, resumed.n_cached) == (8, 4)
    np.testing.assert_allclose(np.asarray(resumed.rows), reference.values, rtol=1e-5, atol=1e-6)


def test_truncated_shard_counts_as_missing_and_is_recomputed(reference, warm_cache):
    folder = _store_folder()
    shard = _shard_of(folder, 1)
    _replace_bytes(shard, shard.read_bytes()[:-50])
    dataset, _ = load_dataset(reference.root)
    assert cache_status(dataset, CONFIG) == (8, 12)
    assert not shard.exists() and not shard.with_suffix(".json").exists()
    features = extract_features(dataset, CONFIG)
    assert (features.n_computed, features.n_cached) == (4, 8)
    np.testing.assert_allclose(np.asarray(features.rows), reference.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["flip", "inf"])
def test_shard_changed_in_place_fails_when_read_is_removed_and_recomputed(reference, warm_cache, damage):
    folder = _store_folder()
    shard = _shard_of(folder, 1)
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[-1000:-990] = bytes(b ^ 0xFF for b in data[-1000:-990])
    else:
        data[-4000:-3998] = np.array([np.inf], dtype=np.float16).tobytes()
    _replace_bytes(shard, bytes(data))
    dataset, _ = load_dataset(reference.root)
    features = extract_features(dataset, CONFIG)
    assert (features.n_computed, features.n_cached) == (0, 12)
    with pytest.raises(CacheError, match=f"feature shard {shard.name} .* was damaged and has been removed") as caught:
        np.asarray(features.rows)
    assert "fails its checksum" in str(caught.value) and "extract the features again" in caught.value.hint
    assert not shard.exists() and not shard.with_suffix(".json").exists()
    assert cache_status(dataset, CONFIG) == (8, 12)
    again = extract_features(dataset, CONFIG)
    assert (again.n_computed, again.n_cached) == (4, 8)
    assert len(list(folder.glob("shard-*.npy"))) == 3
    np.testing.assert_allclose(np.asarray(again.rows), reference.values, rtol=1e-5, atol=1e-6)


def test_shard_without_sidecar_is_recomputed(reference, warm_cache):
    folder = _store_folder()
    _shard_of(folder, 0).with_suffix(".json").unlink()
    dataset, _ = load_dataset(reference.root)
    features = extract_features(dataset, CONFIG)
    assert features.n_computed == 4
    np.testing.assert_allclose(np.asarray(features.rows), reference.values, rtol=1e-5, atol=1e-6)


def test_cached_features_and_status_compute_nothing(reference, warm_cache, tmp_path):
    dataset, _ = load_dataset(reference.root)
    assert cache_status(dataset, CONFIG) == (12, 12)
    hit = cached_features(dataset, CONFIG)
    assert hit is not None and hit.n_computed == 0
    extra = make_demo_dataset(tmp_path / "other", DemoConfig(n_posters=2, seed=99))
    other, _ = load_dataset(extra)
    assert cache_status(other, CONFIG) == (0, 2)
    assert cached_features(other, CONFIG) is None
    assert cache_status(other, CONFIG) == (0, 2)


def test_cache_key_changes_with_precision_weights_and_size_not_batch(cold_cache, tmp_path):
    weights_file = tmp_path / "w.h5"
    weights_file.write_bytes(b"not really weights")
    folders = {
        "f32": store_for(FeatureConfig(weights="none", precision="float32"))[0].folder,
        "bf16": store_for(FeatureConfig(weights="none", precision="bfloat16"))[0].folder,
        "file": store_for(FeatureConfig(weights=str(weights_file), precision="float32"))[0].folder,
        "size": store_for(FeatureConfig(weights="none", precision="float32", image_size=160))[0].folder,
    }
    assert len(set(folders.values())) == 4
    assert store_for(FeatureConfig(weights="none", precision="float32", batch_size=7))[0].folder == folders["f32"]


def test_corrupt_posters_are_reported_and_excluded(reference, warm_cache, tmp_path):
    root = _copy(reference.root, tmp_path / "broken")
    cut = root / "posters" / "demo-0003.jpg"
    _replace_bytes(cut, cut.read_bytes()[:600])
    junk = root / "posters" / "demo-0005.jpg"
    _replace_bytes(junk, b"<html>rate limited</html>")
    dataset, _ = load_dataset(root, check_images=False)
    features = extract_features(dataset, CONFIG)
    reasons = {item.id: item.reason for item in features.failed}
    assert set(reasons) == {"demo-0003", "demo-0005"}
    assert "demo-0003.jpg" in reasons["demo-0003"] and "truncated" in reasons["demo-0003"]
    assert "not an image" in reasons["demo-0005"]
    kept = [id_ for id_ in reference.set.ids if id_ not in reasons]
    assert features.ids == kept and features.features.shape == (10, FEATURE_DIM)
    assert features.n_computed == 0
    np.testing.assert_array_equal(np.asarray(features.rows), reference.rows(kept))


def test_duplicate_images_under_two_ids_both_get_rows(reference, warm_cache, tmp_path):
    root = _copy(reference.root, tmp_path / "dups")
    shutil.copy(root / "posters" / "demo-0001.jpg", root / "posters" / "copy-of-1.jpg")
    write_labels(root, _rows(root) + [("copy-of-1", "Same bytes", ("Drama",))])
    dataset, _ = load_dataset(root)
    features = extract_features(dataset, CONFIG)
    assert features.ids[-1] == "copy-of-1" and features.features.shape == (13, FEATURE_DIM)
    assert features.n_computed == 0 and not features.failed
    np.testing.assert_array_equal(features.rows[-1], features.rows[0])


@pytest.mark.parametrize("name, pool", [("avg", np.mean), ("max", np.max)])
def test_pooled_views_equal_manual_numpy_pooling(reference, name, pool):
    manual = pool(reference.values[:, :FEATURE_DIM].reshape(12, 7, 7, 512), axis=(1, 2))
    for _ in range(2):
        view = reference.set.view(name)
        assert view.shape == (12, 512) and view.dtype == np.float32
        np.testing.assert_allclose(view, manual, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool_features(reference.values, name, chunk=5), manual, rtol=1e-6, atol=1e-6)


def test_avg45_view_is_block4_part_then_avg_view(reference):
    view = reference.set.view("avg45")
    assert view.shape == (12, 1024) and view.dtype == np.float32
    np.testing.assert_array_equal(view[:, :512], reference.values[:, FEATURE_DIM:])
    np.testing.assert_allclose(view[:, 512:], reference.set.view("avg"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool_features(reference.values, "avg45", chunk=5), view, rtol=1e-6, atol=1e-6)


def test_flatten_view_is_the_first_25088_columns_without_a_copy(reference):
    assert reference.set.rows.shape == (12, ROW_DIM) == (12, 25600)
    flat = reference.set.view("flatten")
    assert isinstance(flat, ShardedRows) and flat.shape == (12, FEATURE_DIM)
    np.testing.assert_array_equal(np.asarray(flat), reference.values[:, :FEATURE_DIM])
    np.testing.assert_array_equal(feature_view(reference.values, "flatten"), reference.values[:, :FEATURE_DIM])


def test_pooled_storage_keeps_pooled_views_only(reference, warm_cache, capsys):
    from core.cli.main import main

    pooled = FeatureConfig(weights="none", batch_size=4, storage="pooled")
    assert main(["extract", "--dataset", str(reference.root), "--weights", "none", "--batch-size-extract", "4",
                 "--storage", "pooled"]) == 0
    assert "12 posters x 1536 (pooled)" in capsys.readouterr().out
    dataset, _ = load_dataset(reference.root)
    features = extract_features(dataset, pooled)
    assert (features.n_computed, features.n_cached) == (0, 12) and features.rows.shape == (12, POOLED_DIM) == (12, 1536)
    folder = store_for(pooled)[0].folder
    assert folder != _store_folder() and features.key != reference.set.key
    assert sum(path.stat().st_size for path in folder.glob("shard-*.npy")) < 12 * 3200
    for name in ("avg", "max", "avg45"):
        full = reference.set.view(name)
        view = features.view(name)
        assert view.shape == full.shape and view.dtype == np.float32
        np.testing.assert_allclose(view, full, rtol=2e-3, atol=1e-3 * np.abs(full).max())
    message = "the tutorial's 25,088-d view is not available for this dataset: it was extracted in pooled-only mode"
    with pytest.raises(ConfigError, match=message) as caught:
        features.view("flatten")
    assert "--storage full" in caught.value.hint and "avg45" in caught.value.hint
    with pytest.raises(ConfigError, match=message):
        features.features


def test_unknown_view_raises(reference):
    with pytest.raises(ValueError, match="unknown feature view 'median'"):
        feature_view(reference.values, "median")


def test_random_extractor_equals_plain_keras_vgg16_with_same_seed(reference):
    import keras

    dataset, _ = load_dataset(reference.root)
    pixels = np.stack([load_pixels(path) for path in dataset.paths[:2]])
    ours = get_extractor(resolve_weights("none"), "float32")(pixels)
    keras.utils.set_random_seed(RANDOM_SEED)
    plain = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    batch = keras.applications.vgg16.preprocess_input(pixels.astype(np.float32))
    probe = keras.Model(plain.inputs, [plain.output, plain.get_layer("block4_pool").output])
    top, block4 = (np.asarray(out) for out in probe.predict(batch, verbose=0))
    theirs = np.hstack([top.reshape(2, -1), block4.mean(axis=(1, 2))])
    assert ours.shape == theirs.shape == (2, ROW_DIM)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    from core.features import extractor

    if extractor.onednn_cap_without_bf16() and extractor.cpu_flags_have_bf16():  # .ci/avx2-env on a bf16 CPU
        with pytest.raises(WeightsError, match="bfloat16 cannot run with ONEDNN_MAX_CPU_ISA"):
            get_extractor(resolve_weights("none"), "bfloat16")
        return
    half = get_extractor(resolve_weights("none"), "bfloat16")(pixels)
    assert half.dtype == np.float32
    assert np.linalg.norm(half - ours) / np.linalg.norm(ours) < 0.05


def test_preprocess_does_not_modify_its_input():
    batch = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    before = batch.copy()
    out = preprocess(batch)
    np.testing.assert_array_equal(batch, before)
    np.testing.assert_allclose(out[..., 0], before[..., 2] - 103.939, rtol=1e-5)
    assert out.dtype == np.float32


def test_unknown_precision_is_refused():
    with pytest.raises(WeightsError, match="unknown precision 'float8'"):
        resolve_precision("float8")


@pytest.mark.parametrize(("env", "native"), [
    ({}, True), ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False), ({"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True), ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False)])
def test_auto_precision_follows_what_onednn_may_run(monkeypatch, tmp_path, env, native):
    """A bfloat16 CPU whose oneDNN is off or capped below AVX512_CORE_BF16 emulates bfloat16 (slower than
    float32): ``auto`` is float32 there, as on an AVX2-only CPU (the cap is how CI runs that path here)."""
    from core.features import extractor

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    real_path = extractor.Path
    monkeypatch.setattr(extractor, "Path", lambda name: real_path(cpuinfo if name == "/proc/cpuinfo" else name))
    monkeypatch.setattr(extractor.sys, "platform", "linux")
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert extractor.cpu_has_bf16() is native
    assert resolve_precision("auto") == ("bfloat16" if native else "float32")
    if extractor.onednn_cap_without_bf16():  # TensorFlow would still pick oneDNN's bf16 kernels, and abort
        with pytest.raises(WeightsError, match="bfloat16 cannot run with .*_MAX_CPU_ISA=") as refused:
            extractor.check_bf16_runs()
        assert "--precision float32" in refused.value.hint
    else:
        extractor.check_bf16_runs()
    cpuinfo.write_text("flags\t\t: fpu avx2\n")
    assert not extractor.cpu_has_bf16() and resolve_precision("auto") == "float32"


@pytest.mark.parametrize("spec", ["imagenet", "ImageNet "])
def test_resolve_imagenet(spec):
    weights = resolve_weights(spec)
    assert (weights.kind, weights.identity, weights.is_random, weights.spec) == (
        "imagenet", IMAGENET_IDENTITY, False, "imagenet")


@pytest.mark.parametrize("spec", ["none", "NONE", "random"])
def test_resolve_random(spec):
    weights = resolve_weights(spec)
    assert weights.kind == "none" and weights.is_random and "RANDOM" in weights.label
    assert weights.identity == resolve_weights("none").identity


def test_resolve_missing_file_raises_with_hint(tmp_path):
    with pytest.raises(WeightsError, match=r"missing\.h5 does not exist") as caught:
        resolve_weights(str(tmp_path / "missing.h5"))
    assert "imagenet" in caught.value.hint


def test_resolve_existing_file_uses_its_sha256(tmp_path):
    first = tmp_path / "a.weights.h5"
    first.write_bytes(b"weights-bytes")
    copy = tmp_path / "b.weights.h5"
    copy.write_bytes(b"weights-bytes")
    other = tmp_path / "c.weights.h5"
    other.write_bytes(b"other-bytes")
    weights = resolve_weights(str(first))
    assert weights.kind == "file" and weights.path == first.resolve() and weights.spec == str(first.resolve())
    assert weights.identity == f"file:sha256:{file_sha256(first)}"
    assert resolve_weights(str(copy)).identity == weights.identity
    assert resolve_weights(str(other)).identity != weights.identity


def test_default_weights_come_from_environment(monkeypatch, tmp_path):
    assert resolve_weights().kind == "none"
    monkeypatch.delenv("POSTER_GENRE_WEIGHTS")
    assert default_weights_spec() == "imagenet" and resolve_weights().kind == "imagenet"
    path = tmp_path / "w.h5"
    path.write_bytes(b"x")
    monkeypatch.setenv("POSTER_GENRE_WEIGHTS", str(path))
    assert resolve_weights().kind == "file"


def test_non_weights_file_raises_when_building(tmp_path):
    path = tmp_path / "holiday.h5"
    path.write_bytes(b"a photo, not weights" * 50)
    with pytest.raises(WeightsError, match=r"holiday\.h5 is not a VGG16 include_top=False weights file"):
        get_extractor(resolve_weights(str(path)), "float32")


def test_imagenet_download_failure_hints_at_a_local_file(monkeypatch):
    import keras

    real = keras.applications.VGG16

    def offline(*args, weights="imagenet", **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(WeightsError, match="could not download the ImageNet VGG16 weights") as caught:
        get_extractor(resolve_weights("imagenet"), "float32")
    assert "local file" in caught.value.hint and "--weights" in caught.value.hint


def test_counts_stay_within_the_posters_when_a_fresh_shard_breaks(reference, cold_cache, monkeypatch):
    store_open = FeatureStore.open
    broken: list[Path] = []

    def open_after_damage(self, keys):
        if not broken:
            broken.append(_shard_of(self.folder, 0))
            data = bytearray(broken[0].read_bytes())
            data[-100:-98] = bytes(b ^ 0xFF for b in data[-100:-98])
            _replace_bytes(broken[0], bytes(data))
        return store_open(self, keys)

    monkeypatch.setattr(FeatureStore, "open", open_after_damage)
    dataset, _ = load_dataset(reference.root)
    features = extract_features(dataset, CONFIG)
    assert (features.n_computed, features.n_cached) == (12, 0)
    with pytest.raises(CacheError, match="was damaged"):
        features.view("avg")
    again = extract_features(dataset, CONFIG)
    assert (again.n_computed, again.n_cached) == (4, 8)
    np.testing.assert_allclose(np.asarray(again.rows), reference.values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "batch size for extraction must be a whole number ≥ 1, got 0"),
    ({"batch_size": -5}, "got -5"),
    ({"batch_size": 2.5}, "got 2.5"),
    ({"image_size": 16}, r"image size must be a whole number between 32 and 1024 \(VGG16 learnt at 224; "
                         r"larger inputs do not fit in memory\), got 16"),
    ({"image_size": 100_000}, "between 32 and 1024 .*, got 100000"),
    ({"resize": "cubic"}, "resize must be one of"),
    ({"precision": "float16"}, "precision must be one of"),
    ({"storage": "tiny"}, "storage must be one of full, pooled, got 'tiny'"),
])
def test_feature_options_out_of_range_are_refused_before_work(change, message, cold_cache, reference):
    import dataclasses

    config = dataclasses.replace(CONFIG, **change)
    with pytest.raises(ConfigError, match=message):
        check_feature_config(config)
    dataset, _ = load_dataset(reference.root)
    with pytest.raises(ConfigError, match=message):
        extract_features(dataset, config)
    assert not (cold_cache / "features").exists()


def test_same_weights_folds_known_imagenet_files_only():
    known = f"file:sha256:{next(iter(IMAGENET_FILE_SHA256))}"
    random = resolve_weights("none").identity
    assert same_weights(known, IMAGENET_IDENTITY) and same_weights(IMAGENET_IDENTITY, known)
    assert not same_weights(f"file:sha256:{'0' * 64}", IMAGENET_IDENTITY)
    assert not same_weights(random, IMAGENET_IDENTITY) and same_weights(random, random)


def test_shared_imagenet_file_is_recognised(imagenet_weights):
    assert same_weights(resolve_weights(str(imagenet_weights)).identity, IMAGENET_IDENTITY)
