"""The server's background warm-up (pages._shared) never competes with a page run.

Behaviours locked in:
- the warm-up does no work while the first page runs; it is started when that run has ended (a
  rerouting rerun included), its first step sees no run in progress, and a second run starts no other;
- ``wait_until_no_page_runs`` blocks while a run is in progress and returns once none has been for
  the settle time;
- ``warm_up_at_low_priority`` starts a child process that lowers itself to the lowest CPU priority
  (nice 19) before compiling (Linux);
- that child is stopped while any page runs and continued once none does (POSIX), and ends with the
  process that started it, stopped or not (Linux).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import pages._shared as shared

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_warm_up_yet(monkeypatch):
    """A process where the warm-up has not started, enabled, with its steps replaced by a recorder."""
    seen: list[int] = []
    started = threading.Event()

    def recorder() -> None:  # the first thing the real warm-up does is wait, as here
        shared.wait_until_no_page_runs(settle=0.2)
        seen.append(shared._runs_in_progress)
        started.set()

    monkeypatch.setattr(shared, "_warm_up_thread", None)
    monkeypatch.setattr(shared, "_warm_up", recorder)
    monkeypatch.setenv(shared.WARM_UP_ENV, "1")
    yield seen, started
    thread = shared._warm_up_thread
    if thread is not None and thread.ident is not None:
        thread.join(timeout=10)


def test_warm_up_starts_after_the_first_page_run_not_before(no_warm_up_yet, monkeypatch, tiny_features):
    seen, started = no_warm_up_yet
    during_run: list[object] = []
    active_dataset = shared.active_dataset

    def watched_active_dataset():
        during_run.append((len(seen), shared._runs_in_progress))
        return active_dataset()

    monkeypatch.setattr(shared, "active_dataset", watched_active_dataset)
    dataset, _ = tiny_features
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["settings"] = {"dataset": str(dataset.root), "weights": "none", "precision": "auto"}
    at.run()
    assert not at.exception
    assert during_run == [(0, 1)], "the warm-up worked while Home was running"
    assert started.wait(10), "the warm-up did not start after the first run"
    assert seen == [0]
    thread = shared._warm_up_thread
    at.run()
    assert shared._warm_up_thread is thread, "a second run started a second warm-up"


def test_wait_until_no_page_runs_blocks_while_a_run_is_in_progress(no_warm_up_yet):
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (shared.wait_until_no_page_runs(settle=0.1), returned.set()),
                              daemon=True)
    with shared.page_run():
        waiter.start()
        assert not returned.wait(0.5), "returned while a page was running"
    ended = time.monotonic()
    assert returned.wait(5)
    assert time.monotonic() - ended >= 0.1, "returned before the settle time"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the child's priority from /proc")
def test_compilation_child_runs_at_the_lowest_priority():
    from core.analysis.maps import warm_up_at_low_priority

    child = warm_up_at_low_priority()
    try:
        deadline, nice = time.monotonic() + 30, None
        while time.monotonic() < deadline and child.poll() is None:
            nice = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            if nice == 19:
                break
            time.sleep(0.05)
        assert nice == 19
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the child's state from /proc")
def test_the_compiling_child_is_stopped_while_a_page_runs(monkeypatch):
    import subprocess
    import sys

    def reaches(child, expected: str) -> bool:
        """Whether the child's state becomes ``expected`` within 5 s (a signal is delivered asynchronously)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            value = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if ("stopped" if value in "Tt" else "running") == expected:
                return True
            time.sleep(0.02)
        return False

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(shared, "_warm_up_child", child)
    try:
        assert reaches(child, "running")
        with shared.page_run():
            assert reaches(child, "stopped")
            with shared.page_run():  # a second session's run
                pass
            time.sleep(0.2)
            assert reaches(child, "stopped"), "continued while a page still ran"
        assert reaches(child, "running")
    finally:
        child.kill()
        child.wait()
    with shared.page_run():  # a child that has ended is left alone
        pass


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux: reads the child's state from /proc")
def test_a_stopped_compiling_child_ends_with_the_server_that_started_it():
    import subprocess
    import sys

    server = ("import os, signal, time\n"
              "from core.analysis.maps import warm_up_at_low_priority\n"
              "child = warm_up_at_low_priority()\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(3)\n"  # the child has asked to die with its parent by now
              "os.kill(child.pid, signal.SIGSTOP)\n"
              "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", server], cwd=ROOT, capture_output=True, text=True, timeout=60)
    pid = int(done.stdout.split()[0])
    deadline, state = time.monotonic() + 10, "T"
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z", "X"):
            break
        time.sleep(0.1)
    assert state in ("gone", "Z", "X"), f"the child outlived its server (state {state})"
