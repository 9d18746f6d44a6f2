"""Real clients through the activator of `zeroserve up -f examples/quickstart.yaml`:
the openai SDK (sync, async, streaming), tritonclient (v2) and plain HTTP (v1)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.e2e.harness import Up

openai = pytest.importorskip("openai")
httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    log = tmp_path_factory.mktemp("clients") / "up.log"
    server = Up(ROOT / "examples" / "quickstart.yaml", log=log)
    try:
        server.wait_up()
        yield server
    finally:
        assert server.stop() == 0, server.output()


def test_openai_sdk_sync_and_streaming(up: Up) -> None:
    client = openai.OpenAI(base_url=up.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    ids = [m.id for m in client.models.list()]
    assert ids == ["iris", "tiny-llm"]
    done = client.completions.create(model="tiny-llm", prompt="hello", max_tokens=5)
    assert done.model == "tiny-llm" and done.choices[0].text
    assert done.usage is not None and done.usage.completion_tokens == 5
    chat = client.chat.completions.create(model="tiny-llm", max_tokens=6, stream=True,
                                          messages=[{"role": "user", "content": "hi"}])
    pieces = [c.choices[0].delta.content or "" for c in chat if c.choices]
    assert len(pieces) >= 6 and "".join(pieces)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


async def test_openai_sdk_async(up: Up) -> None:
    client = openai.AsyncOpenAI(base_url=up.url + "/v1", api_key="unused", max_retries=0,
                                timeout=60)
    chat = await client.chat.completions.create(
        model="tiny-llm", max_tokens=4, messages=[{"role": "user", "content": "hello there"}])
    assert chat.choices[0].message.content
    stream = await client.completions.create(model="tiny-llm", prompt="a", max_tokens=4,
                                             stream=True)
    texts = [c.choices[0].text async for c in stream]
    assert len(texts) >= 4
    await client.close()


def test_tritonclient_v2(up: Up) -> None:
    client = httpclient.InferenceServerClient(url=up.url.removeprefix("http://"),
                                              network_timeout=60.0)
    assert client.is_server_live()
    meta = client.get_model_metadata("iris")
    assert meta["name"] == "iris"
    data = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    name = meta["inputs"][0]["name"]
    inp = httpclient.InferInput(name, list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer("iris", [inp])
    out = result.as_numpy(meta["outputs"][0]["name"])
    assert out is not None and out.reshape(-1)[:2].tolist() == [0, 2]
    client.close()


def test_plain_http_v1(up: Up) -> None:
    req = urllib.request.Request(up.url + "/v1/models/iris:predict", method="POST",
                                 data=json.dumps({"instances": [[5.9, 3.0, 4.2, 1.5]]}).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.load(r) == {"predictions": [1]}
    with urllib.request.urlopen(up.url + "/v1/models/iris", timeout=10) as r:
        assert json.load(r)["ready"] is True


def test_the_models_are_listed_for_kserve_clients_too(up: Up) -> None:
    with urllib.request.urlopen(up.url + "/v1/models", timeout=10) as r:
        assert json.load(r)["models"] == ["iris", "tiny-llm"]


