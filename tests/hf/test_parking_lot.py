"""Parked weights stay within their byte budget; the least recently used model is evicted first."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

from runtime.parking import ParkingLot, tensor_bytes, to_host


def _weights(nbytes: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(nbytes // 4, dtype=torch.float32), "b": torch.zeros(0)}


def test_budget_holds_and_lru_goes_first() -> None:
    lot = ParkingLot(budget_bytes=1000)
    assert lot.park("a", _weights(400))
    assert lot.park("b", _weights(400))
    assert lot.used_bytes == 800
    assert lot.get("a") is not None          # a is now the most recently used
    assert lot.park("c", _weights(400))      # needs 200 more: b (least recent) goes, a stays
    assert lot.keys() == ["a", "c"]
    assert "b" not in lot
    assert lot.used_bytes == 800 <= lot.budget_bytes
    assert lot.evictions == 1


def test_eviction_frees_as_many_as_needed_in_lru_order() -> None:
    lot = ParkingLot(budget_bytes=1000)
    for key in "abcd":
        assert lot.park(key, _weights(200))
    lot.get("a")
    assert lot.park("big", _weights(800))    # must free 600: b, c, d in that order; a was touched
    assert lot.keys() == ["a", "big"]
    assert lot.used_bytes == 1000
    assert lot.evictions == 3


def test_too_big_for_the_budget_is_not_parked_and_evicts_nothing() -> None:
    lot = ParkingLot(budget_bytes=1000)
    assert lot.park("a", _weights(400))
    assert not lot.park("huge", _weights(2000))
    assert lot.keys() == ["a"]
    assert lot.evictions == 0


def test_reparking_replaces_and_drop_frees() -> None:
    lot = ParkingLot(budget_bytes=1000)
    assert lot.park("a", _weights(400))
    assert lot.park("a", _weights(600))
    assert lot.used_bytes == 600
    assert lot.drop("a") and not lot.drop("a")
    assert lot.used_bytes == 0
    assert lot.status()["models"] == []


def test_to_host_keeps_cpu_tensors_and_bytes() -> None:
    tensors = {"x": torch.arange(10, dtype=torch.bfloat16), "y": torch.ones(3, 3)}
    host = to_host(tensors)
    assert tensor_bytes(host) == 10 * 2 + 9 * 4
    assert all(torch.equal(host[k], tensors[k]) for k in tensors)


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        ParkingLot(budget_bytes=-1)
