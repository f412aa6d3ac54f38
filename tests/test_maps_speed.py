"""What the first UMAP map of a fresh process no longer pays for (core.analysis.numba_cache, maps).

Behaviours locked in:
- ``import_umap`` imports umap without running umap.parametric_umap (which imports TensorFlow; never used);
- ``cache_kernels`` switches on numba's disk cache for a module's jitted functions not yet compiled,
  so a second process loads the compiled code instead of compiling it; a function already compiled
  is left as it is;
- the PCA of wide features (randomized solver) gives scikit-learn's PCA scores (bit for bit on one BLAS
  thread), follows the seed, still refuses NaN or infinite features, and leaves a read-only input
  untouched; its factorisations run on one BLAS thread, and the thread counts are restored afterwards.
"""
from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.analysis import maps
from core.analysis.numba_cache import cache_kernels, import_umap
from core.errors import PosterGenreError

KERNELS = '''
import numba


@numba.njit()
def doubled(x):
    return 2 * x


@numba.njit()
def tripled(x):
    return 3 * x
'''


def test_import_umap_does_not_run_parametric_umap():
    """Re-imports umap in this process (pynndescent, already imported, is not compiled again)."""
    ours = {name: module for name, module in sys.modules.items() if name == "umap" or name.startswith("umap.")}
    for name in ours:
        del sys.modules[name]
    try:
        umap = import_umap()
        assert sys.modules["umap.parametric_umap"] is None, "umap imported ParametricUMAP (and TensorFlow)"
        assert umap.ParametricUMAP.__module__ == "umap", "not umap's stand-in for a missing TensorFlow"
        assert hasattr(umap, "UMAP")
    finally:
        for name in [name for name in sys.modules if name == "umap" or name.startswith("umap.")]:
            del sys.modules[name]
        sys.modules.update(ours)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cache_kernels_saves_compiled_code_that_the_next_load_reads(tmp_path):
    source = tmp_path / "kernels_under_test.py"
    source.write_text(textwrap.dedent(KERNELS))
    first = _load(source, "kernels_under_test")
    assert first.tripled(1) == 3  # compiled before caching: left alone
    assert cache_kernels(first) == 1
    assert first.doubled(21) == 42
    assert first.doubled.stats.cache_misses, "the first call did not look in the disk cache"
    index_files = list(Path(first.doubled._cache.cache_path).glob("*doubled*.nbi"))
    assert index_files, "nothing was saved to the disk cache"

    second = _load(source, "kernels_under_test")
    assert cache_kernels(second) == 2
    assert second.doubled(4) == 8
    assert sum(second.doubled.stats.cache_hits.values()) == 1, "the second load compiled again"


@pytest.fixture
def wide(monkeypatch):
    """Blobs-like features, with the randomized-PCA threshold lowered so 64 columns count as wide."""
    monkeypatch.setattr(maps, "RANDOMIZED_PCA_MIN_DIM", 16)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 64)).astype(np.float32)
    X[:60, :8] += 4.0
    X.flags.writeable = False
    return X


def test_wide_pca_scores_equal_scikit_learn_pca(wide):
    """Bit for bit on one BLAS thread (threaded LAPACK rounds differently from run to run)."""
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        expected = PCA(n_components=10, svd_solver="randomized", random_state=5,
                       iterated_power=maps.RANDOMIZED_PCA_POWER_ITERATIONS).fit_transform(wide.copy())
        scores = maps.reduce_pca(wide, n_components=10, seed=5)
    assert scores.dtype == np.float32 and scores.flags.c_contiguous
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_allclose(maps.reduce_pca(wide, n_components=10, seed=5), expected, rtol=0, atol=1e-4)
    assert not np.array_equal(maps.reduce_pca(wide, n_components=10, seed=6), expected), "the seed is ignored"


def test_pca_leaves_the_blas_thread_counts_as_it_found_them(wide, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        maps.reduce_pca(wide, n_components=10)
        monkeypatch.setattr(maps, "RANDOMIZED_PCA_MIN_DIM", 10_000)
        maps.reduce_pca(wide, n_components=10)
        after = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert before and after == before


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_wide_pca_refuses_non_finite_features(wide, bad):
    X = wide.copy()
    X[7, 30] = bad
    with pytest.raises(PosterGenreError, match="NaN or infinite"):
        maps.reduce_pca(X, n_components=10)
