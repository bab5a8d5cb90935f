"""A one-line progress bar on stderr: rows done of total, rows/s, ETA (redrawn at most 4x/s)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, done: int = 0, stream=None):
        self.total, self.done, self.stream = total, done, stream or sys.stderr
        self.start_done, self.start = done, time.perf_counter()
        self.last_draw = 0.0

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self.last_draw >= 0.25 or self.done >= self.total:
            self.last_draw = now
            self.draw(now)

    def rate(self, now: float | None = None) -> float:
        elapsed = (now or time.perf_counter()) - self.start
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def draw(self, now: float) -> None:
        rate = self.rate(now)
        share = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * share)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        line = (f"\r[{bar:<24}] {self.done:,}/{self.total:,} rows  {rate:,.0f} rows/s  "
                f"ETA {_clock(eta)}")
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.done < self.total or not self.last_draw:  # advance() drew the final state already
            self.draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: no rate yet
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
