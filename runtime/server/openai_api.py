"""OpenAI-compatible completions and chat completions (JSON and SSE streaming) for GenerativeModels.

The model only yields tokens; this module applies ``max_tokens`` and stop sequences, counts usage,
sets ``finish_reason`` and shapes the responses and errors the way the official SDK expects.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from runtime.server.context import HOST, admitted, endpoint, json_response, read_json
from runtime.server.errors import BadRequest, ModelNotFound, ServerError, status_of
from runtime.server.host import ModelHost
from runtime.server.model import GenerationParams, GenerativeModel

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy completions default; used for chat too (documented)
MAX_TOKENS_LIMIT = 4096


def render_error(error: ServerError) -> web.Response:
    body = {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.code,
        }
    }
    return json_response(body, status_of(error))


class StopFilter:
    """Cuts the text at the first stop sequence, holding back a tail that could begin one, so a
    stop string split across tokens is never half-streamed."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:k]):
                    hold = k
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass(slots=True)
class Outcome:
    completion_tokens: int = 0
    finish_reason: str = "stop"


async def run(
    host: ModelHost, prompt: str, params: GenerationParams, outcome: Outcome
) -> AsyncGenerator[str, None]:
    """The completion's text pieces; fills ``outcome`` with token count and finish reason."""
    stops = StopFilter(params.stop)
    stream = host.generate(prompt, params)
    try:
        async for piece in stream:
            outcome.completion_tokens += 1
            text, stopped = stops.feed(piece)
            if text:
                yield text
            if stopped:
                outcome.finish_reason = "stop"
                return
            if outcome.completion_tokens >= params.max_tokens:
                outcome.finish_reason = "length"
                break
        else:
            outcome.finish_reason = "stop"
        tail = stops.flush()
        if tail:
            yield tail
    finally:
        await stream.aclose()


def _params(body: dict[str, Any], *, chat: bool) -> GenerationParams:
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise BadRequest(
            f"max_tokens = {max_tokens!r}, must be an integer in 1..{MAX_TOKENS_LIMIT}", param="max_tokens"
        )
    n = body.get("n", 1)
    if n not in (1, None):
        raise BadRequest("only n = 1 is supported", param="n")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else stop or ()
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise BadRequest("stop must be a string or a list of at most 4 strings", param="stop")
    temperature = body.get("temperature", 1.0)
    if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
        raise BadRequest(f"temperature = {temperature!r}, must be in 0..2", param="temperature")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest("seed must be an integer", param="seed")
    top_p = body.get("top_p", 1.0)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=float(temperature if temperature is not None else 1),
        top_p=float(top_p if isinstance(top_p, int | float) else 1),
        seed=seed,
        stop=tuple(stops),
    )


def _check_model(host: ModelHost, body: Any) -> None:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("you must provide a model parameter", param="model")
    if model != host.name:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    request: web.Request,
    host: ModelHost,
    prompt: str,
    params: GenerationParams,
    *,
    chat: bool,
    body: dict[str, Any],
) -> web.StreamResponse:
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    prefix = prompt if (not chat and body.get("echo")) else ""

    def chunk(text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = (
                {"role": "assistant", "content": ""}
                if first
                else ({"content": text} if text is not None else {})
            )
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": obj, "created": created, "model": host.name, "choices": [choice]}

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    outcome = Outcome()
    try:
        if chat:
            await response.write(_sse(chunk(None, None, first=True)))
        elif prefix:
            await response.write(_sse(chunk(prefix, None)))
        async with aclosing(run(host, prompt, params, outcome)) as pieces:
            async for text in pieces:
                await response.write(_sse(chunk(text, None)))
        await response.write(_sse(chunk(None if chat else "", outcome.finish_reason)))
        if include_usage:
            usage = _usage(
                host.model.count_tokens(prompt) if isinstance(host.model, GenerativeModel) else 0,
                outcome.completion_tokens,
            )
            await response.write(
                _sse(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": host.name,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
    except ServerError as e:
        # Headers are gone; report in-band the way OpenAI-compatible servers do, then end the stream.
        await response.write(_sse(json.loads(render_error(e).text or "{}")))
    except ConnectionResetError:
        log.info("client went away mid-stream model=%s", host.name)
        return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (one prompt per request)", param="prompt")
    return prompt


@endpoint("openai", render_error, inference=True, admit=False)
async def completions(request: web.Request) -> web.StreamResponse:
    host = request.app[HOST]
    body = await read_json(request)
    _check_model(host, body)
    prompt = _prompt_of(body)
    params = _params(body, chat=False)
    with admitted(host, body["model"]):
        if not host.generative:
            raise BadRequest(f"model {host.name!r} is not a text generation model", param="model")
        if body.get("stream"):
            return await _stream(request, host, prompt, params, chat=False, body=body)
        outcome = Outcome()
        text = "".join([t async for t in run(host, prompt, params, outcome)])
        if body.get("echo"):
            text = prompt + text
        assert isinstance(host.model, GenerativeModel)
        return json_response(
            {
                "id": "cmpl-" + uuid.uuid4().hex,
                "object": "text_completion",
                "created": int(time.time()),
                "model": host.name,
                "choices": [
                    {"index": 0, "text": text, "logprobs": None, "finish_reason": outcome.finish_reason}
                ],
                "usage": _usage(host.model.count_tokens(prompt), outcome.completion_tokens),
            }
        )


@endpoint("openai", render_error, inference=True, admit=False)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    host = request.app[HOST]
    body = await read_json(request)
    _check_model(host, body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be a non-empty list of message objects", param="messages")
    params = _params(body, chat=True)
    with admitted(host, body["model"]):
        if not host.generative:
            raise BadRequest(f"model {host.name!r} is not a chat model", param="model")
        assert isinstance(host.model, GenerativeModel)
        prompt = host.model.chat_prompt(messages)
        if body.get("stream"):
            return await _stream(request, host, prompt, params, chat=True, body=body)
        outcome = Outcome()
        text = "".join([t async for t in run(host, prompt, params, outcome)])
        return json_response(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": host.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": _usage(host.model.count_tokens(prompt), outcome.completion_tokens),
            }
        )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
