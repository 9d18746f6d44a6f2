"""s3:// against moto's S3 server (the real S3 wire API), with our aiohttp+SigV4 client and obstore."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig as BotoTransfer
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from runtime.storage import NodeCache, NotFoundError, materialize
from runtime.storage.sources.sigv4 import Credentials, canonical_query, sign_get, uri_encode
from storage_servers import FAST, MiB, Moto, acli


@pytest.fixture(scope="module")
def bucket(moto_server: Moto) -> dict[str, bytes]:
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket="models")
    objects = {
        "llama/config.json": b'{"layers": 2}',
        "llama/weights/shard-1.bin": os.urandom(3 * MiB + 5),
        "llama/weights/with space+plus.bin": os.urandom(4000),
        "llama-2/other.bin": b"must not be fetched for s3://models/llama",
    }
    for key, data in objects.items():
        s3.put_object(Bucket="models", Key=key, Body=data)
    multipart = os.urandom(11 * MiB)  # ETag "<md5 of md5s>-3": not an MD5 of the bytes
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"zs-mp-{os.getpid()}.bin"
    tmp.write_bytes(multipart)
    try:
        cfg = BotoTransfer(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
        s3.upload_file(str(tmp), "models", "llama/weights/multipart.bin", Config=cfg)
    finally:
        tmp.unlink()
    objects["llama/weights/multipart.bin"] = multipart
    return objects


@pytest.fixture
def s3_env(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("client", ["aiohttp", "obstore"])
async def test_prefix_download(
    bucket: dict[str, bytes],
    s3_env: None,
    cache: NodeCache,
    tmp_path: Path,
    client: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZEROSERVE_S3_CLIENT", client)
    result = await materialize("s3://models/llama", tmp_path / "d", cache, FAST)
    expected = {k.removeprefix("llama/"): v for k, v in bucket.items() if k.startswith("llama/")}
    got = {
        p.relative_to(tmp_path / "d").as_posix(): p.read_bytes()
        for p in (tmp_path / "d").rglob("*")
        if p.is_file()
    }
    assert got == expected
    assert result.bytes == sum(len(v) for v in expected.values()) and not result.cache_hit
    again = await materialize("s3://models/llama/", tmp_path / "e", cache, FAST)
    assert again.files == len(expected)


async def test_single_object_md5_checked(
    bucket: dict[str, bytes], s3_env: None, cache: NodeCache, tmp_path: Path
) -> None:
    from runtime.storage.sources.s3 import S3Config, S3Source
    from runtime.storage.uri import parse_uri

    source = S3Source(parse_uri("s3://models/llama/config.json"), S3Config.from_env())
    try:
        listing = await source.listing()
    finally:
        await source.close()
    (f,) = listing.files
    assert listing.single_object and f.path == "config.json"
    assert f.md5 == hashlib.md5(bucket["llama/config.json"]).hexdigest()  # single-part ETag is verified
    await materialize("s3://models/llama/config.json", tmp_path / "d", cache, FAST)
    assert (tmp_path / "d" / "config.json").read_bytes() == bucket["llama/config.json"]


@pytest.mark.parametrize("uri", ["s3://models/nothing-here", "s3://no-such-bucket/x"])
async def test_missing_is_not_found(
    bucket: dict[str, bytes], s3_env: None, cache: NodeCache, tmp_path: Path, uri: str
) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await materialize(uri, tmp_path / "d", cache, FAST)


async def test_cli_against_moto(bucket: dict[str, bytes], moto_server: Moto, tmp_path: Path) -> None:
    env = dict(os.environ, **moto_server.env)
    code, out = await acli(
        "storage-init",
        "s3://models/llama/weights",
        str(tmp_path / "d"),
        "--cache-dir",
        str(tmp_path / "c"),
        env=env,
    )
    assert code == 0, out
    assert (tmp_path / "d" / "multipart.bin").read_bytes() == bucket["llama/weights/multipart.bin"]
    assert "cache=miss" in out


def test_sigv4_matches_botocore() -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
    now = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    host = "127.0.0.1:9000"
    path = "/models/" + uri_encode("llama/weights/with space+plus.bin", keep_slash=True)
    query = canonical_query({"list-type": "2", "prefix": "llama/a b", "continuation-token": "x=y/z"})
    ours = sign_get(creds, "eu-west-1", host, path, query, now)

    request = AWSRequest(method="GET", url=f"http://{host}{path}?{query}", headers={})
    request.context["timestamp"] = now.strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    request.headers["X-Amz-Content-SHA256"] = ours["x-amz-content-sha256"]
    request.headers["X-Amz-Security-Token"] = "session-token"
    auth = S3SigV4Auth(
        BotoCredentials(creds.access_key, creds.secret_key, "session-token"), "s3", "eu-west-1"
    )
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert ours["Authorization"].endswith(f"Signature={signature}")


async def test_listing_follows_continuation_tokens(
    bucket: dict[str, bytes], s3_env: None, cache: NodeCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.storage.sources.s3 import S3Source

    monkeypatch.setattr(S3Source, "list_page_size", 2)  # 4 objects under llama/ -> several pages
    result = await materialize("s3://models/llama", tmp_path / "d", cache, FAST)
    assert result.files == len([k for k in bucket if k.startswith("llama/")])
