"""URI parsing: every scheme, and a clear BadUriError for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.storage import BadUriError
from runtime.storage.uri import parse_uri


@pytest.mark.parametrize(
    ("raw", "scheme", "bucket", "key", "account"),
    [
        ("s3://models/llama/8b", "s3", "models", "llama/8b", ""),
        ("s3://models", "s3", "models", "", ""),
        ("gs://b/p/", "gs", "b", "p/", ""),
        ("az://acct/container/dir/x", "az", "container", "dir/x", "acct"),
        ("https://acct.blob.core.windows.net/container/dir/x", "az", "container", "dir/x", "acct"),
        ("hf://org/model", "hf", "org/model", "main", ""),
        ("hf://org/model@v1.0", "hf", "org/model", "v1.0", ""),
        ("hf://gpt2", "hf", "gpt2", "main", ""),
        ("https://example.com/m.tar.gz", "https", "", "", ""),
    ],
)
def test_remote(raw: str, scheme: str, bucket: str, key: str, account: str) -> None:
    uri = parse_uri(raw)
    assert (uri.scheme, uri.bucket, uri.key, uri.account) == (scheme, bucket, key, account)
    assert not uri.is_local


def test_local(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_uri("file:///data/m").local_path == Path("/data/m")
    monkeypatch.setenv("ZEROSERVE_PVC_ROOT", "/mnt/x")
    assert parse_uri("pvc://claim/sub/dir").local_path == Path("/mnt/x/claim/sub/dir")


@pytest.mark.parametrize(
    "raw", ["", "models/llama", "ftp://x/y", "s3:///key", "az://acct", "hf://a/b/c", "pvc://", "http:///x"]
)
def test_bad(raw: str) -> None:
    with pytest.raises(BadUriError) as err:
        parse_uri(raw)
    assert err.value.exit_code == 2 and str(err.value).startswith(f"{raw}: ")
