"""The model server's exception tree and the one place that maps it to HTTP statuses.

Each protocol module renders an error in its own body shape (KServe v1 / Open Inference v2:
``{"error": "..."}``; OpenAI: ``{"error": {"message", "type", "param", "code"}}``), but the
status code always comes from :func:`status_of`, so the three protocols never disagree.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the model server turns into an HTTP response."""

    # OpenAI's ``type`` and ``code`` fields; the other protocols only carry the message.
    openai_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(ServerError):
    """Malformed body, wrong tensor shape/datatype, out-of-range parameter."""

    openai_type = "invalid_request_error"


class ModelNotFound(ServerError):
    openai_type = "invalid_request_error"
    code = "model_not_found"


class Unsupported(ServerError):
    """The model exists but does not implement what the route asks (e.g. chat on a classifier)."""

    openai_type = "invalid_request_error"
    code = "unsupported"


class ModelNotReady(ServerError):
    """load() has not finished yet."""

    openai_type = "service_unavailable_error"
    code = "model_not_ready"


class Draining(ServerError):
    """SIGTERM received: the replica finishes what it has and takes nothing new."""

    openai_type = "service_unavailable_error"
    code = "draining"


class PayloadTooLarge(ServerError):
    """The body exceeds --max-body-bytes."""

    openai_type = "invalid_request_error"
    code = "payload_too_large"


class NoRoute(ServerError):
    """No such path (or method) on this server."""

    openai_type = "invalid_request_error"
    code = "unknown_url"


class ModelFailure(ServerError):
    """The user's predict()/generate() raised."""


_STATUS: dict[type[ServerError], int] = {
    BadRequest: 400,
    Unsupported: 400,
    ModelNotFound: 404,
    NoRoute: 404,
    PayloadTooLarge: 413,
    ModelNotReady: 503,
    Draining: 503,
    ModelFailure: 500,
}


def status_of(error: ServerError) -> int:
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500
