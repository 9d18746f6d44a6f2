"""Which model a request is for: by Host, by path (KServe v1 / Open Inference v2), or by the
OpenAI body's `model` field, read from a bounded prefix of the body."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from activator.errors import BadRequest, Shape

# OpenAI endpoints whose target model is named in the JSON body.
OPENAI_BODY_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})
MODEL_LIST_PATHS = frozenset({"/v1/models", "/openai/v1/models"})
# How much of a body we read to find `model`; clients put it first in practice.
BODY_PREFIX_BYTES = 64 * 1024
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){1,256})"')


@dataclass(frozen=True, slots=True)
class Route:
    model: str | None        # None when the model must be read from the body
    shape: Shape             # the error shape the client expects
    needs_body_model: bool = False


class Router:
    """Maps (host, path) to a model. Built once per spec change; lookups are dict hits."""

    def __init__(self, models: Iterable[tuple[str, str, Iterable[str]]], domain: str = "") -> None:
        self.names: set[str] = set()
        self.hosts: dict[str, str] = {}
        for name, namespace, hosts in models:
            self.names.add(name)
            for host in hosts:
                self.hosts[host.lower()] = name
            self.hosts[f"{name}.{namespace}"] = name
            if domain:
                self.hosts[f"{name}.{namespace}.{domain}"] = name

    def route(self, host: str | None, path: str) -> Route:
        by_host = self._by_host(host)
        if path.startswith("/v2/models/"):
            return Route(path[len("/v2/models/"):].split("/", 1)[0] or by_host, "kserve")
        if path.startswith("/v1/models/"):
            rest = path[len("/v1/models/"):]
            name = rest.split("/", 1)[0].split(":", 1)[0]
            return Route(name or by_host, "kserve")
        if path in OPENAI_BODY_PATHS or path.startswith("/openai/v1/"):
            return Route(by_host, "openai", needs_body_model=by_host is None)
        return Route(by_host, "kserve")

    def _by_host(self, host: str | None) -> str | None:
        if not host:
            return None
        host = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host.lower()
        hit = self.hosts.get(host)
        if hit is not None:
            return hit
        # `{name}.{namespace}.<any domain>`, as cluster DNS names look.
        parts = host.split(".")
        if len(parts) > 2:
            return self.hosts.get(f"{parts[0]}.{parts[1]}")
        return None


def model_from_body(prefix: bytes) -> str:
    """The `model` of an OpenAI request, from the first bytes of its JSON body."""
    m = _MODEL_FIELD.search(prefix)
    if m is None:
        if len(prefix) < BODY_PREFIX_BYTES:
            raise BadRequest("request body must be JSON with a string field 'model'")
        raise BadRequest(f"field 'model' not found in the first {BODY_PREFIX_BYTES} bytes of the body")
    raw = m.group(1)
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        raise BadRequest("field 'model' is not a valid JSON string") from None
    if not isinstance(value, str) or not value:
        raise BadRequest("field 'model' must be a non-empty string")
    return value
