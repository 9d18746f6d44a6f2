"""The activator's exceptions and the one place that maps them to HTTP responses.

Every error a client can see from the activator is built here, in the shape of the protocol the
client speaks: OpenAI clients get `{"error": {"message", "type", "code"}}`, KServe v1/v2 clients
get `{"error": "..."}`.
"""

from __future__ import annotations

import json
from typing import Literal

from aiohttp import web

Shape = Literal["openai", "kserve"]


class ActivatorError(Exception):
    status = 500
    kind = "internal_error"

    def __init__(self, message: str, *, model: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.model = model
        self.retry_after_s = retry_after_s


class BadRequest(ActivatorError):
    status = 400
    kind = "invalid_request_error"


class UnknownModel(ActivatorError):
    status = 404
    kind = "model_not_found"


class BodyTooLarge(ActivatorError):
    status = 413
    kind = "request_too_large"


class QueueFull(ActivatorError):
    status = 503
    kind = "queue_full"


class QueueTimeout(ActivatorError):
    status = 503
    kind = "queue_timeout"


class ShuttingDown(ActivatorError):
    status = 503
    kind = "shutting_down"


class UpstreamFailed(ActivatorError):
    """The replica failed before sending a response (refused, reset)."""

    status = 502
    kind = "upstream_failed"


class UpstreamTimeout(ActivatorError):
    status = 504
    kind = "upstream_timeout"


def error_response(err: ActivatorError, shape: Shape) -> web.Response:
    if shape == "openai":
        payload: object = {"error": {"message": err.message, "type": err.kind, "param": None,
                                     "code": err.kind}}
    else:
        payload = {"error": err.message}
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
    return web.Response(status=err.status, body=json.dumps(payload).encode(),
                        content_type="application/json", headers=headers)
