"""The valid range of every numeric input of `zeroserve sim run|sweep`, checked before anything runs.

A value out of range used to reach numpy (a traceback), a loop that never ends (negative time), or a
report of nonsense (time compressed to nothing). Each problem becomes one line naming the flag, the
value and the rule, as `zeroserve validate` does for a spec (`spec.scaling.target = -3, must be > 0`),
and all of them are reported at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sim.traces import Trace


class InputError(ValueError):
    """Bad command-line input: one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of finite numbers."""

    low: float
    high: float = math.inf
    low_open: bool = False  # low itself is excluded
    integer: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def rule(self, value: float) -> str:
        kind = "a finite number " if not math.isfinite(value) else ""
        if self.high < math.inf:
            return f"must be {kind}in [{self.low:g}, {self.high:g}]"
        return f"must be {kind}{'>' if self.low_open else '>='} {self.low:g}"


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
FRACTION = Range(0.0, 1.0)

# argparse dest -> (flag, range). Checked whether or not the workload uses the flag: a value that is
# wrong is wrong, and a user who sets it expects it to mean something.
FLAGS: dict[str, tuple[str, Range]] = {
    "time_scale": ("--time-scale", POSITIVE),
    "models": ("--models", Range(1.0, integer=True)),
    "zipf": ("--zipf", NON_NEGATIVE),  # 0: every model equally popular
    "rate": ("--rate", POSITIVE),
    "duration_s": ("--duration-s", POSITIVE),
    "on_s": ("--on-s", POSITIVE),
    "off_s": ("--off-s", NON_NEGATIVE),  # 0: always on
    "seed": ("--seed", Range(0.0, integer=True)),  # numpy's generators take no negative seed
    "load_s": ("--load-s", NON_NEGATIVE),
    "schedule_s": ("--schedule-s", NON_NEGATIVE),
    "artifact_gb": ("--artifact-gb", NON_NEGATIVE),
    "fetch_gb_per_s": ("--fetch-gb-per-s", POSITIVE),
    "cache_hit": ("--cache-hit", FRACTION),
    "jitter": ("--jitter", FRACTION),  # +/- 100 % at most: a cold start is never negative
    "service_s": ("--service-s", NON_NEGATIVE),
    "prefill_tps": ("--prefill-tps", NON_NEGATIVE),  # 0: prefill not modelled
    "decode_tps": ("--decode-tps", NON_NEGATIVE),  # 0: decode not modelled
}

# `--param sim.<key>` (sim.scenario.costs_from_spec's keywords) -> range, as the flag they override.
COSTS: dict[str, Range] = {
    "load_s": NON_NEGATIVE,
    "schedule_s": NON_NEGATIVE,
    "artifact_bytes": NON_NEGATIVE,
    "fetch_bytes_per_s": POSITIVE,
    "cache_hit_ratio": FRACTION,
    "jitter_fraction": FRACTION,
    "service_s": NON_NEGATIVE,
    "prefill_tokens_per_s": NON_NEGATIVE,
    "decode_tokens_per_s": NON_NEGATIVE,
}

# Synthetic workloads hold every request in memory (about 60 bytes each in the workload and the run):
# past this many the process runs out of memory long before a useful answer.
MAX_REQUESTS = 100_000_000

WINDOW_RULE = "must be START:END in seconds with 0 <= START < END (END may be left out)"


def parse_window(text: str) -> tuple[float, float]:
    """`START:END` -> (start, end); `START:` runs to the trace's end. ValueError when malformed."""
    start_text, sep, end_text = text.partition(":")
    if not sep:
        raise ValueError(text)
    start = float(start_text) if start_text.strip() else 0.0
    end = float(end_text) if end_text.strip() else math.inf
    if not (math.isfinite(start) and 0.0 <= start < end):
        raise ValueError(text)
    return start, end


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_flags(values: dict[str, object]) -> list[str]:
    """One message per flag in FLAGS whose value (None: not given) is out of its range."""
    errors = []
    for dest, (flag, valid) in FLAGS.items():
        value = values.get(dest)
        if isinstance(value, (int, float)) and not valid.holds(float(value)):
            errors.append(f"{flag} = {_show(value)}, {valid.rule(float(value))}")
    rate, duration = values.get("rate"), values.get("duration_s")
    if (isinstance(rate, float) and isinstance(duration, float) and math.isfinite(rate * duration)
            and rate * duration > MAX_REQUESTS):
        errors.append(f"--rate {rate:g} x --duration-s {duration:g} = {rate * duration:.3g} requests, "
                      f"must be <= {MAX_REQUESTS:.0e}")
    window = values.get("window")
    if isinstance(window, str):
        try:
            parse_window(window)
        except ValueError:
            errors.append(f"--window = {window}, {WINDOW_RULE}")
    return errors


def check_cost(key: str, text: str) -> tuple[float | None, str | None]:
    """A `--param sim.<key>` value: (the number, None) or (None, the message)."""
    valid = COSTS.get(key)
    if valid is None:
        return None, f"--param sim.{key}: unknown, one of {sorted(COSTS)}"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not valid.holds(value):
        return None, f"--param sim.{key} = {text}, {valid.rule(0.0)}"
    return value, None


def window_holds_requests(trace: Trace, window: tuple[float, float], text: str) -> None:
    """An InputError when a --window selects none of the trace's requests."""
    start, end = window
    if not ((trace.arrival_s >= start) & (trace.arrival_s < end)).any():
        raise InputError([f"--window = {text}, holds no request of trace {trace.name} "
                          f"(arrivals span 0-{trace.duration_s:.0f} s)"])
