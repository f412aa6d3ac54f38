"""The dashboard in a real browser: `streamlit run app.py` on a free loopback port, every page opened
in headless Chromium.

Locks in: each page finishes running without an exception block, shows its title and app.py's
navigation and sidebar (even when the first request of a fresh server is a deep link), and the
random-weights warning appears where features are shown; one session can browse while another
trains; "Run sweep" on the Train page trains every combination and draws its chart; the Clusters page
finds clusters and draws the poster mosaic, and the Predictions page shows a Grad-CAM heatmap; on a
fresh server with nothing extracted, one click on Home extracts and trains, and the other pages are
then populated; on a fresh server and an empty cache, Home and then Data finish without an exception
while the warm-up (started after the first page) is still compiling in its child process. A screenshot of each page and step is kept in
``artifacts/screenshots/`` (override with ARTIFACTS_DIR). Needs Debian's chromium and
chromium-driver (`.ci/run` installs them); outside CI the test skips, saying so, when they are absent.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"train": "Train", "": "Poster Genre Explorer", "data": "Data", "clusters": "Clusters",
         "predictions": "Predictions"}
"""Train comes first: on a fresh server a deep link must still go through app.py's router."""
NAVIGATION = ["Home", "Data", "Train", "Clusters", "Predictions"]


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have installed them")
        pytest.skip(message)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_features):
    """A real Streamlit server on the tiny dataset with one saved run."""
    from core.cache import atomic_write_json, cache_root
    from core.model.experiment import run_experiment
    from core.model.runs import save_run
    from core.model.config import TrainConfig

    dataset, features = tiny_features
    result = run_experiment(dataset, features, TrainConfig(feature_view="avg", hidden=(16,), epochs=2))
    save_run(result)
    atomic_write_json(cache_root() / "ui_settings.json",
                      {"dataset": str(dataset.root), "weights": "none", "precision": "auto"})
    yield from _streamlit(dict(os.environ))


SERVERS: dict[str, subprocess.Popen] = {}
"""Each running server's process by its URL."""


def _streamlit(env: dict[str, str]):
    """``streamlit run app.py`` on a free loopback port with ``env``; yields its URL, then stops it
    (and the warm-up's child process, if one is still compiling)."""
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="streamlit-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for_port(port, process, Path(log.name))
        SERVERS[f"http://127.0.0.1:{port}"] = process
        yield f"http://127.0.0.1:{port}"
    finally:
        children = _children(process.pid)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The child processes of every thread of ``pid`` (the warm-up thread starts its own)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"streamlit did not listen on port {port} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    driver.quit()


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1800",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    return driver


def _wait_until_done(driver, timeout: float = 150) -> None:
    """Wait until the page has a title and Streamlit's 'running' indicator has stayed away."""

    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        titled = driver.find_elements(By.CSS_SELECTOR, "h1")
        quiet = quiet + 1 if titled and not _running(driver) else 0
        if quiet >= 4:
            return
        time.sleep(0.5)
    raise AssertionError(f"page {driver.current_url} did not finish running within {timeout}s")


def _running(driver) -> bool:
    """Streamlit's status widget shows 'Running…' and a Stop button while the script runs."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return any(word in element.text
                   for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
                   for word in ("Running", "Stop"))
    except StaleElementReferenceException:
        return True


def _artifacts() -> Path:
    folder = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "artifacts")) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("path", list(PAGES))
def test_page_renders_in_chromium_without_exception(server, browser, path):

    browser.get(f"{server}/{path}")
    _wait_until_done(browser)
    browser.save_screenshot(str(_artifacts() / f"{path or 'home'}.png"))
    exceptions = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not exceptions, f"/{path} shows an exception: {exceptions[0].text[:500]}"
    heading = browser.find_element(By.CSS_SELECTOR, "h1").text
    assert PAGES[path] in heading
    links = [link.text.splitlines()[-1] for link in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] a')]
    assert links == NAVIGATION, f"/{path} is not routed through app.py: the sidebar lists {links}"
    assert "Active dataset" in browser.find_element(By.TAG_NAME, "body").text
    if path in ("train", "clusters", "predictions"):
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "RANDOM" in body, f"/{path} shows features from random weights without the warning"


def test_one_session_trains_while_another_browses_then_stops(server, browser):
    """Two sessions at once: a long training in one does not block the other, and Stop ends it
    without saving a run."""
    from selenium.webdriver.common.keys import Keys

    from core.model.runs import list_runs

    before = len(list_runs())
    browser.get(f"{server}/train")
    _wait_until_done(browser)
    _choose_tutorial_preset(browser)
    epochs = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Epochs"]')
    epochs.send_keys(Keys.CONTROL, "a")
    epochs.send_keys("5000", Keys.ENTER)
    _wait_until_done(browser)
    _button(browser, "Train").click()
    other = _chromium()
    try:
        deadline = time.monotonic() + 60
        while not _running(browser) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running(browser), "training did not start"
        for path in ("data", "predictions"):
            other.get(f"{server}/{path}")
            _wait_until_done(other)
            assert not other.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
        assert _running(browser), "the other session only finished after training ended"
    finally:
        other.quit()
    _button(browser, "Stop").click()
    _wait_until_done(browser, timeout=120)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "stopped" in body and "not saved" in body
    assert len(list_runs()) == before


def _choose_tutorial_preset(driver) -> None:
    """A new session opens Train on the fast preset (the kernel head: no epochs, nothing to stop)."""
    driver.find_element(By.XPATH, '//label[normalize-space()="tutorial"]').click()
    _wait_until_done(driver)


def _button(driver, label: str):
    return next(button for button in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button')
                if button.text.strip() == label)


def _click_text(driver, label: str) -> None:
    """Click a button (or a toggle's label) by its visible text."""
    for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button, label'):
        if element.text.strip() == label:
            element.click()
            return
    raise AssertionError(f"nothing labelled {label!r} on {driver.current_url}")


def _set_number(driver, aria_label: str, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, f'input[aria-label="{aria_label}"]')
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.ENTER)
    _wait_until_done(driver)


def _body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def test_run_sweep_trains_each_value_and_draws_the_chart(server, browser):
    from selenium.webdriver.common.keys import Keys

    from core.model.runs import list_runs

    browser.get(f"{server}/train")
    _wait_until_done(browser)
    _choose_tutorial_preset(browser)
    browser.find_element(By.XPATH, '//label[normalize-space()="avg"]').click()
    _wait_until_done(browser)
    _set_number(browser, "Epochs", "2")
    picker = browser.find_element(By.CSS_SELECTOR, ".st-key-sweep_params input")
    picker.send_keys("Dropout after each hidden layer", Keys.ENTER)
    _wait_until_done(browser)
    values = browser.find_element(By.CSS_SELECTOR, ".st-key-sweep_values_dropout input")
    values.send_keys(Keys.CONTROL, "a")
    values.send_keys("0,0.5", Keys.ENTER)
    _wait_until_done(browser)
    before = len(list_runs())
    _click_text(browser, "Run sweep")
    _wait_until_done(browser, timeout=240)
    charts = browser.find_elements(By.CSS_SELECTOR, ".st-key-sweep_chart")
    browser.save_screenshot(str(_artifacts() / "train-sweep.png"))
    assert charts and "frequency prior" in charts[0].text
    assert "done: 2 runs" in _body(browser)
    assert len(list_runs()) >= before + 1


def test_clusters_page_finds_clusters_and_draws_the_mosaic(server, browser):
    browser.get(f"{server}/clusters")
    _wait_until_done(browser)
    _click_text(browser, "Compute map")
    _wait_until_done(browser, timeout=240)
    _click_text(browser, "Find clusters")
    _wait_until_done(browser, timeout=120)
    browser.save_screenshot(str(_artifacts() / "clusters-explained.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert browser.find_elements(By.CSS_SELECTOR, ".st-key-mosaic_chart"), "no poster mosaic"
    body = _body(browser)
    assert "Poster mosaic" in body and "Clusters that describe themselves" in body
    assert "noise" in body


def test_predictions_page_shows_a_gradcam_heatmap(server, browser):
    browser.get(f"{server}/predictions")
    _wait_until_done(browser)
    _click_text(browser, "Show a heatmap of where the model looks (about 2 s per poster and genre)")
    _wait_until_done(browser, timeout=240)
    browser.save_screenshot(str(_artifacts() / "predictions-gradcam.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    section = browser.find_element(By.XPATH, '//*[contains(text(), "Where the model looks")]/ancestor::*[@data-testid="stVerticalBlock"][1]')
    assert section.find_elements(By.CSS_SELECTOR, "img"), "no heatmap image"


@pytest.fixture
def fresh_server(tmp_path_factory):
    """A server with an empty cache whose active dataset has nothing extracted and no run."""
    from core.cache import atomic_write_json
    from core.data.demo import DemoConfig, make_demo_dataset

    cache = tmp_path_factory.mktemp("fresh-cache")
    dataset = make_demo_dataset(tmp_path_factory.mktemp("fresh") / "set", DemoConfig(n_posters=40, seed=11))
    atomic_write_json(cache / "ui_settings.json", {"dataset": str(dataset), "weights": "none", "precision": "auto"})
    yield from _streamlit({**os.environ, "POSTER_GENRE_CACHE": str(cache)})


def test_one_click_on_home_extracts_trains_and_populates_every_page(fresh_server, browser):
    browser.get(f"{fresh_server}/train")
    _wait_until_done(browser)
    assert "extract" in _body(browser).lower(), "a fresh server should have no features yet"
    browser.get(fresh_server)
    _wait_until_done(browser)
    buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stButton"] button')
               if "Explore the demo" in b.text]
    assert buttons, f"no one-click button on Home: {_body(browser)[:800]}"
    button = buttons[0]
    button.click()
    _wait_until_done(browser, timeout=300)
    browser.save_screenshot(str(_artifacts() / "home-after-one-click.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    for path, expected in (("train", "Precision@3"), ("predictions", "Precision@3"), ("clusters", "Compute map")):
        browser.get(f"{fresh_server}/{path}")
        _wait_until_done(browser)
        body = _body(browser)
        assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), path
        assert expected in body, f"/{path} is not populated after the one-click start"


@pytest.fixture
def cold_server(tmp_path_factory):
    """A fresh server on an empty cache (the demo not generated, numba's cache empty), warm-up enabled."""
    cache = tmp_path_factory.mktemp("cold-cache")
    yield from _streamlit({**os.environ, "POSTER_GENRE_CACHE": str(cache), "POSTER_GENRE_WARM_UP": "1"})


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the warm-up's child process in /proc")
def test_cold_home_finishes_without_exception_while_the_warm_up_runs(cold_server, browser):
    browser.get(cold_server)
    _wait_until_done(browser)
    browser.save_screenshot(str(_artifacts() / "home-cold.png"))
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), _body(browser)[:800]
    assert "Explore the demo" in _body(browser)
    deadline = time.monotonic() + 20
    while not _children(SERVERS[cold_server].pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children(SERVERS[cold_server].pid), "the warm-up did not start after the first page"
    browser.get(f"{cold_server}/data")
    _wait_until_done(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), _body(browser)[:800]
