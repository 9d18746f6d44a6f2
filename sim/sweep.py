"""Parameter sweeps: the same workload under every combination of spec values, one row per run.

A parameter names a field of the ModelService YAML, under `spec.scaling` unless dotted
(`queue.timeout`, `runtime.loadTime`), or a replica cost with the `sim.` prefix (`sim.load_s`).
Each combination is applied to the YAML and re-validated by zeroserve.spec, so a sweep cannot run a
spec that `zeroserve up` would reject. Every value and every combination is checked before the first
run, and all the problems are reported at once: a sweep does not fail an hour in on its last value.
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

from sim.inputs import InputError, check_cost
from sim.scenario import CostsFor, simulate
from sim.workloads import Workload
from zeroserve.spec import ModelService, SpecError, parse_specs

log = logging.getLogger(__name__)

SIM_PREFIX = "sim."


class SweepError(InputError):
    """A --param that cannot be swept: one message per problem."""


@dataclass(frozen=True)
class Param:
    name: str
    values: tuple[str, ...]


def parse_param(text: str) -> Param:
    """`scaleToZeroGracePeriod=0s,30s,300s` -> Param("scaleToZeroGracePeriod", ("0s", "30s", "300s"))."""
    name, sep, values = text.partition("=")
    items = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not name.strip() or not items:
        raise SweepError([f"--param {text!r}: expected NAME=VALUE[,VALUE...]"])
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
                raise SweepError([f"--param {name}: spec.{section} is not a mapping"])
            target[key] = _yaml_value(value)
    return yaml.safe_dump_all(docs, sort_keys=False)


def combinations(params: list[Param]) -> Iterator[dict[str, str]]:
    for values in itertools.product(*(p.values for p in params)):
        yield {p.name: v for p, v in zip(params, values, strict=True)}


def label(settings: dict[str, str]) -> str:
    return " ".join(f"{k.rpartition('.')[2]}={v}" for k, v in settings.items())


@dataclass(frozen=True)
class Run:
    settings: dict[str, str]
    services: list[ModelService]
    costs: dict[str, float]  # the sim.<key> settings, as costs_from_spec keywords


def _services(spec_text: str, settings: dict[str, str]) -> tuple[list[ModelService] | None, list[str]]:
    try:
        return parse_specs(apply_to_yaml(spec_text, settings)), []
    except SpecError as exc:
        return None, exc.errors
    except (SweepError, yaml.YAMLError) as exc:
        return None, [str(exc)]


def plan(spec_text: str, params: list[Param]) -> list[Run]:
    """Every combination, validated: a SweepError listing every problem. The sim.<key> values are
    checked alone; spec values only in their combinations, which can fail together
    (minReplicas > maxReplicas): each spec problem once, with the first combination showing it."""
    errors: list[str] = []
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            errors.append(f"--param {p.name}: given twice (list its values in one --param)")
        seen.add(p.name)
        if p.name.startswith(SIM_PREFIX):
            for value in p.values:
                _, problem = check_cost(p.name[len(SIM_PREFIX):], value)
                if problem and problem not in errors:  # an unknown key once, not once per value
                    errors.append(problem)
    if errors:
        raise SweepError(errors)
    runs = []
    spec_errors: dict[str, str] = {}  # problem -> the first combination with it
    for settings in combinations(params):
        services, problems = _services(spec_text, settings)
        for line in problems:
            spec_errors.setdefault(line, label(settings))
        costs = {k[len(SIM_PREFIX):]: float(v) for k, v in settings.items() if k.startswith(SIM_PREFIX)}
        if services is not None:
            runs.append(Run(settings, services, costs))
    if spec_errors:
        raise SweepError([f"--param {where}: {line}" for line, where in spec_errors.items()])
    return runs


def run_sweep(spec_text: str, workload: Workload, params: list[Param],
              costs_for: Callable[[dict[str, float]], CostsFor], *, seed: int = 0,
              batch: bool = False) -> list[dict[str, Any]]:
    """One summary row per combination (the settings first, then the summary's fields).
    `costs_for(sim_settings)` gives the per-model replica costs with those settings applied."""
    rows = []
    for run in plan(spec_text, params):
        outcome = simulate(run.services, workload, costs_for(run.costs), seed=seed, batch=batch)
        row: dict[str, Any] = dict(run.settings)
        row.update(outcome.summary.as_dict())
        row["wall_s"] = round(outcome.wall_s, 3)
        log.info("%s: gpu_s=%.0f cold_starts=%d p99=%.2f", label(run.settings), outcome.summary.gpu_seconds,
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
