"""tiny-llm (synthetic generator) over the OpenAI API, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from runtime_server_proc import ServerProcess, start_server

from runtime.server.tiny_llm import pseudo_text


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("llm"),
        "--model",
        "tiny-llm",
        "--model-name",
        "tiny",
        "--load-time-s",
        "0.05",
        "--token-latency-s",
        "0.001",
    )
    yield server
    assert server.stop() == 0


@pytest.fixture
def client(llm: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "zeroserve-synthetic"


def test_completion_is_deterministic_and_counts_tokens(client: openai.OpenAI) -> None:
    first = client.completions.create(model="tiny", prompt="hello there", max_tokens=5)
    again = client.completions.create(model="tiny", prompt="hello there", max_tokens=5)
    assert first.choices[0].text == again.choices[0].text == "".join(pseudo_text("hello there", None, 5))
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (2, 5, 7)
    other = client.completions.create(model="tiny", prompt="hello there", max_tokens=5, seed=7)
    assert other.choices[0].text != first.choices[0].text


def test_max_tokens_above_natural_length_stops_on_its_own(client: openai.OpenAI) -> None:
    natural = pseudo_text("p", None, 1000)
    result = client.completions.create(model="tiny", prompt="p", max_tokens=1000)
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None and result.usage.completion_tokens == len(natural)


def test_stop_sequence(client: openai.OpenAI) -> None:
    full = "".join(pseudo_text("stop test", None, 40))
    word = full.split()[3]
    cut = full.index(word)
    result = client.completions.create(model="tiny", prompt="stop test", max_tokens=40, stop=[word])
    assert result.choices[0].text == full[:cut]
    assert result.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny", prompt="stop test", max_tokens=40, stop=word, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == full[:cut]


def test_chat_sync_and_stream_agree(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [reply.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    assert len(chunks) >= reply.usage.completion_tokens + 2  # one chunk per token, role, finish


async def test_async_client_streams_completions(llm: ServerProcess) -> None:
    async with openai.AsyncOpenAI(base_url=llm.url + "/v1", api_key="unused", max_retries=0) as client:
        stream = await client.completions.create(model="tiny", prompt="async", max_tokens=6, stream=True)
        pieces = [c.choices[0].text async for c in stream]
        whole = await client.completions.create(model="tiny", prompt="async", max_tokens=6)
    assert "".join(pieces) == whole.choices[0].text
    assert len([p for p in pieces if p]) == 6


async def test_sse_wire_format_ends_with_done(llm: ServerProcess) -> None:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(llm.url + "/v1/completions", json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) == 3 + 1 + 1  # three tokens, the finish chunk, [DONE]


def test_openai_error_shapes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-9", prompt="x")
    assert missing.value.body == {
        "message": "The model `gpt-9` does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad_n:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=2)
    assert isinstance(bad_n.value.body, dict) and bad_n.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[])


async def test_tensor_protocols_refuse_a_generator(llm: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    async with aiohttp.ClientSession() as s, s.post(llm.url + "/v2/models/tiny/infer", json=body) as r:
        assert r.status == 400 and "OpenAI" in (await r.json())["error"]


async def test_not_ready_while_loading(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = start_server(
        # Long enough that the four not-ready checks below fit in it on a loaded machine.
        tmp_path_factory.mktemp("slow"), "--model", "tiny-llm", "--load-time-s", "2.5", ready=False
    )
    try:
        assert server.status("/v2/health/live") == 200  # liveness answers during load
        assert server.status("/v2/health/ready") == 503
        assert server.status("/v1/models/tiny-llm") == 503
        body = {"model": "tiny-llm", "messages": [{"role": "user", "content": "x"}]}
        async with aiohttp.ClientSession() as s, s.post(server.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "model_not_ready"
        server.wait_ready()
        assert server.status("/v1/models/tiny-llm") == 200
        async with aiohttp.ClientSession() as s, s.get(server.url + "/v2/models/tiny-llm/stats") as r:
            startup = (await r.json())["startup"]
        # Wall-clock stamps, and the event loop may fire a timer up to its clock resolution early.
        assert 2.49 <= startup["load_s"] < 8
    finally:
        assert server.stop() == 0


async def test_concurrent_streams_interleave(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = start_server(
        tmp_path_factory.mktemp("many"),
        "--model",
        "tiny-llm",
        "--load-time-s",
        "0",
        "--token-latency-s",
        "0.1",
    )
    prompts = [p for p in (f"concurrent {i}" for i in range(200)) if len(pseudo_text(p, None, 10)) == 10][:16]
    try:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as client:

            async def one(prompt: str) -> int:
                stream = await client.completions.create(
                    model="tiny-llm", prompt=prompt, max_tokens=10, stream=True
                )
                return len([c async for c in stream if c.choices and c.choices[0].text])

            started = time.monotonic()
            counts = await asyncio.gather(*(one(p) for p in prompts))
            elapsed = time.monotonic() - started
    finally:
        assert server.stop() == 0
    assert counts == [10] * 16
    # One after another this is 16 x 10 x 0.1 s = 16 s; interleaved it is about one stream's 1 s
    # (plus the client's own work, which a loaded machine stretches: hence half the serial time).
    assert elapsed < 8.0, elapsed
