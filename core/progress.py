"""One progress type for every long job, and the command line's progress line that shows it.

Long jobs (feature extraction, demo generation, downloads) call a ``ProgressFn`` with a frozen
``Progress``; a ``ProgressTracker`` turns their counts into that, with the rate and time left. The
CLI renders it with ``ProgressLine`` (stderr), the pages with one progress-bar helper.

On a terminal the line updates in place; elsewhere (CI logs, pipes) a new line is written every few
seconds and at the end, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

MIN_RATE_SECONDS = 0.2
"""A rate measured over less time than this is noise; none is shown until then."""


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` items of ``phase`` (e.g. ``posters``), ``failed`` of them unusable."""

    done: int
    total: int
    phase: str = ""
    message: str = ""
    failed: int = 0
    per_second: float | None = None
    seconds_left: float | None = None

    @property
    def fraction(self) -> float:
        """Share done, in [0, 1]; a job with nothing to do is complete."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 1.0

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def line(self) -> str:
        """``[12/40] 3.1 posters/s, 9s left, 1 failed — page 2``."""
        parts = [f"[{self.done}/{self.total}]"]
        if self.per_second is not None:
            unit = f" {self.phase}/s" if self.phase else "/s"
            parts.append(f" {self.per_second:.1f}{unit}")
        elif self.phase:
            parts.append(f" {self.phase}")
        if self.seconds_left is not None and not self.finished:
            parts.append(f", {self.seconds_left:.0f}s left")
        if self.failed:
            parts.append(f", {self.failed} failed")
        if self.message:
            parts.append(f" — {self.message}")
        return "".join(parts)


ProgressFn = Callable[[Progress], None]


class ProgressTracker:
    """Counts of one phase → ``Progress`` with the rate since the start (or the last ``rebase``).

    Work that costs no time, such as posters already on disk, is counted before ``rebase`` so it
    neither inflates the rate nor shortens the time left.
    """

    def __init__(self, total: int, phase: str = "", report: ProgressFn | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.phase, self.report = total, phase, report
        self._clock = clock
        self.done = self.failed = 0
        self.rebase()

    def rebase(self) -> None:
        self._base_done, self._base_time = self.done, self._clock()

    def update(self, done: int, *, failed: int | None = None, message: str = "") -> Progress:
        """Record ``done`` items (``failed`` of them unusable so far) and report the progress."""
        self.done = done
        self.failed = self.failed if failed is None else failed
        elapsed = self._clock() - self._base_time
        rate = (done - self._base_done) / elapsed if elapsed >= MIN_RATE_SECONDS else None
        left = (self.total - done) / rate if rate else None
        progress = Progress(done, self.total, self.phase, message, self.failed, rate, left)
        if self.report is not None:
            self.report(progress)
        return progress

    def advance(self, *, failed: bool = False, message: str = "") -> Progress:
        return self.update(self.done + 1, failed=self.failed + failed, message=message)


class ProgressLine:
    """A ``ProgressFn`` that writes ``label [done/total] ...`` to stderr; ``show`` writes any text."""

    def __init__(self, label: str = "", *, every: float = 2.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if not self.tty else 0.1
        self._shown: float | None = None
        self._width = 0
        self._phase: tuple[str, int] | None = None

    def __call__(self, progress: Progress) -> None:
        phase = (progress.phase, progress.total)
        if phase != self._phase:
            self.close()
            self._phase = phase
            self._shown = None
        self.show(progress.line(), final=progress.finished)

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and self._shown is not None and now - self._shown < self.every:
            return
        self._shown = now
        line = f"{self.label} {text}".strip()
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
