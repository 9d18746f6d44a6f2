"""Summaries of a run (the numbers a policy is judged by) and the plots.

matplotlib is imported lazily and with the Agg backend: the simulator runs headless and the core
install does not need it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.state import QUEUED, REJECTED, SERVED, TIMED_OUT, RunResult


@dataclass(frozen=True)
class Summary:
    models: int
    requests: int
    served: int
    lost_timeout: int  # waited in the activator's queue past its timeout
    lost_rejected: int  # the queue was full
    duration_s: float
    gpu_seconds: float
    replica_seconds: float
    cold_starts: int  # replica starts (each pays the cold-start cost)
    scale_from_zero: int  # starts while the model had no replica
    cold_wait_fraction: float  # of requests, those that waited for a replica that was still starting
    latency_p50_s: float
    latency_p99_s: float
    latency_max_s: float
    events: int
    ticks: int
    pokes: int

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON and CSV; an undefined figure (the p99 of no served request) is None,
        since NaN is not JSON and strict parsers reject it."""
        return {k: json_number(v) for k, v in asdict(self).items()}


def json_number(value: Any) -> Any:
    """A float rounded to 4 places, None when not finite; anything else as it is."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def _pct(values: np.ndarray[Any, np.dtype[np.float64]], q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


def summarize(result: RunResult) -> Summary:
    served = result.state == SERVED
    latency = (result.start_s - result.arrival_s + result.service_s)[served]
    requests = int(result.arrival_s.size)
    still_queued = int(np.count_nonzero(result.state == QUEUED))
    return Summary(
        models=len(result.models),
        requests=requests,
        served=int(np.count_nonzero(served)),
        # A request still queued when the run ends never got an answer: count it lost too.
        lost_timeout=int(np.count_nonzero(result.state == TIMED_OUT)) + still_queued,
        lost_rejected=int(np.count_nonzero(result.state == REJECTED)),
        duration_s=float(result.end_s),
        gpu_seconds=float(result.gpu_s.sum()),
        replica_seconds=float(result.replica_s.sum()),
        cold_starts=int(result.cold_starts.sum()),
        scale_from_zero=int(result.from_zero.sum()),
        cold_wait_fraction=float(np.count_nonzero(result.cold)) / requests if requests else 0.0,
        latency_p50_s=_pct(latency, 50),
        latency_p99_s=_pct(latency, 99),
        latency_max_s=float(latency.max()) if latency.size else math.nan,
        events=result.events,
        ticks=result.ticks,
        pokes=result.pokes,
    )


_ROWS = (
    ("GPU-seconds", "gpu_seconds", "{:,.0f}"),
    ("replica-seconds", "replica_seconds", "{:,.0f}"),
    ("cold starts (replica starts)", "cold_starts", "{:,}"),
    ("scale-ups from zero", "scale_from_zero", "{:,}"),
    ("requests", "requests", "{:,}"),
    ("waited on a cold start", "cold_wait_fraction", "{:.2%}"),
    ("latency p50", "latency_p50_s", "{:.3f} s"),
    ("latency p99", "latency_p99_s", "{:.3f} s"),
    ("latency max", "latency_max_s", "{:.3f} s"),
    ("lost: queue timeout", "lost_timeout", "{:,}"),
    ("lost: queue full", "lost_rejected", "{:,}"),
    ("simulated span", "duration_s", "{:,.0f} s"),
)


def table(summary: Summary) -> str:
    """The summary for a terminal; "-" where a figure is undefined (no request served)."""
    values = summary.as_dict()
    width = max(len(label) for label, _, _ in _ROWS)
    return "\n".join(f"{label:<{width}}  {'-' if values[key] is None else fmt.format(values[key])}"
                     for label, key, fmt in _ROWS)


def per_model(result: RunResult) -> dict[str, dict[str, float | int | None]]:
    """Each model's GPU-seconds, replica starts and scale-ups from zero."""
    return {name: {"gpu_seconds": json_number(float(result.gpu_s[i])),
                   "cold_starts": int(result.cold_starts[i]), "scale_from_zero": int(result.from_zero[i])}
            for i, name in enumerate(result.models)}


def per_model_table(result: RunResult) -> str:
    rows = per_model(result)
    width = max(len("model"), *(len(name) for name in rows))
    lines = [f"{'model':<{width}}  {'GPU-seconds':>12}  {'cold starts':>11}  {'from zero':>9}"]
    lines += [f"{name:<{width}}  {row['gpu_seconds'] or 0:>12,.0f}  {row['cold_starts']:>11,}  "
              f"{row['scale_from_zero']:>9,}" for name, row in rows.items()]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: RunResult, path: Path, title: str) -> None:
    """Arrivals per bin and replicas over time, on one time axis."""
    plt = _pyplot()
    end = max(result.end_s, 1.0)
    bin_s = max(1.0, end / 600.0)
    edges = np.arange(0.0, end + bin_s, bin_s)
    counts, _ = np.histogram(result.arrival_s, bins=edges)
    fig, load_ax = plt.subplots(figsize=(11, 4.5))
    minutes = edges[:-1] / 60.0
    load_ax.fill_between(minutes, counts / bin_s, step="post", alpha=0.35, color="tab:blue")
    load_ax.set_xlabel("time (min)")
    load_ax.set_ylabel(f"arrivals/s ({bin_s:.1f} s bins)", color="tab:blue")
    rep_ax = load_ax.twinx()
    times = np.append(result.timeline_s, end) / 60.0
    counts_r = np.append(result.timeline_replicas, result.timeline_replicas[-1])
    rep_ax.step(times, counts_r, where="post", color="tab:red", linewidth=1.2)
    rep_ax.set_ylabel("replicas", color="tab:red")
    rep_ax.set_ylim(bottom=0)
    load_ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_mask(costs: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Rows not dominated by any other row (all columns lower-is-better)."""
    keep = np.ones(costs.shape[0], dtype=bool)
    for i in range(costs.shape[0]):
        others = np.delete(costs, i, axis=0)
        dominated = np.any(np.all(others <= costs[i], axis=1) & np.any(others < costs[i], axis=1))
        keep[i] = not dominated
    return keep


def plot_pareto(rows: list[dict[str, Any]], labels: list[str], path: Path, title: str) -> None:
    """GPU-seconds against the cold-wait fraction and against p99, Pareto points marked."""
    plt = _pyplot()
    gpu = np.array([r["gpu_seconds"] for r in rows], dtype=float)
    cold = np.array([r["cold_wait_fraction"] for r in rows], dtype=float)
    p99 = np.array([r["latency_p99_s"] for r in rows], dtype=float)
    front = pareto_mask(np.column_stack([gpu, cold, p99]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for ax, y, name in ((axes[0], cold * 100, "requests that waited on a cold start (%)"),
                        (axes[1], p99, "latency p99 (s)")):
        ax.scatter(gpu[~front], y[~front], color="0.6", label="dominated")
        ax.scatter(gpu[front], y[front], color="tab:red", label="Pareto front")
        for x, yy, label in zip(gpu, y, labels, strict=True):
            ax.annotate(label, (x, yy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("GPU-seconds")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
