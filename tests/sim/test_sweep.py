"""Sweep parameters applied to the spec YAML, and the Pareto front of a sweep."""

from __future__ import annotations

import numpy as np
import pytest

from sim.report import pareto_mask
from sim.sweep import SweepError, apply_to_yaml, combinations, parse_param
from zeroserve.spec import SpecError, parse_specs

SPEC = """\
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: a}
spec:
  runtime: {model: tiny-llm}
  scaling: {target: 4}
---
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {name: b}
spec:
  runtime: {model: iris}
"""


def test_parse_param() -> None:
    p = parse_param("scaleToZeroGracePeriod=0s, 30s,300s")
    assert (p.name, p.values) == ("scaleToZeroGracePeriod", ("0s", "30s", "300s"))
    for bad in ("noequals", "=1,2", "x="):
        with pytest.raises(SweepError):
            parse_param(bad)


def test_settings_reach_every_document_and_section() -> None:
    text = apply_to_yaml(SPEC, {"scaleToZeroGracePeriod": "300s", "queue.timeout": "5s",
                                "policy": "histogram", "sim.load_s": "3"})
    a, b = parse_specs(text)
    for svc in (a, b):
        assert svc.scaling.scale_to_zero_grace_s == 300.0
        assert svc.scaling.policy == "histogram"
        assert svc.queue.timeout_s == 5.0
    assert a.scaling.target == 4.0  # untouched fields keep their values


def test_invalid_values_are_rejected_by_the_spec() -> None:
    with pytest.raises(SpecError, match="target"):
        parse_specs(apply_to_yaml(SPEC, {"target": "-1"}))


def test_combinations_are_the_cartesian_product_in_order() -> None:
    params = [parse_param("a=1,2"), parse_param("b=x,y,z")]
    assert [tuple(c.values()) for c in combinations(params)] == [
        ("1", "x"), ("1", "y"), ("1", "z"), ("2", "x"), ("2", "y"), ("2", "z")]


def test_pareto_front() -> None:
    costs = np.array([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [5.0, 1.0], [2.0, 2.0]])
    # (3, 3) is dominated by (2, 2); equal points do not dominate each other.
    assert pareto_mask(costs).tolist() == [True, True, False, True, True]
