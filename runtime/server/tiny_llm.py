"""`tiny-llm`: a SYNTHETIC text generator, not a language model.

It produces deterministic pseudo-text (words drawn by a hash of the prompt, seed and position) with
a configurable load time and per-token latency, so cold starts, streaming and token accounting can
be exercised end to end without a GPU or weights. The same prompt and seed always give the same
text; each completion ends on its own after 8-63 tokens unless max_tokens cuts it first.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from runtime.server.model import GenerationParams, GenerativeModel

_WORDS = (
    "the model a replica scales from zero when requests arrive and the queue drains to warm "
    "servers while cold starts load weights into memory on each gpu every second the autoscaler "
    "reads concurrency panics on bursts then settles back down as traffic fades so capacity "
    "follows demand without waste"
).split()
_MASK = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    # A tiny, well-mixed PRNG: enough to look random, and identical on every platform.
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return state, z ^ (z >> 31)


def pseudo_text(prompt: str, seed: int | None, limit: int) -> list[str]:
    """The tokens tiny-llm emits for ``prompt`` (at most ``limit``), without the latency."""
    digest = hashlib.blake2b(f"{seed}:{prompt}".encode(), digest_size=8).digest()
    state, first = _splitmix64(int.from_bytes(digest, "little"))
    length = 8 + first % 56
    tokens: list[str] = []
    for i in range(min(limit, length)):
        state, r = _splitmix64(state)
        word = _WORDS[r % len(_WORDS)]
        if i == 0:
            word = word.capitalize()
        elif r % 11 == 0:
            word = word + "."
        tokens.append(word if i == 0 else " " + word)
    return tokens


class TinyLLM(GenerativeModel):
    platform = "synthetic"
    owned_by = "zeroserve-synthetic"

    async def load(self) -> None:
        # Stands in for reading weights: the server's readiness stays false for this long.
        await asyncio.sleep(self.config.load_time_s)

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str]:
        for token in pseudo_text(prompt, params.seed, params.max_tokens):
            if self.config.token_latency_s > 0:
                await asyncio.sleep(self.config.token_latency_s)
            yield token
