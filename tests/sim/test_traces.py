"""Trace loading and the workloads built from traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim import workloads
from sim.traces import TraceError, load_trace


def test_shipped_bursty_trace() -> None:
    trace = load_trace("code")
    assert trace.requests == 8819
    assert trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert 55 * 60 < trace.duration_s < 58 * 60
    # The README's description: 12 gaps over a minute, the longest 217 s.
    assert trace.gaps_over(60.0) == 12
    assert 216.0 < float(np.diff(trace.arrival_s).max()) < 218.0
    assert trace.context_tokens[0] == 4808 and trace.generated_tokens[0] == 10


def test_shipped_steady_trace() -> None:
    trace = load_trace("conv")
    assert trace.requests == 19366
    assert trace.gaps_over(5.0) == 0


def test_sub_microsecond_timestamps_and_unsorted_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:00:01.5000001,10,1\n"
                    "2023-11-16 18:00:00.2500000,20,2\n")
    trace = load_trace(path)
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.2500001])
    assert trace.context_tokens.tolist() == [20, 10]


def test_seconds_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s\n3\n5.5\n")
    assert load_trace(path).arrival_s.tolist() == [0.0, 2.5]


def test_bad_traces(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens\nyesterday,1\n")
    with pytest.raises(TraceError, match=r"bad\.csv:2"):
        load_trace(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("foo\n1\n")
    with pytest.raises(TraceError, match="TIMESTAMP"):
        load_trace(empty)


def test_window_and_time_scale() -> None:
    trace = load_trace("code")
    part = trace.window(600.0, 1200.0)
    assert part.arrival_s.min() >= 0.0 and part.arrival_s.max() < 600.0
    assert part.requests == int(np.count_nonzero((trace.arrival_s >= 600) & (trace.arrival_s < 1200)))
    assert trace.time_scaled(0.5).duration_s == pytest.approx(trace.duration_s / 2)


def test_split_trace_over_zipf_models() -> None:
    trace = load_trace("code")
    wl = workloads.split_trace(trace, 10, exponent=1.0, seed=3)
    counts = np.bincount(wl.model_index, minlength=10)
    assert counts.sum() == trace.requests
    assert counts[0] > counts[4] > counts[9]  # rank 1 gets ~3x rank 3, ~10x rank 10
    assert wl.models[0] == "m0"


def test_many_models_is_bursty_and_zipf() -> None:
    wl = workloads.many_models(50, total_rate_per_s=5.0, duration_s=3600.0, seed=1)
    assert np.all(np.diff(wl.arrival_s) >= 0)
    counts = np.bincount(wl.model_index, minlength=50)
    assert counts[0] > 5 * counts[49]
    assert 0.5 * 5.0 * 3600 < wl.requests < 1.5 * 5.0 * 3600
    # On/off: the top model has long silences although its mean rate is high.
    top = wl.arrival_s[wl.model_index == 0]
    assert np.diff(top).max() > 120.0


def test_synthetic_rates() -> None:
    assert abs(workloads.poisson(2.0, 3600.0, seed=1).requests - 7200) < 400
    assert abs(workloads.diurnal(2.0, 86400.0, seed=1).requests - 172800) < 3000
    assert abs(workloads.bursty(2.0, 36000.0, seed=1).requests - 72000) < 20000
