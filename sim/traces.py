"""Request traces: the Azure LLM inference traces shipped in sim/traces/, or any CSV of that schema.

A trace is a time-sorted set of arrivals with token counts, offsets in seconds from the first request.
The shipped files are CC-BY 4.0 (Patel et al., "Splitwise", ISCA 2024); see sim/traces/README.md.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

TRACES_DIR = Path(__file__).parent / "traces"
# Short names accepted wherever a trace path is: `--trace code` is the bursty one, `conv` the steady one.
NAMED_TRACES = {
    "code": "AzureLLMInferenceTrace_code.csv",
    "conv": "AzureLLMInferenceTrace_conv.csv",
}


class TraceError(ValueError):
    """A trace file that cannot be read as arrivals."""


@dataclass(frozen=True)
class Trace:
    """Arrivals of one request stream. Arrays are aligned; `arrival_s` is sorted and starts at 0."""

    name: str
    arrival_s: npt.NDArray[np.float64]
    context_tokens: npt.NDArray[np.int64]
    generated_tokens: npt.NDArray[np.int64]

    @property
    def requests(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if self.arrival_s.size else 0.0

    def gaps_over(self, seconds: float) -> int:
        """How many idle gaps between consecutive arrivals exceed `seconds`."""
        return int(np.count_nonzero(np.diff(self.arrival_s) > seconds))

    def window(self, start_s: float, end_s: float) -> Trace:
        """The arrivals in [start_s, end_s), re-based to start at 0."""
        keep = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        return Trace(
            f"{self.name}[{start_s:g}:{end_s:g}]",
            self.arrival_s[keep] - start_s,
            self.context_tokens[keep],
            self.generated_tokens[keep],
        )

    def time_scaled(self, factor: float) -> Trace:
        """Stretch (factor > 1) or compress (< 1) time; the same requests over factor x the span."""
        if not 0.0 < factor < float("inf"):
            # A negative factor puts arrivals before the clock's start and the engine never ends.
            raise ValueError(f"time scale {factor}: must be > 0")
        return Trace(f"{self.name}x{factor:g}", self.arrival_s * factor, self.context_tokens,
                     self.generated_tokens)


def resolve(path_or_name: str | Path) -> Path:
    """A shipped trace by short name ("code", "conv") or file name, else a path on disk."""
    text = str(path_or_name)
    if text in NAMED_TRACES:
        return TRACES_DIR / NAMED_TRACES[text]
    shipped = TRACES_DIR / text
    if "/" not in text and shipped.is_file():
        return shipped
    return Path(text)


def _parse_timestamp(text: str) -> float:
    # The Azure files carry 7 fractional digits (100 ns); datetime takes at most 6.
    head, _, frac = text.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_trace(path_or_name: str | Path) -> Trace:
    """Read a CSV with TIMESTAMP, ContextTokens, GeneratedTokens (a plain seconds column also works)."""
    path = resolve(path_or_name)
    if not path.is_file():
        raise TraceError(f"trace {str(path_or_name)!r}: no such file (named traces: {sorted(NAMED_TRACES)})")
    times: list[float] = []
    ctx: list[int] = []
    gen: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        time_field = next((f for f in ("TIMESTAMP", "timestamp", "arrival_s", "time_s") if f in fields), None)
        if time_field is None:
            raise TraceError(f"trace {path}: needs a TIMESTAMP or arrival_s column, has {fields}")
        numeric_time = time_field in ("arrival_s", "time_s")
        for line, row in enumerate(reader, start=2):
            try:
                stamp = row[time_field]
                times.append(float(stamp) if numeric_time else _parse_timestamp(stamp))
                ctx.append(int(row.get("ContextTokens") or 0))
                gen.append(int(row.get("GeneratedTokens") or 0))
            except (TypeError, ValueError) as exc:
                raise TraceError(f"trace {path}:{line}: {exc}") from exc
    if not times:
        raise TraceError(f"trace {path}: no requests")
    arrival = np.asarray(times, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(arrival))
    if bad.size:  # a NaN sorts anywhere and an infinite time never comes: the engine could not end
        raise TraceError(f"trace {path}:{int(bad[0]) + 2}: arrival time {times[int(bad[0])]} is not finite")
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order[0]]
    log.debug("loaded trace %s: %d requests over %.0f s", path.name, arrival.size, arrival[-1])
    return Trace(
        path.stem,
        arrival,
        np.asarray(ctx, dtype=np.int64)[order],
        np.asarray(gen, dtype=np.int64)[order],
    )
