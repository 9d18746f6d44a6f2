"""Progress for people (a status line on a terminal) and for logs (one summary line)."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(slots=True)
class Progress:
    """Byte counters for one fetch. `resumed` bytes were already on disk and do not count for rate."""

    total_bytes: int = 0
    done_bytes: int = 0
    resumed_bytes: int = 0
    started_s: float = field(default_factory=time.monotonic)

    def add(self, n: int, *, resumed: bool = False) -> None:
        self.done_bytes += n
        if resumed:
            self.resumed_bytes += n

    def line(self, now_s: float) -> str:
        elapsed = max(now_s - self.started_s, 1e-6)
        rate = (self.done_bytes - self.resumed_bytes) / elapsed
        left = self.total_bytes - self.done_bytes
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return (
            f"{human_bytes(self.done_bytes)} / {human_bytes(self.total_bytes)} ({pct:.0f}%) "
            f"{human_bytes(rate)}/s ETA {eta}"
        )


async def report_progress(progress: Progress, stream: TextIO | None = None, interval_s: float = 0.5) -> None:
    """Redraw a status line on `stream` until cancelled; silent unless it is a terminal."""
    out = stream or sys.stderr
    if not out.isatty():
        return
    try:
        while True:
            await asyncio.sleep(interval_s)
            out.write("\r\x1b[K" + progress.line(time.monotonic()))
            out.flush()
    finally:
        out.write("\r\x1b[K")
        out.flush()
