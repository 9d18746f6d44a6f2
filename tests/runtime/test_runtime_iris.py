"""The iris model over KServe v1 (plain aiohttp client) and Open Inference v2 (tritonclient),
served by a real `zeroserve serve` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from runtime_server_proc import REPO, ServerProcess, start_server
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("iris"), "--model", "iris", "--model-dir", str(REPO / "examples" / "iris")
    )
    yield server
    assert server.stop() == 0


def iris_rows() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    data = np.loadtxt(REPO / "examples" / "iris" / "iris.csv", delimiter=",", skiprows=1)
    return data[:, :4], data[:, 4].astype(np.int64)


async def post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)


# --- KServe v1 -------------------------------------------------------------------------------


async def test_v1_list_ready_and_predict(iris: ServerProcess) -> None:
    assert await get(iris.url + "/v1/models") == (200, {"models": ["iris"]})
    assert await get(iris.url + "/v1/models/iris") == (200, {"name": "iris", "ready": True})
    status, body = await post(iris.url + "/v1/models/iris:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert (status, body) == (200, {"predictions": [0]})


async def test_v1_classifies_the_data_set(iris: ServerProcess) -> None:
    x, y = iris_rows()
    status, body = await post(iris.url + "/v1/models/iris:predict", {"instances": x.tolist()})
    assert status == 200
    accuracy = float((np.array(body["predictions"]) == y).mean())
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}, 404, "nope"),
        ("/v1/models/iris:predict", {"rows": [[1, 2, 3, 4]]}, 400, "instances"),
        ("/v1/models/iris:predict", {"instances": [[1, 2, 3]]}, 400, "shape"),
        ("/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "FP32"),
        ("/v1/models/iris:predict", [1, 2], 400, "object"),
    ],
)
async def test_v1_errors(iris: ServerProcess, path: str, body: Any, status: int, fragment: str) -> None:
    got_status, got = await post(iris.url + path, body)
    assert got_status == status
    assert set(got) == {"error"} and fragment in got["error"]


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [("GET", "/nope", "v2"), ("DELETE", "/v2/models/iris", "v2"), ("GET", "/v1/chat/completions", "openai"),
     ("POST", "/v1/embeddings", "openai"), ("GET", "/v1/models/iris/nope", "v2")],
)
async def test_unknown_routes_answer_json(iris: ServerProcess, method: str, path: str, shape: str) -> None:
    async with aiohttp.ClientSession() as s, s.request(method, iris.url + path) as r:
        assert r.status in (404, 405)
        body = await r.json()
    if shape == "v2":
        assert isinstance(body["error"], str) and path in body["error"]
    else:
        assert body["error"]["code"] == "unknown_url"


async def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--model", "iris", "--max-body-bytes", "1000")
    try:
        rows = [[5.1, 3.5, 1.4, 0.2]] * 100
        status, body = await post(server.url + "/v1/models/iris:predict", {"instances": rows})
        assert status == 413 and "limit" in body["error"]
        status, body = await post(server.url + "/v1/models/iris:predict", {"instances": rows[:2]})
        assert (status, body) == (200, {"predictions": [0, 0]})
    finally:
        assert server.stop() == 0


async def test_v1_invalid_json(iris: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s, s.post(iris.url + "/v1/models/iris:predict", data=b"{nope") as r:
        assert r.status == 400
        assert "JSON" in (await r.json())["error"]


# --- Open Inference v2 with the Triton client ----------------------------------------------------


@pytest.fixture
def client(iris: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(f"127.0.0.1:{iris.port}")
    yield c
    c.close()


def test_v2_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert not client.is_model_ready("other")
    assert client.get_server_metadata()["name"] == "zeroserve"
    meta = client.get_model_metadata("iris")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["output-0", "probabilities"]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
def test_v2_infer_with_numpy(client: triton.InferenceServerClient, binary: bool, dtype: str) -> None:
    x, y = iris_rows()
    rows = x[::10].astype(np.float32 if dtype == "FP32" else np.float64)
    tensor = triton.InferInput("input-0", list(rows.shape), dtype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("output-0", "probabilities")]
    result = client.infer("iris", [tensor], outputs=outputs, request_id="r1")
    labels = result.as_numpy("output-0")
    probs = result.as_numpy("probabilities")
    assert labels.dtype == np.int64 and labels.shape == (len(rows),)
    assert probs.dtype == np.float32 and probs.shape == (len(rows), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (labels == probs.argmax(axis=1)).all()
    assert (labels == y[::10]).mean() >= 0.9
    assert result.get_response()["id"] == "r1"


def test_v2_requested_output_subset(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input-0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    result = client.infer("iris", [tensor], outputs=[triton.InferRequestedOutput("output-0")])
    assert result.as_numpy("output-0").tolist() == [2]
    assert result.as_numpy("probabilities") is None


def test_v2_errors_reach_the_triton_client(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input-0", [2, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("iris", [tensor])
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_metadata("other")


# --- v2 datatypes, shapes and error shapes over raw JSON -----------------------------------------


def v2_body(datatype: str, shape: Any, data: Any, name: str = "input-0") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (v2_body("FP16", [1, 4], [5.1, 3.5, 1.4, 0.2]), 200, None),
        (v2_body("FP32", [[1, 4]], [5.1, 3.5, 1.4, 0.2]), 400, "shape"),
        (v2_body("FP32", [1, 4], [[5.1, 3.5], [1.4, 0.2]]), 200, None),  # nested data is flattened
        (v2_body("FP32", [1, 4], [5.1, 3.5, 1.4]), 400, "3 values"),
        (v2_body("FP32", [1, 4], [5.1, 3.5, 1.4, "x"]), 400, "not all FP32"),
        (v2_body("FP32", [1, 4], [5.1, 3.5, 1.4, True]), 400, "not all FP32"),
        (v2_body("INT64", [1, 4], [5, 3, 1, 0]), 400, "datatype INT64"),
        (v2_body("BYTES", [1, 4], ["a", "b", "c", "d"]), 400, "datatype BYTES"),
        (v2_body("FP99", [1, 4], [1, 2, 3, 4]), 400, "unknown datatype"),
        (v2_body("FP32", [1, 4], [1, 2, 3, 4], name="x"), 400, "unexpected input"),
        (v2_body("FP32", [1, -4], [1, 2, 3, 4]), 400, "negative"),
        ({"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4]}]}, 400, "no data"),
        ({"inputs": []}, 400, "missing inputs"),
        ({"instances": [[1, 2, 3, 4]]}, 400, "inputs"),
        ({**v2_body("FP32", [1, 4], [1, 2, 3, 4]), "outputs": [{"name": "zzz"}]}, 400, "unknown output"),
    ],
)
async def test_v2_validation(iris: ServerProcess, body: Any, status: int, fragment: str | None) -> None:
    got_status, got = await post(iris.url + "/v2/models/iris/infer", body)
    assert got_status == status, got
    if fragment is None:
        assert got["outputs"][0]["datatype"] == "INT64"
    else:
        assert set(got) == {"error"} and fragment in got["error"], got


async def test_v2_unknown_model_and_version(iris: ServerProcess) -> None:
    body = v2_body("FP32", [1, 4], [1, 2, 3, 4])
    assert (await post(iris.url + "/v2/models/other/infer", body))[0] == 404
    assert (await post(iris.url + "/v2/models/iris/versions/7/infer", body))[0] == 404
    status, got = await post(iris.url + "/v2/models/iris/versions/1/infer", body)
    assert status == 200 and got["model_version"] == "1"


async def test_v2_server_endpoints_and_stats(iris: ServerProcess) -> None:
    assert await get(iris.url + "/v2/health/live") == (200, {"live": True})
    assert (await get(iris.url + "/v2/health/ready"))[0] == 200
    status, stats = await get(iris.url + "/v2/models/iris/stats")
    assert status == 200 and stats["state"] == "ready"
    startup = stats["startup"]
    assert 0 < startup["imports_s"] <= startup["listening_s"] <= startup["ready_s"]
    assert startup["load_s"] >= 0


async def test_metrics_exposes_inference_and_load(iris: ServerProcess) -> None:
    await post(iris.url + "/v2/models/iris/infer", v2_body("FP32", [1, 4], [1, 2, 3, 4]))
    async with aiohttp.ClientSession() as s, s.get(iris.url + "/metrics") as r:
        text = await r.text()
    assert 'zeroserve_inference_duration_seconds_count{model="iris",protocol="v2"}' in text
    assert 'zeroserve_model_load_seconds{model="iris"}' in text
    assert 'zeroserve_model_ready{model="iris"} 1.0' in text
    assert "ready in" in iris.log()


def test_training_script_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    import runpy
    import sys

    out = tmp_path / "iris.npz"
    argv = sys.argv
    sys.argv = ["train_iris.py", "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / "examples" / "train_iris.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    with np.load(out) as new, np.load(REPO / "examples" / "iris" / "iris.npz") as shipped:
        for key in ("mean", "scale", "weights", "bias"):
            np.testing.assert_allclose(new[key], shipped[key], rtol=1e-5)


def test_coldstart_tool_reports_ordered_phases(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from runtime.server.coldstart import main

    assert main(["--model", "iris", "--runs", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    run = result["models"]["iris"]["all"][0]
    assert 0 < run["imports_s"] <= run["listening_s"] <= run["ready_s"]
    # process start comes from /proc in 10 ms ticks, so it may read up to a tick before the spawn
    assert run["spawn_to_process_s"] > -0.011
    assert run["ready_s"] <= run["spawn_to_ready_seen_s"] + 0.011 <= run["spawn_to_first_answer_s"] + 0.011


async def test_a_head_the_activator_forwards_is_accepted(iris: ServerProcess) -> None:
    """The activator forwards heads up to 64 KiB; the replica must not refuse one over aiohttp's
    default 8190-byte line limit (it answered 400 before)."""
    async with aiohttp.ClientSession() as s, s.post(
            iris.url + "/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
            headers={"X-Trace": "a" * 60_000}) as r:
        assert r.status == 200, await r.text()
