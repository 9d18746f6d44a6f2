"""Status rendering: conditions from pods, transition times, the reasons a user sees in `kubectl get`."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.backends.k8s_render import render_status, summarize_pods

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def pod(name: str, *, ready: bool = False, unschedulable: str = "",
        waiting: tuple[str, str] | None = None) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": unschedulable})
    status: dict[str, Any] = {"conditions": conds}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "runtime", "state": {"waiting": {
            "reason": waiting[0], "message": waiting[1]}}}]
    return {"metadata": {"name": name}, "status": status}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(("desired", "pods", "ready", "zero", "unsched"), [
    (1, [pod("a", ready=True)], ("True", "Serving"), "False", "False"),
    (0, [], ("True", "ScaledToZero"), "True", "False"),
    (1, [pod("a")], ("False", "Starting"), "False", "False"),
    (1, [pod("a", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")],
     ("False", "Unschedulable"), "False", "True"),
    (1, [pod("a", waiting=("CrashLoopBackOff", "back-off 40s restarting failed container"))],
     ("False", "CrashLoopBackOff"), "False", "False"),
    (1, [pod("a", waiting=("ContainerCreating", ""))], ("False", "Starting"), "False", "False"),
    (0, [pod("a", ready=True)], ("True", "Serving"), "False", "False"),  # still draining
])
def test_conditions(desired: int, pods: list[dict[str, Any]], ready: tuple[str, str], zero: str,
                    unsched: str) -> None:
    status = render_status(generation=3, deployment="m", desired=desired, pods=summarize_pods(pods),
                           previous=None, now_rfc3339=T0, cold_start=None)
    got = conditions(status)
    assert got["Ready"] == ready
    assert got["ScaledToZero"][0] == zero
    assert got["Unschedulable"][0] == unsched
    assert status["observedGeneration"] == 3


def test_transition_time_moves_only_when_the_status_flips() -> None:
    serving = render_status(generation=1, deployment="m", desired=1,
                            pods=summarize_pods([pod("a", ready=True)]), previous=None,
                            now_rfc3339=T0, cold_start=("2026-01-01T00:00:00Z", 4.2))
    again = render_status(generation=1, deployment="m", desired=2,
                          pods=summarize_pods([pod("a", ready=True), pod("b")]), previous=serving,
                          now_rfc3339=T1, cold_start=None)
    ready = {c["type"]: c for c in again["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == T0
    assert again["lastColdStartSeconds"] == 4.2, "the last cold start is kept"
    zero = render_status(generation=1, deployment="m", desired=0, pods=summarize_pods([]),
                         previous=again, now_rfc3339=T1, cold_start=None)
    flipped = {c["type"]: c for c in zero["conditions"]}["ScaledToZero"]
    assert (flipped["status"], flipped["lastTransitionTime"]) == ("True", T1)


def test_invalid_spec_wins_over_everything() -> None:
    status = render_status(generation=1, deployment="m", desired=1,
                           pods=summarize_pods([pod("a", ready=True)]), previous=None,
                           now_rfc3339=T0, cold_start=None, error="spec.runtime.model: required",
                           error_reason="InvalidSpec")
    assert conditions(status)["Ready"] == ("False", "InvalidSpec")
