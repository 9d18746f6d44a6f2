"""In-process pieces: the stop-sequence filter, tensor codecs, and the app's /metrics with a fake GPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fake_nvml import GIB, FakeNvml
from hypothesis import given
from hypothesis import strategies as st

from runtime.gpu import GpuInventory
from runtime.server.app import create_app
from runtime.server.errors import BadRequest
from runtime.server.host import ModelHost, StartupTimes
from runtime.server.iris import IrisModel
from runtime.server.model import ModelConfig
from runtime.server.openai_api import StopFilter
from runtime.server.tensors import DTYPES, TensorSpec, decode_binary, decode_json, encode_output


def run_filter(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    f = StopFilter(stops)
    out = ""
    for piece in pieces:
        text, stopped = f.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + f.flush(), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["a", "b", "c"], [], ("abc", False)),
        (["he", "llo wor", "ld"], ["wor"], ("hello ", True)),
        (["ab", "cd"], ["bc"], ("a", True)),  # stop split across two tokens
        (["ab", "x"], ["bc"], ("abx", False)),  # a held-back prefix that did not complete
        (["xy", "z"], ["z", "yz"], ("x", True)),  # the earliest match wins
        (["a"], [""], ("a", False)),  # empty stop strings are ignored
    ],
)
def test_stop_filter(pieces: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert run_filter(pieces, stops) == expected


@given(
    st.lists(st.text(alphabet="abc", max_size=3), max_size=8), st.text(alphabet="abc", min_size=1, max_size=3)
)
def test_stop_filter_matches_a_plain_find(pieces: list[str], stop: str) -> None:
    whole = "".join(pieces)
    cut = whole.find(stop)
    assert run_filter(pieces, [stop]) == ((whole[:cut], True) if cut >= 0 else (whole, False))


@pytest.mark.parametrize("datatype", sorted(DTYPES))
def test_json_and_binary_decoding_agree(datatype: str) -> None:
    values = {"BOOL": [True, False], "BYTES": ["x", "yz"]}.get(datatype, [1, 2])
    from_json = decode_json("t", datatype, (2,), values)
    encoded, raw = encode_output("t", from_json, binary=True)
    assert encoded["datatype"] == datatype and encoded["parameters"]["binary_data_size"] == len(raw)
    assert decode_binary("t", datatype, (2,), raw).tolist() == from_json.tolist()


def test_binary_size_must_match_the_shape() -> None:
    with pytest.raises(BadRequest, match="needs 16"):
        decode_binary("t", "FP32", (2, 2), b"\0" * 12)


def test_spec_shape_check() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    spec.check("FP64", (7, 4))
    for datatype, shape in (("FP32", (7, 3)), ("FP32", (4,)), ("INT32", (1, 4))):
        with pytest.raises(BadRequest):
            spec.check(datatype, shape)
    with pytest.raises(ValueError, match="not an Open Inference datatype"):
        TensorSpec("x", "FLOAT", (1,))


def test_empty_tensor() -> None:
    assert decode_json("t", "INT8", (0, 4), []).shape == (0, 4)
    assert encode_output("t", np.zeros((0, 2), dtype=np.float32), binary=False)[0]["data"] == []


async def test_app_metrics_include_gpu_gauges_from_the_fake() -> None:
    nvml = FakeNvml()
    nvml.set_memory_used(0, 5 * GIB)
    host = ModelHost(IrisModel(ModelConfig(name="iris")), StartupTimes(time.time(), time.time()))
    async with TestClient(TestServer(create_app(host, GpuInventory(nvml)))) as client:
        assert (await client.get("/v2/health/ready")).status == 503
        await host.load()
        assert (await client.get("/v2/health/ready")).status == 200
        text = await (await client.get("/metrics")).text()
    assert 'zeroserve_gpu_memory_used_bytes{gpu="0"} 5.36870912e+09' in text  # 5 GiB
    assert 'zeroserve_gpu_utilization_ratio{gpu="1"} 0.0' in text


def test_iris_falls_back_to_the_shipped_weights_for_an_empty_model_dir(tmp_path: Path) -> None:
    model = IrisModel(ModelConfig(name="iris", model_dir=tmp_path))
    model.load()
    out = model.predict({"input-0": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)})
    assert out["output-0"].tolist() == [0, 2]
    assert model.classes == ["setosa", "versicolor", "virginica"]
