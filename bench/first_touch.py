"""A new user's first touch, in headless Chromium against `streamlit run app.py` on a fresh server and an
EMPTY cache (a temporary POSTER_GENRE_CACHE), every step timed in one run against the same run's baseline.

    python -m bench.first_touch [--dataset DIR] [--n 1200] [--port 8597] [--pause-for-warm-up]

Steps, clicked as a user would: a one-line Streamlit app's first paint (the baseline: read ratios, not
seconds); the cold Home (title shown, page run finished); Home's one click ("Explore the demo": extract and
train), beside the duration the page promises; a folder of the first N posters of DIR chosen on the Data page
and extracted with EfficientNet-Lite2, beside the CLI's rate on the same posters in another empty cache;
the `fast` preset on the Train page; the first map on the Clusters page, the mosaic of all posters after it
and the cluster cards after "Find clusters" (a screenshot of each is kept); the Grad-CAM toggle on the
Predictions page. Each step is clicked as soon as the last has ended (the warm-up, stopped while a page runs,
then has no idle second) unless ``--pause-for-warm-up``, which waits before the Clusters page until the
server's warm-up has ended (the first map on a warm server). It prints a markdown table
`| step | seconds | baseline / ratio | target |`. A step whose element is missing stops the benchmark with
its name and a screenshot (the path is printed), never a number.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _common
from bench.dashboard import _wait_done, browser, poll_pause, start_server, time_page, time_switch

SHOTS = Path(tempfile.mkdtemp(prefix="pge-first-touch-shots-"))
LITE2 = "EfficientNet-Lite2"
GRADCAM_TOGGLE = "Show a heatmap of where the model looks (about 2 s per poster and genre)"


class StepFailed(SystemExit):
    """A step could not find what a user would see: its message names the step and the screenshot."""


@contextlib.contextmanager
def step(driver, name: str):
    try:
        yield
    except StepFailed:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a step is reported with its screenshot
        shot = SHOTS / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.png"
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(shot))
        raise StepFailed(f"step '{name}' failed: {type(err).__name__}: {err}\nscreenshot: {shot}") from err


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def until(driver, started: float, seen, what: str, timeout: float = 600) -> float:
    """Seconds from ``started`` until ``seen(driver)`` is true (the result shows); then waits until the page
    run has ended and no exception block is shown."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    while time.perf_counter() - started < timeout:
        with contextlib.suppress(StaleElementReferenceException):
            if seen(driver):
                shown = time.perf_counter() - started
                _wait_done(driver, started, timeout)
                if errors := driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'):
                    raise RuntimeError(f"the page shows an exception: {errors[0].text[:400]}")
                return shown
        time.sleep(poll_pause(time.perf_counter() - started))
    raise TimeoutError(f"{what} did not show within {timeout:.0f}s on {driver.current_url}")


def click(driver, label: str) -> float:
    """Click the button, radio option or toggle whose visible text is ``label``; returns when it was clicked."""
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button, label'):
        text = element.text.strip()
        if label in (text, text.splitlines()[-1] if text else "") and element.is_displayed():
            started = time.perf_counter()
            element.click()
            time.sleep(0.05)
            return started
    raise LookupError(f"nothing labelled {label!r} on {driver.current_url}")


def has(css: str):
    from selenium.webdriver.common.by import By

    return lambda driver: bool(driver.find_elements(By.CSS_SELECTOR, css))


def contains(text: str):
    """Whether an element's own text holds ``text``: an XPath over the DOM, where reading the body's rendered
    text (a layout of the whole page) every poll took 0.6 core from the server's extraction on two cores."""
    from selenium.webdriver.common.by import By

    literal = "concat('" + "', \"'\", '".join(text.split("'")) + "', '')"
    xpath = f"//body//*[contains(text(), {literal})] | //body//p[contains(., {literal})]"  # a <p> with markup
    return lambda driver: bool(driver.find_elements(By.XPATH, xpath))


def first_seen(driver, started: float, seen: dict, timeout: float = 600) -> dict[str, float]:
    """Seconds from ``started`` until each of ``seen``'s checks first holds (polled together, so a later
    element's time is not the earlier one's wait), then ``until``'s checks of the finished run."""
    from selenium.common.exceptions import StaleElementReferenceException

    shown: dict[str, float] = {}
    while len(shown) < len(seen) and time.perf_counter() - started < timeout:
        for name, check in seen.items():
            with contextlib.suppress(StaleElementReferenceException):
                if name not in shown and check(driver):
                    shown[name] = time.perf_counter() - started
        time.sleep(poll_pause(time.perf_counter() - started))
    if missing := [name for name in seen if name not in shown]:
        raise TimeoutError(f"{', '.join(missing)} did not show within {timeout:.0f}s on {driver.current_url}")
    until(driver, started, lambda _: True, "the end of the page run", timeout)
    return shown


def screenshot(driver, xpath: str, name: str) -> Path:
    """A screenshot with the first element matching ``xpath`` scrolled into view, kept beside failed steps'."""
    from selenium.webdriver.common.by import By

    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", driver.find_element(By.XPATH, xpath))
    time.sleep(0.5)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def settle(driver) -> None:
    time.sleep(0.3)
    _wait_done(driver, time.perf_counter(), 600)


def make_folder(source: Path, n: int) -> Path:
    """The first ``n`` posters of ``source`` (labels.csv order) as a dataset folder of symbolic links."""
    root = Path(tempfile.mkdtemp(prefix="pge-first-touch-set-")) / f"first-{n}"
    (root / "posters").mkdir(parents=True)
    files = {path.stem: path for path in (source / "posters").iterdir()}
    with open(source / "labels.csv", newline="", encoding="utf-8") as read, \
            open(root / "labels.csv", "w", newline="", encoding="utf-8") as write:
        rows, out = csv.DictReader(read), csv.writer(write)
        out.writerow(["id", "title", "genres"])
        for row in rows:
            if n == 0:
                break
            if row["id"] in files:
                (root / "posters" / files[row["id"]].name).symlink_to(files[row["id"]].resolve())
                out.writerow([row["id"], row["title"], row["genres"]])
                n -= 1
    if n:
        raise SystemExit(f"{source} has {n} posters fewer than asked for")
    return root


def cli_extract(folder: Path, env: dict) -> tuple[float, float]:
    """The CLI on ``folder`` in its own empty cache: (the extraction's own seconds, the command's wall seconds)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", "extract", "--dataset", str(folder), "--backbone",
                           "efficientnet-lite2", "--weights", "imagenet"], cwd=_common.ROOT, capture_output=True,
                          text=True, env={**env, "POSTER_GENRE_CACHE": tempfile.mkdtemp(prefix="pge-cli-cache-")})
    wall = time.perf_counter() - started
    found = re.search(r"computed \d+, cached 0, failed \d+ \(([\d.]+)s\)", done.stdout)
    if done.returncode or not found:
        raise SystemExit(f"CLI extraction failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return float(found.group(1)), wall


def stop(process: subprocess.Popen) -> None:
    """Stop the server and the warm-up's child processes it started."""
    started = children(process.pid)
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    for child in started:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The process's child processes (through each of its threads)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def wait_for_warm_up(server: int, timeout: float = 300) -> float:
    """Seconds until the server has no child process (the warm-up's compilation has ended) and has used
    under 5% of a core for two seconds (its in-process warm-up too): what a user who pauses gives it."""
    started, hz = time.perf_counter(), os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz

    while time.perf_counter() - started < timeout:
        before = cpu()
        time.sleep(2)
        if not children(server) and cpu() - before < 0.1:
            return time.perf_counter() - started
    raise TimeoutError(f"the server's warm-up did not end within {timeout:.0f}s")


def first_touch(driver, url: str, folder: Path, n: int, server: int | None = None) -> tuple[list[tuple], dict]:
    """The steps in a user's order; rows of (step, seconds, target) and what the pages said. With ``server``
    (its pid), the user pauses before the Clusters page until the server's warm-up has ended."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rows, said = [], {}
    with step(driver, "cold Home"):
        started = time.perf_counter()
        driver.get(url)
        title = until(driver, started, lambda d: any("Poster Genre Explorer" in h.text
                                                     for h in d.find_elements(By.CSS_SELECTOR, "h1")),
                      "Home's title", timeout=300)
        done = _wait_done(driver, started, 300)
        rows += [("cold Home: title visible", title, "<= 2 s"), ("cold Home: page run finished", done, "<= 3 s")]
    with step(driver, "Explore the demo"):
        promise = re.search(r"\(about [^)]*\)", body(driver))
        said["promise"] = promise.group(0) if promise else "(no duration promised)"
        started = click(driver, "Explore the demo")
        seconds = until(driver, started, contains("Done: features extracted"), "the one-click result")
        rows.append((f"Home one click (extract + train); page promises {said['promise']}", seconds, "<= 20 s"))
    with step(driver, "Data page: choose the folder"):
        time_switch(driver, "Data")
        until(driver, time.perf_counter(), has(".st-key-folder_path input"), "the folder field", timeout=60)
        field = driver.find_element(By.CSS_SELECTOR, ".st-key-folder_path input")
        field.send_keys(str(folder), Keys.ENTER)
        settle(driver)
        until(driver, click(driver, "Use this folder"), contains(f"Active dataset: {folder}"), "the folder's activation")
        if f"{n:,}" not in body(driver):
            raise RuntimeError(f"the Data page does not show {n:,} usable posters")
    with step(driver, "Data page: EfficientNet-Lite2 and Extract features"):
        click(driver, LITE2)
        settle(driver)
        started = click(driver, "Extract features")
        seconds = until(driver, started, contains("Last extraction took"), "the extraction's result")
        said["page_extract_s"] = float(re.search(r"Last extraction took ([\d.]+) s", body(driver)).group(1))
        if f"{n:,} / {n:,}" not in body(driver):
            raise RuntimeError(f"the page does not show features for all {n:,} posters after extracting")
        rows.append((f"Data: extract {n:,} posters, {LITE2} (click to result)", seconds, "<= 15 s"))
    with step(driver, "Train page: fast preset"):
        time_switch(driver, "Train")
        click(driver, "fast")
        settle(driver)
        seconds = until(driver, click(driver, "Train"), has(".st-key-headline"), "the headline result")
        rows.append(("Train: `fast` preset, click to headline", seconds, "held (~3 s)"))
    if server is not None:
        said["warm_up_wait"] = wait_for_warm_up(server)
    with step(driver, "Clusters page: first map, mosaic and cluster cards"):
        time_switch(driver, "Clusters")
        started = click(driver, "Compute map")
        shown = first_seen(driver, started, {"map": has(".st-key-umap_chart .main-svg"),
                                             "mosaic": has(".st-key-mosaic_chart .main-svg")})
        rows.append(("Clusters: first map, click to figure", shown["map"], "-"))
        rows.append(("Clusters: mosaic of all posters, after the map", shown["mosaic"] - shown["map"], "<= 2 s"))
        said["mosaic_shot"] = screenshot(driver, '//*[contains(@class, "st-key-mosaic_chart")]',
                                         "clusters-mosaic-after-extraction")
        seconds = until(driver, click(driver, "Find clusters"), contains("Cluster 0 · "), "the cluster cards")
        rows.append(("Clusters: cluster cards with descriptors, click to cards", seconds, "<= 2 s"))
        said["cards_shot"] = screenshot(driver, '//p[contains(., "Cluster 0 · ")]', "clusters-cards-after-extraction")
    with step(driver, "Predictions page: Grad-CAM toggle"):
        time_switch(driver, "Predictions")
        section = '//*[contains(text(), "Where the model looks")]/ancestor::*[@data-testid="stVerticalBlock"][1]'
        seconds = until(driver, click(driver, GRADCAM_TOGGLE), lambda d: contains("gradients at")(d) and any(
            s.find_elements(By.CSS_SELECTOR, "img") for s in d.find_elements(By.XPATH, section)), "the heatmap")
        rows.append(("Predictions: Grad-CAM toggle, one poster", seconds, "<= 2 s"))
    return rows, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=_common.DEV_SET, help="folder with posters/ and labels.csv")
    parser.add_argument("--n", type=int, default=1200, help="posters in the folder chosen on the Data page")
    parser.add_argument("--port", type=int, default=8597)
    parser.add_argument("--pause-for-warm-up", action="store_true",
                        help="before the Clusters page, wait until the server's warm-up has ended (the first map "
                             "on a warm server); by default every step is clicked as soon as the last has ended")
    args = parser.parse_args()
    _common.print_machine()
    folder = make_folder(args.dataset.resolve(), args.n)
    cache = Path(tempfile.mkdtemp(prefix="pge-first-touch-cache-"))
    env = {name: value for name, value in os.environ.items() if name != "POSTER_GENRE_WEIGHTS"}
    env.update(POSTER_GENRE_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2")
    print(f"empty cache {cache}; dataset folder {folder}; screenshots of failed steps go to {SHOTS}", flush=True)

    baseline_script = Path(tempfile.mkdtemp(prefix="pge-baseline-")) / "baseline_app.py"
    baseline_script.write_text('import streamlit as st\nst.title("Baseline")\nst.write("hello")\n')
    driver = browser()
    try:
        base_server = start_server(baseline_script, args.port + 1, env)
        try:
            baseline = min(time_page(driver, f"http://127.0.0.1:{args.port + 1}/") for _ in range(3))
        finally:
            stop(base_server)
        server = start_server(_common.ROOT / "app.py", args.port, env)
        try:
            rows, said = first_touch(driver, f"http://127.0.0.1:{args.port}/", folder, args.n,
                                     server.pid if args.pause_for_warm_up else None)
        finally:
            stop(server)
    finally:
        driver.quit()
    cli_seconds, cli_wall = cli_extract(folder, env)

    page_seconds = next(seconds for name, seconds, _ in rows if name.startswith("Data: extract"))
    print("\n| step | seconds | baseline / ratio | target |\n|---|---:|---:|---|")
    print(f"| baseline: one-line app, first paint | {baseline:.2f} | 1.0x | - |")
    for name, seconds, target in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:.1f}x | {target} |")
    print(f"| CLI extract, same {args.n:,} posters, own cache (its measure; wall {cli_wall:.1f} s) | "
          f"{cli_seconds:.2f} | {cli_seconds / baseline:.1f}x | - |")
    print(f"| page rate / CLI rate ({args.n / page_seconds:.0f} vs {args.n / cli_seconds:.0f} posters/s; the page's "
          f"own measure {said['page_extract_s']:.1f} s) | - | {cli_seconds / page_seconds:.2f}x | >= 0.9x |")
    print(f"\nScreenshots of the Clusters page after extraction: {said['mosaic_shot']}, {said['cards_shot']}")
    if "warm_up_wait" in said:
        print(f"Before the Clusters page the user paused {said['warm_up_wait']:.1f} s, until the warm-up had ended.")
    print(f"Home promises {said['promise']} for its one click; load while running: {os.getloadavg()}")


if __name__ == "__main__":
    main()
