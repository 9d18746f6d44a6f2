"""User models on the plugin interface (tests/runtime/plugin_models.py) in a real server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from runtime_server_proc import ServerProcess, start_server

HERE = Path(__file__).resolve().parent

ALL_DTYPES = {
    "BOOL": np.array([[True, False]]),
    "INT8": np.array([[-128, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "UINT8": np.array([[0, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1]], dtype=np.uint64),
    "FP16": np.array([[0.5, -2.25]], dtype=np.float16),
    "FP32": np.array([[1.5, -3.25]], dtype=np.float32),
    "FP64": np.array([[1e300, -1e-300]], dtype=np.float64),
    "BYTES": np.array([[b"ab", "é".encode()]], dtype=object),
}


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("echo"), "--model", "plugin_models:Echo", extra_path=HERE)
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(echo: ServerProcess, binary: bool) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{echo.port}")
    try:
        inputs = []
        for datatype, array in ALL_DTYPES.items():
            tensor = triton.InferInput(datatype.lower(), list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(f"{d.lower()}_out", binary_data=binary) for d in ALL_DTYPES]
        result = client.infer("echo", inputs, outputs=outputs)
        for datatype, array in ALL_DTYPES.items():
            out = result.get_output(f"{datatype.lower()}_out")
            assert out is not None and out["datatype"] == datatype and out["shape"] == [1, 2]
            got = result.as_numpy(f"{datatype.lower()}_out").tolist()
            if datatype == "BYTES" and not binary:  # JSON carries BYTES as strings; the client keeps str
                got = [[v.encode() for v in row] for row in got]
            assert got == array.tolist(), datatype
    finally:
        client.close()


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("INT8", [1, 128], "out of range"),
        ("UINT8", [-1, 0], "out of range"),
        ("INT32", [1, 2.5], "not all INT32"),
        ("BOOL", [1, 0], "not all BOOL"),
        ("BYTES", [1, 2], "strings"),
        ("UINT64", [0, 2**64], "out of range"),
    ],
)
async def test_json_values_must_fit_the_datatype(
    echo: ServerProcess, datatype: str, data: list[Any], fragment: str
) -> None:
    body = {"inputs": [{"name": "t", "datatype": datatype, "shape": [2], "data": data}]}
    async with aiohttp.ClientSession() as s, s.post(echo.url + "/v2/models/echo/infer", json=body) as r:
        assert r.status == 400
        assert fragment in (await r.json())["error"]


async def test_declared_inputs_sync_model_and_model_dir(tmp_path: Path) -> None:
    (tmp_path / "factor.txt").write_text("3")
    server = start_server(
        tmp_path,
        "--model",
        "plugin_models:Scale",
        "--model-name",
        "scaler",
        "--model-dir",
        str(tmp_path),
        extra_path=HERE,
    )
    try:
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2.5]},
                {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            ]
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + "/v2/models/scaler/infer", json=body) as r:
                out = {o["name"]: o for o in (await r.json())["outputs"]}
            assert out["y"]["data"] == [3.0, 7.5]
            # FP32 on the wire reaches the model as its declared FP64, so its output is FP64 too.
            body["inputs"][0]["datatype"] = "FP32"
            async with s.post(server.url + "/v2/models/scaler/infer", json=body) as r:
                out = {o["name"]: o for o in (await r.json())["outputs"]}
            assert out["y"]["datatype"] == "FP64"
            assert out["greeting"] == {
                "name": "greeting",
                "datatype": "BYTES",
                "shape": [2],
                "data": ["hello a", "hello b"],
            }
            # KServe v1 with several inputs: one object per instance; predictions = first output.
            v1 = {"instances": [{"x": 1.0, "label": "a"}, {"x": 2.0, "label": "b"}]}
            async with s.post(server.url + "/v1/models/scaler:predict", json=v1) as r:
                assert await r.json() == {"predictions": [3.0, 6.0]}
            async with s.post(server.url + "/v1/models/scaler:predict", json={"instances": [[1.0]]}) as r:
                assert r.status == 400 and "keyed by input name" in (await r.json())["error"]
    finally:
        assert server.stop() == 0


async def test_predict_exception_is_a_500_in_protocol_shape(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "plugin_models:BrokenPredict", extra_path=HERE)
    try:
        body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]}
        async with (
            aiohttp.ClientSession() as s,
            s.post(server.url + "/v2/models/brokenpredict/infer", json=body) as r,
        ):
            assert r.status == 500
            assert await r.json() == {"error": "ValueError: model bug"}
        assert server.status("/v2/health/ready") == 200  # one failed request does not fail the replica
    finally:
        assert server.stop() == 0


async def test_odd_predict_results(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, "--model", "plugin_models:OddOutputs", "--model-name", "odd", extra_path=HERE
    )

    def body(name: str) -> dict[str, Any]:
        return {"inputs": [{"name": name, "datatype": "FP32", "shape": [1], "data": [1]}]}

    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + "/v2/models/odd/infer", json=body("x")) as r:
                out = (await r.json())["outputs"][0]  # a list is taken as an array
            assert (out["datatype"], out["data"]) == ("FP64", [1.5, 2.5])
            async with s.post(server.url + "/v2/models/odd/infer", json=body("complex")) as r:
                assert r.status == 500 and "output c" in (await r.json())["error"]
            async with s.post(server.url + "/v2/models/odd/infer", json=body("notamap")) as r:
                assert r.status == 500 and "not a mapping" in (await r.json())["error"]
            async with s.post(server.url + "/v1/models/odd:predict", json={"instances": [1.0]}) as r:
                assert r.status == 400 and "declares no inputs" in (await r.json())["error"]
    finally:
        assert server.stop() == 0


def test_load_failure_exits_1(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "plugin_models:BrokenLoad", extra_path=HERE, ready=False)
    assert server.proc.wait(15) == 1
    assert "weights are corrupt" in server.log()


def test_sigterm_during_a_long_sync_load_exits_promptly(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "plugin_models:SlowSyncLoad", extra_path=HERE, ready=False)
    assert server.status("/v2/health/live") == 200 and server.status("/v2/health/ready") == 503
    started = time.monotonic()
    assert server.stop(timeout_s=20) == 0
    assert time.monotonic() - started < 10  # not the 60 s the load thread would take


@pytest.mark.parametrize("model", ["plugin_models:NotAModel", "no_such_module:X", "justaword"])
def test_bad_model_flag_exits_2(tmp_path: Path, model: str) -> None:
    from runtime.server.cli import main

    assert main(["--model", model, "--port", "0"]) == 2
