"""An external server (not zeroserve's own: examples/external/standin_server.py, standard library
only) as a replica with no code: `runtime.command` + `protocol` + `readinessPath`."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import ROOT
from tests.e2e.harness import Up


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    log = tmp_path_factory.mktemp("external") / "up.log"
    server = Up(ROOT / "examples" / "external" / "standin.yaml", log=log)
    try:
        server.wait_up()
        yield server
    finally:
        assert server.stop() == 0, server.output()


async def test_external_server_is_a_replica(up: Up) -> None:
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [3], "data": [1, 2, 3]}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(up.url + "/v2/models/doubler/infer", json=body) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Served-By"]            # the stand-in answered, not zeroserve
            out = (await r.json())["outputs"][0]["data"]
    assert out == [2, 4, 6]
    status = up.status()["models"]["doubler"]
    assert status["ready"] == 1
    assert set(status["last_cold_start"]) >= {"start", "load"}
