"""A standing check of hostile inputs: every case has one exact outcome and changes no user file.

Outcomes are *used* (with the values that prove it), *skipped* (with this reason) or *refused* (with
this message), never a traceback and never a silently wrong result:

- labels.csv variants: genres differing by case/whitespace are merged into one spelling and the merge
  is reported; an unbalanced quote is refused with its line number; odd but valid CSV is used. Commas,
  Unicode forms, control characters, encodings and genres named like missing values: in
  ``tests/test_labels_reading.py``.
- image variants: greyscale, CMYK, RGBA, palette, 16-bit, 1-bit, WebP, PNG bytes named .jpg and
  symlinks are used; empty, non-image, truncated, oversize (header-only 20000x20000 PNG and an
  8000x8000 one), folders and broken links named like posters are skipped with their reason.
- CLI bounds: extraction batch sizes <= 0, ``evaluate --threshold 5``/``--k 0``, ``predict --k -2``,
  a folder among predict's images, all images unreadable, a run made with ImageNet weights applied
  with ``--weights none``, ``train --out`` naming a file or a folder of the user's, wrong-shaped
  ``metrics.json``/``split.json``: one ``error:`` line and exit 1, or the RANDOM warning.
- cache corruption of each cached file: truncated shards and shard sidecars are recomputed, a shard
  with flipped bytes is refused when read and recomputed by the next extraction, views, knn and UMAP
  caches are rebuilt with the same values; damaged run files are refused with a message that
  promises no rebuild.
- concurrency: two extractions of the same posters at once compute each poster once.

Downloads into existing folders belong to the downloader and are not covered here. Beside this file, one
file per class of issue 20's hostile inputs:

1. a run answers only for the labels it was trained on: tests/test_run_identity.py;
2. "checked when read" is true (bytes changed in place, ``cp -p``, ``python -m core verify``) and
4. resource faults (full disk, read-only cache, a cache path that is a file): tests/test_cache_trust.py;
3. output folders keep what the user put there, and are locked while written: tests/test_output_folders.py;
5. labels read as a person means them (commas, Unicode forms, control characters, encodings, ``NA``
   genres): tests/test_labels_reading.py;
6. every user mistake is one line (option bounds, odd poster entries, predict's model checks, source
   genre ids, Ctrl-C): tests/test_user_mistakes.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli.main import main
from core.data.datasets import load_dataset
from core.data.images import load_pixels
from core.errors import ImageError

FAST_TRAIN = ["--hidden", "8", "--epochs", "1", "--batch-size", "8"]


# Helpers -------------------------------------------------------------------------------------


def folder_hashes(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file content hash, link target or "dir"."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of ``path`` keeping its size (as bit rot does).

    The mtime is moved on so this process's per-file-version verification memo is not reused.
    """
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 64, len(data))):
        data[i] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, without the pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def poster(colour=(200, 40, 40), size=(40, 60)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste((20, 20, 220), (0, 0, size[0] // 2, size[1] // 2))
    return image


def make_folder(root: Path, csv_text: str, images: dict[str, bytes], encoding: str = "utf-8") -> Path:
    (root / "posters").mkdir(parents=True)
    (root / "labels.csv").write_bytes(csv_text.encode(encoding))
    for name, data in images.items():
        (root / "posters" / name).write_bytes(data)
    return root


def run_cli(capsys, argv: list) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, message: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err


# labels.csv variants ---------------------------------------------------------------------------

JPEG = encode(poster(), "JPEG")

LABEL_CASES = {
    "genre case and spaces merged": (
        "id,title,genres\na,A,Drama|drama\nb,B,DRAMA \nc,C, drama |Comedy\nd,D,Science  Fiction|science fiction\n",
        ("used", {"a": ("Drama",), "b": ("Drama",), "c": ("Drama", "Comedy"), "d": ("Science Fiction",)},
         {"Drama": ("DRAMA", "drama")})),
    "most frequent spelling wins": (
        "id,title,genres\na,A,comedy\nb,B,Comedy\nc,C,Comedy\n",
        ("used", {"a": ("Comedy",), "b": ("Comedy",), "c": ("Comedy",)}, {"Comedy": ("comedy",)})),
    "unbalanced quote": (
        'id,title,genres\na,A,Drama\nb,"Swallow,Comedy\nc,C,Drama\nd,D,Horror\n',
        ("refused", "labels.csv, line 3: a quoted field runs over lines 3-5")),
    "quote closed rows later": (
        'id,title,genres\na,"The\nEnd",Drama\nb,B,Comedy\nc,C,Drama\n',
        ("refused", "line 2: a quoted field runs over lines 2-3")),
    "doubled quotes are fine": (
        'id,title,genres\na,"Say ""hi"", again",Drama\nb,B,Comedy\nc,C,Drama\n',
        ("used", {"a": ("Drama",), "b": ("Comedy",), "c": ("Drama",)}, {})),
    "BOM, CRLF and padded header": (
        "\ufeff id , title , genres \r\na,A,Drama\r\nb,B,Comedy\r\nc,C,Drama\r\n",
        ("used", {"a": ("Drama",), "b": ("Comedy",), "c": ("Drama",)}, {})),
    "missing genres column": (
        "id,title,tags\na,A,Drama\n", ("refused", "lacks column(s) genres")),
    "only a header": ("id,title,genres\n", ("refused", "no usable posters")),
    "empty and separator-only genres": (
        "id,title,genres\na,A,Drama\nb,B,  |  \nc,C,\n",
        ("skipped", {"b": "empty genre list", "c": "empty genre list"})),
    "empty id and duplicate id": (
        "id,title,genres\na,A,Drama\n,Nobody,Drama\na,Again,Comedy\nb,B,Comedy\n",
        ("skipped", {"line 3": "empty id", "a": "duplicate id (line 4)"})),
    "short rows and trailing empty fields": (
        "id,title,genres\na,A,Drama,,\nb,B\nc,C,Comedy\n",
        ("skipped", {"b": "empty genre list"})),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_labels_variant(case, tmp_path):
    csv_text, expected = LABEL_CASES[case]
    root = make_folder(tmp_path / "ds", csv_text, {f"{i}.jpg": JPEG for i in "abcd"})
    before = folder_hashes(root)
    if expected[0] == "refused":
        with pytest.raises(Exception) as caught:
            load_dataset(root)
        assert type(caught.value).__name__ == "DatasetError" and expected[1] in str(caught.value)
    else:
        dataset, report = load_dataset(root)
        if expected[0] == "used":
            assert {p.id: p.genres for p in dataset.posters} == expected[1]
            assert report.genre_merges == expected[2]
            assert len(report.merge_lines()) == len(expected[2])
        else:
            reasons = {item.id: item.reason for item in report.skipped if item.id in expected[1]}
            assert set(reasons) == set(expected[1]), report.lines()
            assert all(expected[1][id_] in reasons[id_] for id_ in reasons), report.lines()
    assert folder_hashes(root) == before


def test_genre_merge_is_reported_on_the_command_line(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", "id,title,genres\na,A,Drama\nb,B,DRAMA\nc,C,Drama\n",
                       {f"{i}.jpg": JPEG for i in "abc"})
    code, out, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert code == 0, err
    assert "genre 'Drama' also written as 'DRAMA'; merged into 'Drama'" in err
    assert "1 genres" in out


# Image variants --------------------------------------------------------------------------------


def _cmyk_jpeg() -> bytes:
    return encode(poster().convert("CMYK"), "JPEG")


def _rgba_png() -> bytes:
    image = poster().convert("RGBA")
    image.putalpha(0)
    return encode(image, "PNG")


def _palette_png() -> bytes:
    return encode(poster().convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG", transparency=0)


def _grey16_png() -> bytes:
    return encode(Image.fromarray(np.full((30, 20), 65535, dtype=np.uint16)), "PNG")


def _truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((200, 300), 60).convert("RGB"), "JPEG", quality=95)
    return data[: len(data) // 2]


IMAGE_CASES = {
    # name: (file name, bytes or builder, expected)
    "greyscale jpeg": ("v.jpg", lambda: encode(poster().convert("L"), "JPEG"), ("used", None)),
    "cmyk jpeg": ("v.jpg", _cmyk_jpeg, ("used", None)),
    "transparent rgba png": ("v.png", _rgba_png, ("used", (255, 255, 255))),
    "palette png with transparency": ("v.png", _palette_png, ("used", None)),
    "16-bit greyscale png": ("v.png", _grey16_png, ("used", (255, 255, 255))),
    "1-bit png": ("v.png", lambda: encode(poster().convert("1"), "PNG"), ("used", None)),
    "webp": ("v.webp", lambda: encode(poster(), "WEBP"), ("used", None)),
    "png bytes named .jpg": ("v.jpg", lambda: encode(poster((0, 255, 0)), "PNG"), ("used", None)),
    "empty file": ("v.jpg", lambda: b"", ("skipped", "empty file (0 bytes)")),
    "not an image": ("v.jpg", lambda: b"<html>404</html>", ("skipped", "not an image (unrecognised format)")),
    "truncated jpeg": ("v.jpg", _truncated_jpeg, ("decode-skipped", "truncated or corrupt image")),
    "20000x20000 png header": ("v.png", lambda: png_header_only(20000, 20000), ("skipped", "too large")),
    "8000x8000 png header": ("v.png", lambda: png_header_only(8000, 8000), ("skipped", "too large")),
    "gif is not a poster extension": ("v.gif", lambda: encode(poster(), "GIF"), ("skipped", "no image")),
}


def _image_dataset(root: Path, name: str, data: bytes) -> Path:
    return make_folder(root, "id,title,genres\nok,OK,Drama\nv,Variant,Comedy\n", {"ok.jpg": JPEG, name: data})


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_variant(case, tmp_path):
    name, build, (outcome, detail) = IMAGE_CASES[case]
    root = _image_dataset(tmp_path / "ds", name, build())
    before = folder_hashes(root)
    dataset, report = load_dataset(root)
    reasons = {item.id: item.reason for item in report.skipped}
    if outcome == "skipped":
        assert dataset.ids == ["ok"] and detail in reasons["v"], reasons
    else:
        assert dataset.ids == ["ok", "v"] and "v" not in reasons, reasons
        path = dataset.posters[1].path
        if outcome == "used":
            pixels = load_pixels(path, 32)
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
            if detail is not None:
                assert tuple(pixels[-1, -1]) == detail
        else:
            with pytest.raises(ImageError, match=detail):
                load_pixels(path, 32)
    assert folder_hashes(root) == before


@pytest.mark.parametrize("kind, expected", [
    ("link to a poster", ("used", None)),
    ("broken link", ("skipped", "broken symbolic link")),
    ("folder named like a poster", ("skipped", "is a folder, not an image file")),
])
def test_poster_entries_that_are_not_plain_files(kind, expected, tmp_path):
    root = make_folder(tmp_path / "ds", "id,title,genres\nok,OK,Drama\nv,Variant,Comedy\n", {"ok.jpg": JPEG})
    (tmp_path / "elsewhere.jpg").write_bytes(encode(poster((1, 2, 3)), "JPEG"))
    entry = root / "posters" / "v.jpg"
    if kind == "link to a poster":
        entry.symlink_to(tmp_path / "elsewhere.jpg")
    elif kind == "broken link":
        entry.symlink_to(tmp_path / "gone.jpg")
    else:
        entry.mkdir()
    before = folder_hashes(root)
    dataset, report = load_dataset(root)
    reasons = {item.id: item.reason for item in report.skipped}
    assert load_dataset(root, check_images=False)[0].ids == dataset.ids
    if expected[0] == "used":
        assert dataset.ids == ["ok", "v"] and load_pixels(dataset.posters[1].path, 32).shape == (32, 32, 3)
    else:
        assert dataset.ids == ["ok"] and expected[1] in reasons["v"], reasons
        with pytest.raises(ImageError, match=expected[1]):
            load_pixels(entry, 32)
    assert folder_hashes(root) == before


def test_oversize_poster_does_not_stop_extraction(tmp_path, capsys):
    root = _image_dataset(tmp_path / "ds", "v.png", png_header_only(20000, 20000))
    code, out, err = run_cli(capsys, ["extract", "--dataset", root, "--weights", "none"])
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("skipped v: ")]
    assert "too large" in line
    assert "features: 1 posters" in out


# Runs and the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_folder(tiny_features, tmp_path_factory) -> Path:
    from core.model.config import TrainConfig
    from core.model.experiment import run_experiment
    from core.model.runs import save_run

    dataset, features = tiny_features
    config = TrainConfig(feature_view="avg", hidden=(8,), learning_rate=1e-2, optimizer="adam", epochs=1,
                         batch_size=8, k=3, seed=1)
    return save_run(run_experiment(dataset, features, config), tmp_path_factory.mktemp("hostile") / "run")


@pytest.fixture
def run_copy(run_folder, tmp_path) -> Path:
    return Path(shutil.copytree(run_folder, tmp_path / "run"))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _imagenet_run(run: Path) -> None:
    from core.features.weights import IMAGENET_IDENTITY

    def change(info):
        info["features"].update(weights="imagenet", weights_identity=IMAGENET_IDENTITY,
                                weights_label="ImageNet (Keras download)", random_weights=False)
        return info
    _edit_json(run / "run.json", change)


CLI_CASES = {
    "extract batch size 0": (lambda ds, run, tmp: ["extract", "--dataset", ds, "--batch-size-extract", "0"],
                             "batch size for extraction must be a whole number ≥ 1, got 0"),
    "train batch size -3": (lambda ds, run, tmp: ["train", "--dataset", ds, "--out", tmp / "new",
                                                  "--batch-size-extract", "-3", *FAST_TRAIN],
                            "got -3"),
    "evaluate threshold 5": (lambda ds, run, tmp: ["evaluate", "--run", run, "--threshold", "5"],
                             "threshold must be between 0 and 1, got 5.0"),
    "evaluate k 0": (lambda ds, run, tmp: ["evaluate", "--run", run, "--k", "0"], "k 0 is out of range"),
    "predict k -2": (lambda ds, run, tmp: ["predict", "--run", run, ds / "posters" / "demo-0001.jpg", "--k", "-2"],
                     "k -2 is out of range"),
    "predict every image unreadable": (
        lambda ds, run, tmp: ["predict", "--run", run, ds / "posters", tmp / "missing.jpg"],
        "none of the 2 image(s) could be read"),
    "predict random weights on an ImageNet run": (
        lambda ds, run, tmp: (_imagenet_run(run), ["predict", "--run", run, "--weights", "none",
                                                    ds / "posters" / "demo-0001.jpg"])[1],
        "differ from the run's (ImageNet (Keras download))"),
    "metrics.json of the wrong shape": (
        lambda ds, run, tmp: ((run / "metrics.json").write_text("[1, 2]"), ["evaluate", "--run", run])[1],
        "metrics.json must hold an object"),
    "split.json of the wrong shape": (
        lambda ds, run, tmp: ((run / "split.json").write_text('{"train": 5, "test": "x"}'),
                              ["evaluate", "--run", run])[1],
        "split.json must hold lists of poster ids"),
    "run.json cut short": (
        lambda ds, run, tmp: ((run / "run.json").write_text('{"version": '), ["evaluate", "--run", run])[1],
        "has damaged metadata"),
    "test_scores.npy damaged": (
        lambda ds, run, tmp: (corrupt(run / "test_scores.npy"), ["evaluate", "--run", run, "--dataset", ds])[1],
        "has no valid test_scores.npy"),
    "model.keras damaged": (
        lambda ds, run, tmp: ((run / "model.keras").write_bytes(b"PK\x03\x04 not a zip"),
                              ["predict", "--run", run, ds / "posters" / "demo-0001.jpg"])[1],
        "cannot load the model of run"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses(case, run_copy, tiny_dataset, tmp_path, capsys):
    build, message = CLI_CASES[case]
    argv = build(tiny_dataset, run_copy, tmp_path)
    before = folder_hashes(tiny_dataset)
    code, out, err = run_cli(capsys, argv)
    assert_refused(code, err, message)
    assert "will be rebuilt" not in err
    assert folder_hashes(tiny_dataset) == before


def test_predict_skips_a_folder_among_images_and_says_random(run_folder, tiny_dataset, capsys):
    code, out, err = run_cli(capsys, ["predict", "--run", run_folder, tiny_dataset / "posters",
                                      tiny_dataset / "posters" / "demo-0001.jpg"])
    assert code == 0, err
    assert "skipped posters: posters: is a folder, not an image file" in err
    assert out.startswith("demo-0001.jpg: ") and len(out.strip().splitlines()) == 1
    assert "WARNING: RANDOM weights" in err


@pytest.mark.parametrize("kind, message", [
    ("a file", "is a file, not a folder"),
    ("a folder of the user's", "is not empty and is not a run folder (it holds notes.txt, run.json)"),
])
def test_train_out_is_checked_before_any_work(kind, message, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("my file")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "run.json").write_text('{"my": "own run.json"}')
    before = folder_hashes(tmp_path)
    code, stdout, err = run_cli(capsys, ["train", "--dataset", tiny_dataset, "--out", out, *FAST_TRAIN])
    assert_refused(code, err, message)
    assert "features:" not in stdout and "dataset" not in stdout
    assert folder_hashes(tmp_path) == before


# Cache corruption -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory):
    """A private cache and an 8-poster dataset, so corrupting files cannot touch other tests' caches."""
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POSTER_GENRE_CACHE", str(tmp_path_factory.mktemp("own-cache")))
        root = make_demo_dataset(tmp_path_factory.mktemp("small") / "small", DemoConfig(n_posters=8, seed=11))
        dataset, _ = load_dataset(root)
        config = FeatureConfig(weights="none", batch_size=4)
        reference = np.array(extract_features(dataset, config).rows)
        yield dataset, config, reference


def _store_folder(config) -> Path:
    from core.features.pipeline import store_for

    return store_for(config)[0].folder


def _shard(config) -> Path:
    """A shard the store uses (an earlier case may have left one with a broken sidecar)."""
    def usable(path: Path) -> bool:
        try:
            return isinstance(json.loads(path.with_suffix(".json").read_text())["keys"], list)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    return next(path for path in sorted(_store_folder(config).glob("shard-*.npy")) if usable(path))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:-64])


CACHE_CASES = {
    # name: (damage, posters computed again, message logged)
    "shard truncated": (lambda config: _truncate(_shard(config)), 4, "its sidecar says"),
    "shard sidecar of the wrong shape": (lambda config: _shard(config).with_suffix(".json").write_text('{"keys": 5}'),
                                         4, "ignoring feature shard"),
    "failures.json of the wrong shape": (lambda config: (_store_folder(config) / "failures.json").write_text('{"a": 1}'),
                                         0, ""),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_damaged_feature_cache_is_rebuilt_with_the_same_values(case, own_cache, caplog):
    from core.features.pipeline import extract_features

    dataset, config, reference = own_cache
    damage, recomputed, message = CACHE_CASES[case]
    before = folder_hashes(dataset.root)
    damage(config)
    with caplog.at_level(logging.WARNING):
        features = extract_features(dataset, config)
    np.testing.assert_allclose(np.asarray(features.rows), reference, rtol=1e-5, atol=1e-5)
    assert message in caplog.text
    assert features.n_computed == recomputed and features.n_cached == len(dataset) - recomputed
    assert folder_hashes(dataset.root) == before
    again = extract_features(dataset, config)
    assert again.n_computed == 0 and again.n_cached == len(dataset)


def test_shard_with_flipped_bytes_is_refused_when_read_then_recomputed(own_cache, caplog):
    from core.errors import CacheError
    from core.features.pipeline import extract_features

    dataset, config, reference = own_cache
    corrupt(_shard(config))
    features = extract_features(dataset, config)
    with caplog.at_level(logging.WARNING), pytest.raises(CacheError, match="was damaged and has been removed"):
        np.asarray(features.rows)
    assert "fails its checksum" in caplog.text
    again = extract_features(dataset, config)
    assert (again.n_computed, again.n_cached) == (4, len(dataset) - 4)
    np.testing.assert_allclose(np.asarray(again.rows), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["avg", "avg45"])
def test_damaged_view_is_recomputed(name, own_cache, caplog):
    from core.cache import cache_root
    from core.features.pipeline import extract_features
    from core.features.views import pool_features

    dataset, config, reference = own_cache
    features = extract_features(dataset, config)
    features.view(name)
    path = cache_root() / "views" / f"{features.key}-{name}.npy"
    corrupt(path)
    with caplog.at_level(logging.WARNING):
        view = features.view(name)
    assert "fails its checksum" in caplog.text and f"recomputing the {name!r} view" in caplog.text
    np.testing.assert_allclose(view, pool_features(reference, name), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(features.view(name), view)


def test_damaged_knn_cache_is_recomputed(own_cache):
    from core.analysis.neighbours import _knn_path, knn_indices

    _, _, reference = own_cache
    first = knn_indices(reference, k=3, features_key="hostile")
    corrupt(_knn_path("hostile", 3, len(reference)))
    np.testing.assert_array_equal(knn_indices(reference, k=3, features_key="hostile"), first)


def test_damaged_umap_cache_is_not_used(own_cache, tmp_path):
    from core.analysis.maps import UmapConfig, _cache_path, cached_umap
    from core.cache import atomic_save_npy

    _, _, reference = own_cache
    config = UmapConfig(n_neighbors=3, pca_components=4)
    path = _cache_path(reference, config, "hostile", tmp_path)
    coords = np.arange(len(reference) * 2, dtype=np.float32).reshape(-1, 2)
    atomic_save_npy(path, coords)
    np.testing.assert_array_equal(cached_umap(reference, config, features_key="hostile", cache_dir=tmp_path).coords,
                                  coords)
    corrupt(path)
    assert cached_umap(reference, config, features_key="hostile", cache_dir=tmp_path) is None


# Concurrency ------------------------------------------------------------------------------------


def test_two_extractions_of_the_same_posters_compute_each_once(tmp_path, monkeypatch):
    from core.data.demo import DemoConfig, make_demo_dataset
    from core.features.pipeline import FeatureConfig, extract_features

    monkeypatch.setenv("POSTER_GENRE_CACHE", str(tmp_path / "cache"))
    dataset, _ = load_dataset(make_demo_dataset(tmp_path / "ds", DemoConfig(n_posters=6, seed=4)))
    config = FeatureConfig(weights="none", batch_size=3)
    results, errors = [], []

    def extract() -> None:
        try:
            results.append(extract_features(dataset, config))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=extract) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(r.n_computed for r in results) == [0, len(dataset)]
    assert sorted(r.n_cached for r in results) == [0, len(dataset)]
    np.testing.assert_array_equal(np.asarray(results[0].rows), np.asarray(results[1].rows))
    shards = list((tmp_path / "cache" / "features").glob("*/shard-*.json"))
    assert sum(json.loads(path.read_text())["rows"] for path in shards) == len(dataset)
