"""core.progress: one progress type, its tracker and the command line's progress line.

Locks in: ``fraction`` is clipped and 1 for empty jobs; ``line()`` shows counts, rate with the
phase as unit, time left, failures and the message; the tracker reports no rate before
``MIN_RATE_SECONDS``, then the rate since the start or the last ``rebase`` and the time left;
``ProgressLine`` writes the label and line, throttles off a terminal but always writes the end.
"""
from __future__ import annotations

import io

import pytest

from core.progress import MIN_RATE_SECONDS, Progress, ProgressLine, ProgressTracker


def test_fraction_is_clipped_and_complete_for_empty_jobs():
    assert Progress(3, 12).fraction == 0.25
    assert Progress(0, 0).fraction == 1.0 and Progress(15, 12).fraction == 1.0


def test_line_shows_counts_rate_time_left_failures_and_message():
    line = Progress(12, 40, "posters", "page 2", failed=1, per_second=3.14, seconds_left=8.9).line()
    assert line == "[12/40] 3.1 posters/s, 9s left, 1 failed — page 2"
    assert Progress(40, 40, "posters", per_second=2.0, seconds_left=0.0).line() == "[40/40] 2.0 posters/s"
    assert Progress(1, 5, "movies").line() == "[1/5] movies"


def test_tracker_computes_rate_and_time_left_since_the_last_rebase():
    now = [10.0]
    seen: list[Progress] = []
    tracker = ProgressTracker(20, "posters", seen.append, clock=lambda: now[0])
    tracker.update(5)
    assert seen[-1].per_second is None and seen[-1].seconds_left is None
    tracker.rebase()
    now[0] += 2.0
    tracker.update(9, failed=1)
    assert seen[-1].per_second == pytest.approx(2.0) and seen[-1].seconds_left == pytest.approx(5.5)
    now[0] += MIN_RATE_SECONDS
    progress = tracker.advance(failed=True, message="x")
    assert (progress.done, progress.failed, progress.message) == (10, 2, "x")


def test_progress_line_throttles_but_always_writes_the_end():
    stream = io.StringIO()
    line = ProgressLine("extracting", every=60, stream=stream)
    for done in range(1, 6):
        line(Progress(done, 5, "posters"))
    assert stream.getvalue().splitlines() == ["extracting [1/5] posters", "extracting [5/5] posters"]
