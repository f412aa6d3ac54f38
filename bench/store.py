"""The compact feature store: bytes per poster on disk, and the time to open a very large dataset.

``open`` (default): writes a synthetic store of ``--n`` posters (100,000: about 5 GB of float16 shards of
``--shard-rows`` rows, as extraction writes them) under a temporary folder, then times, in a fresh
process, what opening a dataset costs: reading the store's sidecars and assembling the dataset's rows by
reference (target ≤ 2 s), then what reading every row costs with each shard checked on first read
(``load_npy``: the sha256 of the bytes read and finiteness) and, opened again in the same process, with
the checked shards trusted by file version: the difference is what verification costs (measured on
100,000 posters, 5.1 GB in 3,125 shards, 2-core AMD EPYC shared with other jobs, second fresh process:
3.1 s of CPU before, when a shard's sha256 was taken from a memo of its size and mtime and only
finiteness was checked, 5.0-6.1 s after, hashing every byte read; reading every row 16.6 → 19.3-19.8 s
of CPU; opening itself, 0.2-0.4 s, reads no shard and is unchanged). It also writes
``--baseline-n`` posters the way version 2 stored them (float32 shards plus the dataset's float32 matrix
copy) and as pooled-only rows, and prints bytes per poster for all three. Everything written is deleted
afterwards.

``quality``: the float16 error on real features. Given a version-2 float32 store of a dataset's rows
(``--float32-store``, a ``features/<key>`` folder), it rounds the same rows as the float16 store does
(exactly what ``FeatureStore.add`` keeps) and reports the max abs/relative error, the change in the
``recommended`` preset's P@3 (same split and seed; with several seeds, the mean change and its
standard error) and the overlap of k=10 cosine neighbours on the
flatten view.

    python -m bench.store [--n 100000] [--baseline-n 2000] [--shard-rows 32] [--folder /tmp]
    python -m bench.store quality --dataset DIR --float32-store CACHE/features/KEY [--seeds 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import _common


def fake_keys(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def synthetic_rows(dim: int, pool_size: int = 256, seed: int = 0) -> np.ndarray:
    """Post-ReLU-like rows (about half zeros, a long positive tail), resampled to fill shards."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.gamma(0.6, 2.0, size=(pool_size, dim)) - 0.5, 0).astype(np.float32)


def fill(store, n: int, shard_rows: int, salt: str = "") -> list[str]:
    """``n`` posters written as extraction writes them: full float32 rows handed to ``add`` per batch."""
    from core.features.extractor import ROW_DIM

    keys = fake_keys(n, salt)
    pool = synthetic_rows(ROW_DIM)
    rng = np.random.default_rng(1)
    for start in range(0, n, shard_rows):
        batch = keys[start:start + shard_rows]
        store.add(batch, pool[rng.integers(0, len(pool), len(batch))])
    return keys


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def bytes_per_poster(folder: Path, n: int) -> float:
    return folder_bytes(folder) / n


def baseline_float32(root: Path, n: int, shard_rows: int) -> float:
    """Version 2's layout: float32 shards plus the dataset's assembled float32 matrix (+ checksum)."""
    from core.cache import atomic_save_npy
    from core.features.extractor import ROW_DIM
    from core.features.store import FeatureStore

    store = FeatureStore("float32", ROW_DIM, {"bench": "float32"}, root=root, dtype="float32")
    keys = fill(store, n, shard_rows, "f32")
    atomic_save_npy(store.folder / "matrices" / "dataset.npy", store.gather(keys))
    return bytes_per_poster(store.folder, n)


def open_in_fresh_process(root: Path, key: str, keys_file: Path) -> dict:
    """Construct the store and open the dataset in a new interpreter (no in-process memo helps)."""
    code = f"""
import json, time
t0 = time.perf_counter()
import numpy as np
from core.features.extractor import ROW_DIM
from core.features.store import FeatureStore
keys = json.loads(open({str(keys_file)!r}).read())
t1 = time.perf_counter()
store = FeatureStore({key!r}, ROW_DIM, root=__import__('pathlib').Path({str(root)!r}), dtype="float16")
t2 = time.perf_counter()
rows = store.open(keys)
t3 = time.perf_counter()
first = rows[:1000]
t4 = time.perf_counter()

def read_all(rows):
    for start in range(0, len(rows), 1024):
        rows[start:start + 1024]

time.sleep(2.1)  # shards written in the last 2 s are re-hashed at every read (the racy-file rule); not these
marks = [(time.perf_counter(), time.process_time())]
for _ in range(2):
    read_all(store.open(keys))
    marks.append((time.perf_counter(), time.process_time()))
(w0, c0), (w1, c1), (w2, c2) = marks
print(json.dumps({{"refresh": t2 - t1, "open": t3 - t2, "first_1000_rows": t4 - t3, "shape": rows.shape,
                  "shards": rows.shards, "finite": bool(np.isfinite(first).all()), "all_checked": w1 - w0,
                  "all_trusted": w2 - w1, "cpu_checked": c1 - c0, "cpu_trusted": c2 - c1}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=_common.ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_open(args: argparse.Namespace) -> None:
    from core.features.extractor import ROW_DIM
    from core.features.store import FeatureStore
    from core.features.views import POOLED_DIM, pooled_rows

    _common.print_machine()
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.folder))
    try:
        old = baseline_float32(work / "baseline", args.baseline_n, args.shard_rows)
        pooled_store = FeatureStore("pooled", POOLED_DIM, root=work / "pooled", dtype="float16", prepare=pooled_rows)
        fill(pooled_store, args.baseline_n, args.shard_rows, "pooled")
        pooled = bytes_per_poster(pooled_store.folder, args.baseline_n)
        started = time.perf_counter()
        store = FeatureStore("float16", ROW_DIM, {"bench": "float16"}, root=work / "large", dtype="float16")
        keys = fill(store, args.n, args.shard_rows, "f16")
        written = time.perf_counter() - started
        new = bytes_per_poster(store.folder, args.n)
        keys_file = work / "keys.json"
        keys_file.write_text(json.dumps(keys))
        print(f"store: {args.n:,} synthetic posters in shards of {args.shard_rows} rows, {folder_bytes(store.folder) / 1e9:.2f} GB "
              f"written in {written:.0f} s under {work}")
        for attempt in range(args.repeat):
            timing = open_in_fresh_process(work / "large", "float16", keys_file)
            print(f"open #{attempt + 1} (fresh process): sidecars read {timing['refresh']:.2f} s + rows assembled "
                  f"{timing['open']:.2f} s = {timing['refresh'] + timing['open']:.2f} s for {timing['shape'][0]:,} "
                  f"posters in {timing['shards']:,} shards (target ≤ 2 s); first 1,000 rows read and checked "
                  f"in {timing['first_1000_rows']:.2f} s")
            print(f"  every row read: {timing['all_checked']:.2f} s (CPU {timing['cpu_checked']:.2f} s) with each "
                  f"shard checked on first read; {timing['all_trusted']:.2f} s (CPU {timing['cpu_trusted']:.2f} s) "
                  f"opened again in the same process, checked shards trusted by inode, size, mtime and ctime: "
                  f"the checks cost {timing['cpu_checked'] - timing['cpu_trusted']:.2f} s of CPU")
        print(f"bytes per poster: float32 + matrix copy (version 2, {args.baseline_n:,} posters) {old:,.0f}; "
              f"float16 shards {new:,.0f} ({old / new:.2f}x less); pooled-only {pooled:,.0f} "
              f"({old / pooled:.0f}x less)")
        print(f"at 100,000 posters: {old * 1e5 / 1e9:.1f} GB → {new * 1e5 / 1e9:.1f} GB (pooled-only "
              f"{pooled * 1e5 / 1e9:.2f} GB); at 1,000,000: {old * 1e6 / 1e9:.0f} GB → {new * 1e6 / 1e9:.0f} GB "
              f"(pooled-only {pooled * 1e6 / 1e9:.1f} GB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_quality(args: argparse.Namespace) -> None:
    from core.analysis.neighbours import knn_indices
    from core.data.datasets import load_dataset
    from core.features.extractor import FEATURE_DIM, ROW_DIM
    from core.features.pipeline import FeatureConfig, FeatureSet, content_keys
    from core.features.store import FeatureStore
    from core.features.weights import resolve_weights
    from core.model.config import PRESETS
    from core.model.experiment import run_experiment

    _common.print_machine()
    dataset, _ = load_dataset(args.dataset)
    source = Path(args.float32_store)
    description = json.loads((source / "config.json").read_text())
    original = FeatureStore(source.name, ROW_DIM, root=source.parent, dtype="float32")
    keys = content_keys(dataset.paths)
    kept = [i for i, key in enumerate(keys) if key in original]
    kept_keys = [keys[i] for i in kept]
    print(f"dataset: {dataset.name}, {len(dataset):,} posters, {len(kept):,} with float32 rows in {source} "
          f"({description.get('weights_label')}, precision {description.get('precision')})")
    work = Path(tempfile.mkdtemp(prefix="bench-store-quality-", dir=args.folder))
    try:
        rounded = FeatureStore("float16", ROW_DIM, root=work, dtype="float16")
        step = 256
        for start in range(0, len(kept_keys), step):
            batch = kept_keys[start:start + step]
            rounded.add(batch, original.gather(batch))
        sets = {}
        weights = resolve_weights(args.weights)
        for name, store in (("float32", original), ("float16", rounded)):
            sets[name] = FeatureSet(rows=store.open(kept_keys), ids=[dataset.posters[i].id for i in kept],
                                    keys=kept_keys, weights=weights, precision="float32",
                                    config=FeatureConfig(precision="float32"), key=f"bench-store-{name}-{store.config_key}")
        error_abs, error_rel, scale = 0.0, 0.0, 0.0
        for start in range(0, len(kept_keys), 512):
            a = sets["float32"].rows[start:start + 512]
            b = sets["float16"].rows[start:start + 512]
            diff = np.abs(a - b)
            error_abs = max(error_abs, float(diff.max()))
            nonzero = np.abs(a) > 1e-3
            error_rel = max(error_rel, float((diff[nonzero] / np.abs(a[nonzero])).max()))
            scale = max(scale, float(np.abs(a).max()))
        print(f"float16 error on {len(kept_keys):,} real rows: max abs {error_abs:.3g} (largest value {scale:.4g}), "
              f"max relative {error_rel:.3g} (values above 1e-3)")
        changes = []
        for seed in args.seeds:
            config = dataclasses.replace(PRESETS["recommended"], seed=seed)
            scores = {name: run_experiment(dataset, sets[name], config).evaluation.precision_at_k.value
                      for name in ("float32", "float16")}
            changes.append(scores["float16"] - scores["float32"])
            print(f"recommended P@3, seed {seed}: float32 {scores['float32']:.4f}, float16 {scores['float16']:.4f}, "
                  f"change {changes[-1]:+.4f}", flush=True)
        if len(changes) > 1:
            spread = np.std(changes, ddof=1) / np.sqrt(len(changes))
            print(f"recommended P@3 change over {len(changes)} seeds: mean {np.mean(changes):+.4f} "
                  f"(standard error {spread:.4f}; target |mean| < 0.002). Training is deterministic per seed, so "
                  "each change is what float16 rounding does to one training run.")
        neighbours = {name: knn_indices(np.asarray(features.rows[:, :FEATURE_DIM]), k=10)
                      for name, features in sets.items()}
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbours["float32"], neighbours["float16"])])
        print(f"kNN (k=10, cosine, flatten view) neighbour overlap float32 vs float16: {overlap:.4%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=("open", "quality"), default="open")
    parser.add_argument("--n", type=int, default=100_000, help="posters in the large synthetic store")
    parser.add_argument("--baseline-n", type=int, default=2_000, help="posters in the float32 and pooled stores")
    parser.add_argument("--shard-rows", type=int, default=32, help="rows per shard (extraction's batch size)")
    parser.add_argument("--repeat", type=int, default=2, help="fresh-process opens to time")
    parser.add_argument("--folder", default=tempfile.gettempdir(), help="where the temporary stores go")
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--float32-store", help="quality: a version-2 float32 features/<key> folder")
    parser.add_argument("--weights", default=_common.default_weights(), help="quality: the weights of those rows")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0])
    args = parser.parse_args(argv)
    if args.command == "quality":
        if not args.float32_store:
            parser.error("quality needs --float32-store")
        run_quality(args)
    else:
        run_open(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
