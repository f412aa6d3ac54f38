"""Dashboard responsiveness on the real dev set, in headless Chromium against `streamlit run app.py`.

Prints, for each page, the time until it has finished running on the first load of a cold server,
on a reload, and on a switch from another page through the sidebar (what a user does), beside a
trivial one-line Streamlit app served the same way (the baseline: ratios, not seconds);
UMAP of the flattened features uncached and cached; and the server's memory with one and with two
browser sessions open.

    python -m bench.dashboard [--dataset DIR] [--weights PATH]

Features must be extracted already (python -m core extract --dataset DIR --weights PATH): the
benchmark links the user's cached features into a temporary cache so it starts from a cold server
without recomputing them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _common

PAGES = ["", "data", "train", "clusters", "predictions"]
LABELS = {"": "Home", "data": "Data", "train": "Train", "clusters": "Clusters", "predictions": "Predictions"}


def start_server(script: Path, port: int, env: dict) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port)],
        cwd=_common.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    for _ in range(240):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.25)
    raise RuntimeError(f"server on port {port} did not start")


def browser():
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1800", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def time_page(driver, url: str, timeout: float = 600) -> float:
    """Seconds from loading ``url`` until the page shows a title and Streamlit stops 'running'."""
    started = time.perf_counter()
    driver.get(url)
    return _wait_done(driver, started, timeout)


def time_switch(driver, label: str, timeout: float = 600) -> float:
    """Seconds from clicking the sidebar link ``label`` (no reload, as a user switches pages)."""
    from selenium.webdriver.common.by import By

    link = next(a for a in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')
                if a.text.splitlines()[-1] == label)
    started = time.perf_counter()
    link.click()
    time.sleep(0.05)
    return _wait_done(driver, started, timeout)


def poll_pause(elapsed: float) -> float:
    """Seconds to wait before looking at the page again, ``elapsed`` seconds into a step. Each look is a
    WebDriver round trip that Chromium serves on the same two cores as the server: polling every 50 ms
    through a 30 s extraction took half a core from it. Fine-grained at first, where the short targets
    are; coarser later, at most 0.5 s of error on a step that already lasts over 10 s."""
    return 0.05 if elapsed < 2 else 0.2 if elapsed < 10 else 0.5


def _wait_done(driver, started: float, timeout: float) -> float:
    from selenium.webdriver.common.by import By

    quiet_since = None
    while time.perf_counter() - started < timeout:
        done = driver.find_elements(By.CSS_SELECTOR, "h1") and not is_running(driver)
        if done and quiet_since is None:
            quiet_since = time.perf_counter()
        elif not done:
            quiet_since = None
        if quiet_since and time.perf_counter() - quiet_since > 0.5:
            return quiet_since - started
        time.sleep(0.05 if quiet_since else poll_pause(time.perf_counter() - started))
    raise RuntimeError(f"{driver.current_url} did not finish within {timeout}s")


def is_running(driver) -> bool:
    """Streamlit shows a status widget with 'Running…' and a Stop button while the script runs."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return any(word in element.text for element in
                   driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
                   for word in ("Running", "Stop"))
    except StaleElementReferenceException:
        return True


def rss_mb(pid: int) -> float:
    total = 0
    for proc in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def link_user_cache(cache: Path) -> None:
    from core.cache import cache_root

    user = cache_root()
    for name in ("features", "views", "runs", "umap", "knn"):
        if (user / name).exists():
            (cache / name).symlink_to(user / name)


def umap_timing(dataset_dir: Path, weights: str) -> tuple[float, float]:
    from core.data.datasets import load_dataset
    from core.analysis.maps import UmapConfig, compute_umap
    from core.features.pipeline import FeatureConfig, cached_features

    dataset, _ = load_dataset(dataset_dir)
    features = cached_features(dataset, FeatureConfig(weights=weights))
    if features is None:
        raise SystemExit(f"extract features first: python -m core extract --dataset {dataset_dir} --weights {weights}")
    with tempfile.TemporaryDirectory() as folder:
        first = compute_umap(features.features, UmapConfig(), features_key=features.key, cache_dir=Path(folder))
        again = compute_umap(features.features, UmapConfig(), features_key=features.key, cache_dir=Path(folder))
    return first.seconds, again.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET)
    parser.add_argument("--weights", default=_common.default_weights())
    parser.add_argument("--port", type=int, default=8599)
    args = parser.parse_args()
    _common.print_machine()

    cache = Path(tempfile.mkdtemp(prefix="pge-bench-"))
    link_user_cache(cache)
    (cache / "ui_settings.json").write_text(json.dumps(
        {"dataset": str(args.dataset.resolve()), "weights": args.weights, "precision": "auto"}))
    env = {**os.environ, "POSTER_GENRE_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    baseline_script = cache / "baseline_app.py"
    baseline_script.write_text('import streamlit as st\nst.title("Baseline")\nst.write("hello")\n')

    base_server = start_server(baseline_script, args.port + 1, env)
    server = start_server(_common.ROOT / "app.py", args.port, env)
    first_driver, second_driver = browser(), browser()
    try:
        baseline = min(time_page(first_driver, f"http://127.0.0.1:{args.port + 1}/") for _ in range(3))
        print(f"baseline (one-line app) first paint: {baseline:.2f}s")
        print(f"{'page':12s} {'first load':>11s} {'reload':>8s} {'switch':>8s} {'switch/baseline':>16s}")
        for page in PAGES:
            url = f"http://127.0.0.1:{args.port}/{page}"
            first = time_page(first_driver, url)
            again = time_page(first_driver, url)
            time_page(first_driver, f"http://127.0.0.1:{args.port}/{'data' if page != 'data' else ''}")
            switch = time_switch(first_driver, LABELS[page])
            print(f"{page or 'home':12s} {first:10.2f}s {again:7.2f}s {switch:7.2f}s {switch / baseline:15.1f}x",
                  flush=True)
        one = rss_mb(server.pid)
        for page in PAGES:
            time_page(second_driver, f"http://127.0.0.1:{args.port}/{page}")
        two = rss_mb(server.pid)
        print(f"server memory: {one:.0f} MB with one session, {two:.0f} MB with two (+{two - one:.0f} MB)")
    finally:
        first_driver.quit()
        second_driver.quit()
        server.terminate()
        base_server.terminate()
    first, cached = umap_timing(args.dataset, args.weights)
    print(f"UMAP of the flattened features: first {first:.1f}s, cached {cached:.3f}s "
          f"(ratio {first / max(cached, 1e-3):.0f}x)")


if __name__ == "__main__":
    main()
