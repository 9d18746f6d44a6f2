"""az:// through obstore against Azurite, Microsoft's Azure Storage emulator (a Node.js server).

Runs when `azurite-blob` is on PATH (or AZURITE_BLOB names it; `npm install azurite`) and the
azure-storage-blob package is there to upload the test blobs; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.storage import NodeCache, NotFoundError, materialize
from storage_servers import FAST, MiB, stop_process, wait_for_listening

# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, bytes]]]:
    exe = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    if exe is None:
        pytest.skip("azurite-blob not found (npm install azurite; put it on PATH or set AZURITE_BLOB)")
    blob = pytest.importorskip("azure.storage.blob")
    data = tmp_path_factory.mktemp("azurite")
    log_path = data.parent / f"{data.name}.log"
    # Port 0: Azurite binds a free port itself and logs it. No telemetry: CI may have no network,
    # and a test must not wait on (or depend on) a request to Microsoft's ingestion endpoint.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--location",
                str(data),
                "--silent",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = wait_for_listening(proc, log_path, r"listens on http://127\.0\.0\.1:(\d+)\s", 60, "azurite")
        url = f"http://127.0.0.1:{port}"
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={url}/{ACCOUNT};"
        )
        container = blob.BlobServiceClient.from_connection_string(conn).create_container("models")
        objects = {
            "llama/config.json": b'{"layers": 2}',
            "llama/weights/shard-1.bin": os.urandom(3 * MiB + 9),
            "llama/tok/vocab.txt": b"a\nb\n",
        }
        for name, body in objects.items():
            container.upload_blob(name, body)
        yield url, objects
    finally:
        stop_process(proc)


@pytest.fixture
def emulator_env(azurite: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    url, objects = azurite
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", url)
    return objects


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "uri", [f"az://{ACCOUNT}/models/llama", f"https://{ACCOUNT}.blob.core.windows.net/models/llama/"]
)
async def test_container_prefix(
    emulator_env: dict[str, bytes], cache: NodeCache, tmp_path: Path, uri: str
) -> None:
    result = await materialize(uri, tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == {k.removeprefix("llama/"): v for k, v in emulator_env.items()}
    assert not result.cache_hit
    assert (await materialize(uri, tmp_path / "e", cache, FAST)).cache_hit


async def test_single_blob_and_missing_prefix(
    emulator_env: dict[str, bytes], cache: NodeCache, tmp_path: Path
) -> None:
    await materialize(f"az://{ACCOUNT}/models/llama/config.json", tmp_path / "d", cache, FAST)
    assert tree(tmp_path / "d") == {"config.json": emulator_env["llama/config.json"]}
    with pytest.raises(NotFoundError):
        await materialize(f"az://{ACCOUNT}/models/nothing", tmp_path / "e", cache, FAST)
