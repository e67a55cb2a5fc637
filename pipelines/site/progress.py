"""Progress lines on stderr for the long parts (reading, scoring, resampling): plain lines, not a
bar, so a log file or a CI job shows them too."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done, self.started = 0, time.monotonic()
        self.last = self.started

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            print(f"{self.what}: {self.done}/{self.total} ({now - self.started:.0f} s)", file=sys.stderr, flush=True)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
