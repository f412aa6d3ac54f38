"""The command line's progress line on stderr.

On a terminal one line updates in place; elsewhere (CI logs, pipes) a new line is written every few
seconds and at the end, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, label: str = "", *, every: float = 2.0, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if not self.tty else 0.1
        self._shown = 0.0
        self._width = 0
        self._phase: tuple[str, int] | None = None
        self._started = 0.0
        self._first = 0

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._shown < self.every:
            return
        self._shown = now
        line = f"{self.label} {text}".strip()
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __call__(self, done: int, total: int, message: str) -> None:
        """``progress(done, total, message)`` as the downloaders report it, with a rate per phase."""
        now = time.monotonic()
        phase = (message.split(" ", 1)[0], total)
        if phase != self._phase:
            self.close()
            self._phase, self._started, self._first = phase, now, done
        elapsed = now - self._started
        rate = f"{(done - self._first) / elapsed:5.1f}/s" if elapsed >= 0.2 else "  ---/s"
        self.show(f"[{done:>{len(str(total))}}/{total}] {rate}  {message}", final=done >= total)

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
