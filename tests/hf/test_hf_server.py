"""A tiny random Llama served by the hf runtime answers the official openai SDK (in-process server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("openai")

import openai
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from runtime.server.app import create_app
from runtime.server.hf import ByteTokenizer, HFModel
from runtime.server.host import ModelHost, StartupTimes
from runtime.server.model import ModelConfig


@pytest.fixture
async def client(tiny_llama: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    model = HFModel(ModelConfig(name="tiny", model_dir=tiny_llama))
    host = ModelHost(model, StartupTimes(0.0, 0.0))
    await host.load()
    runner = web.AppRunner(create_app(host), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0) as c:
        yield c
    await runner.cleanup()


async def test_completion_greedy_is_deterministic_with_usage(client: openai.AsyncOpenAI) -> None:
    first = await client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=0)
    second = await client.completions.create(model="tiny", prompt="hello", max_tokens=6, temperature=0)
    assert first.choices[0].text == second.choices[0].text
    assert first.usage is not None
    assert first.usage.prompt_tokens == len(b"hello")      # byte tokenizer: one token per byte
    assert 1 <= first.usage.completion_tokens <= 6
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


async def test_streamed_completion_equals_unstreamed(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0)
    stream = await client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].text
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert finish == whole.choices[0].finish_reason


async def test_chat_streaming_and_seeded_sampling(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi there"}]
    runs = []
    for _ in range(2):
        stream = await client.chat.completions.create(model="tiny", messages=messages,
                                                      max_tokens=5, temperature=1.0, seed=42, stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        runs.append(text)
    assert runs[0] == runs[1]
    reply = await client.chat.completions.create(model="tiny", messages=messages,
                                                 max_tokens=3, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("length", "stop")


async def test_concurrent_streams_keep_their_own_caches(client: openai.AsyncOpenAI) -> None:
    import asyncio

    prompts = ["first prompt", "a different, longer second prompt"]
    alone = [(await client.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0))
             .choices[0].text for p in prompts]

    async def streamed(prompt: str) -> str:
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0,
                                                 stream=True)
        return "".join([c.choices[0].text async for c in stream if c.choices])

    together = await asyncio.gather(*(streamed(p) for p in prompts))
    assert list(together) == alone


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="other", prompt="x", max_tokens=1)


def test_byte_tokenizer_round_trips_utf8() -> None:
    tok = ByteTokenizer(vocab_size=300, eos_token_id=2)
    ids = tok.encode("héllo ✓")
    assert tok.decode(ids) == "héllo ✓"
    assert tok.decode(ids[:2]).endswith("\ufffd")    # half of 'é': the generator holds it back


async def test_a_real_tokenizer_is_used_when_the_directory_has_one(tiny_llama_untied: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from runtime.server.model import GenerationParams

    words = ["<unk>", "<s>", "</s>", "hello", "world", "zero", "serve"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model_dir = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_llama_untied, model_dir)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(model_dir)

    model = HFModel(ModelConfig(name="t", model_dir=model_dir))
    model.load()
    assert not isinstance(model.tokenizer, ByteTokenizer)
    assert model.count_tokens("hello world zero") == 3          # words, not bytes
    pieces = [p async for p in model.generate("hello world", GenerationParams(max_tokens=4, temperature=0))]
    assert len(pieces) <= 4      # random weights may pick the tokenizer's eos at once
    assert all(isinstance(p, str) for p in pieces)
