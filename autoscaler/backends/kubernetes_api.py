"""The Kubernetes API client: in-cluster configuration, and JSON requests, lists and watches.

The one place that calls kubernetes_asyncio (for its configuration, authentication and TLS);
objects stay plain dicts, and everything else in the backend talks to `KubeApi`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration

from autoscaler.backends.k8s_watch import KubeError, Obj

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def configuration(host: str | None = None, token: str | None = None, *,
                  sa_dir: Path = SA_DIR) -> Configuration:
    """In-cluster configuration (service account token and CA, KUBERNETES_SERVICE_HOST/PORT)
    unless a host is given (tests against the emulator)."""
    if host is None:
        from kubernetes_asyncio import config

        cfg = Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=cfg, token_filename=str(sa_dir / "token"),
            cert_filename=str(sa_dir / "ca.crt"))
        return cfg
    cfg = Configuration(host=host)
    if token:
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return cfg


class KubeApi:
    """JSON in, JSON out, over kubernetes_asyncio's authenticated client."""

    def __init__(self, cfg: Configuration) -> None:
        self._client = ApiClient(cfg)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, method: str, path: str, *, query: dict[str, str] | None = None,
                    body: Any = None, patch: bool = False, limit: Any = 30.0) -> Any:
        headers = {"Accept": "application/json",
                   "Content-Type": "application/merge-patch+json" if patch else "application/json"}
        try:
            return await self._client.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=limit)
        except aiohttp.ClientError as e:
            raise KubeError(0, {"message": str(e)}) from e

    async def request(self, method: str, path: str, *, body: Any = None, patch: bool = False,
                      ok_missing: bool = False) -> Obj | None:
        resp = await self._call(method, path, body=body, patch=patch)
        try:
            data = await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError):
            data = {}
        finally:
            resp.release()
        if resp.status == 404 and ok_missing:
            return None
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, data if isinstance(data, dict) else {})
        return data if isinstance(data, dict) else {}

    async def list(self, path: str, label_selector: str) -> tuple[list[Obj], str]:
        data = await self.request("GET", path + (f"?labelSelector={label_selector}"
                                                 if label_selector else ""))
        assert data is not None
        return list(data.get("items") or []), str(data["metadata"].get("resourceVersion", ""))

    async def watch(self, path: str, label_selector: str, resource_version: str,
                    timeout_s: float) -> AsyncIterator[Obj]:
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(int(timeout_s))}
        if label_selector:
            query["labelSelector"] = label_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        resp = await self._call("GET", path, query=query, limit=timeout)
        try:
            if resp.status != 200:
                raise KubeError(resp.status, await resp.json(content_type=None))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release()

