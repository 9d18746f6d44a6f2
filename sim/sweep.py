"""Parameter sweeps: the same workload under every combination of spec values, one row per run.

A parameter names a field of the ModelService YAML, under `spec.scaling` unless dotted
(`queue.timeout`, `runtime.loadTime`), or a replica cost with the `sim.` prefix (`sim.load_s`).
Each combination is applied to the YAML and re-validated by zeroserve.spec, so a sweep cannot run a
spec that `zeroserve up` would reject.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sim.scenario import ReplicaCosts, simulate
from sim.workloads import Workload
from zeroserve.spec import parse_specs

log = logging.getLogger(__name__)

SIM_PREFIX = "sim."


class SweepError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple[str, ...]


def parse_param(text: str) -> Param:
    """`scaleToZeroGracePeriod=0s,30s,300s` -> Param("scaleToZeroGracePeriod", ("0s", "30s", "300s"))."""
    name, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not name.strip() or not items:
        raise SweepError(f"--param {text!r}: expected NAME=VALUE[,VALUE...]")
    return Param(name.strip(), items)


def _yaml_value(text: str) -> Any:
    # "30s" stays a string (a duration the spec parses); "4" becomes 4, "true" True.
    return yaml.safe_load(text)


def apply_to_yaml(text: str, settings: dict[str, str]) -> str:
    """The spec YAML with each non-sim setting written into every ModelService document."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        spec = doc.setdefault("spec", {})
        for name, value in settings.items():
            if name.startswith(SIM_PREFIX):
                continue
            section, _, key = name.rpartition(".")
            target = spec.setdefault(section or "scaling", {})
            if not isinstance(target, dict):
                raise SweepError(f"--param {name}: spec.{section} is not a mapping")
            target[key] = _yaml_value(value)
    return yaml.safe_dump_all(docs, sort_keys=False)


def combinations(params: list[Param]) -> Iterator[dict[str, str]]:
    for values in itertools.product(*(p.values for p in params)):
        yield {p.name: v for p, v in zip(params, values, strict=True)}


def label(settings: dict[str, str]) -> str:
    return " ".join(f"{k.rpartition('.')[2]}={v}" for k, v in settings.items())


def run_sweep(spec_text: str, workload: Workload, params: list[Param],
              costs_for: Callable[[list[Any], dict[str, float]], ReplicaCosts], *, seed: int = 0,
              batch: bool = False) -> list[dict[str, Any]]:
    """One summary row per combination (the settings first, then the summary's fields)."""
    rows = []
    for settings in combinations(params):
        try:
            services = parse_specs(apply_to_yaml(spec_text, settings))
        except Exception as exc:
            raise SweepError(f"{label(settings)}: {exc}") from exc
        overrides = {k[len(SIM_PREFIX):]: float(v) for k, v in settings.items() if k.startswith(SIM_PREFIX)}
        outcome = simulate(services, workload, costs_for(services, overrides), seed=seed, batch=batch)
        row: dict[str, Any] = dict(settings)
        row.update(outcome.summary.as_dict())
        row["wall_s"] = round(outcome.wall_s, 3)
        log.info("%s: gpu_s=%.0f cold_starts=%d p99=%.2f", label(settings), outcome.summary.gpu_seconds,
                 outcome.summary.cold_starts, outcome.summary.latency_p99_s)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
