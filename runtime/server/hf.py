"""The ``hf`` runtime: a transformers causal LM from a model directory, behind the OpenAI API.

``zeroserve serve --runtime hf --model-dir DIR`` (or ``--model runtime.server.hf:HFModel``). The
directory holds ``config.json`` and safetensors shards, read by :mod:`runtime.loader`; a tokenizer
when present, else :class:`ByteTokenizer` (UTF-8 bytes as token ids) so that random test models
with no tokenizer still speak text. The model runs on the GPU the backend assigned through
``CUDA_VISIBLE_DEVICES`` (always ``cuda:0`` inside the process), on CPU when there is none.

Generation is a plain greedy/sampled loop over the KV cache, one forward per token, each step in a
worker thread so the event loop keeps serving; a lock lets concurrent requests interleave steps
instead of fighting over the device. One text piece is yielded per token (possibly empty while a
multi-byte character is incomplete), so the server's token accounting stays right.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.server.errors import BadRequest, ModelNotReady
from runtime.server.model import GenerationParams, GenerativeModel, ModelConfig

if TYPE_CHECKING:
    import torch

    from runtime.loader import LoadedModel
    from runtime.shard_reader import Loader

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def pick_device() -> torch.device:
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


class ByteTokenizer:
    """UTF-8 bytes are the tokens (id = byte % vocab_size): enough to drive a random model."""

    def __init__(self, vocab_size: int, eos_token_id: int | None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.chat_template: str | None = None

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


def load_tokenizer(model_dir: Path, config: Any) -> Any:
    if any((model_dir / name).exists() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)
    eos = config.eos_token_id
    return ByteTokenizer(config.vocab_size, eos[0] if isinstance(eos, list) else eos)


def _eos_ids(config: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)


class HFModel(GenerativeModel):
    platform = "transformers"
    owned_by = "zeroserve"

    def __init__(
        self,
        config: ModelConfig,
        *,
        loader: Loader | None = None,
        parked: Mapping[str, torch.Tensor] | None = None,
        skeleton: Any = None,
    ) -> None:
        super().__init__(config)
        self._loader = loader
        self._parked = parked
        self._skeleton = skeleton
        self.loaded: LoadedModel | None = None
        self.tokenizer: Any = None
        self._eos: frozenset[int] = frozenset()
        self._step_lock = threading.Lock()
        self.ready_unix: float | None = None
        self.first_token_s: float | None = None  # first request after load: call -> first token
        self.first_token_unix: float | None = None

    def load(self) -> None:
        """Sync: the server runs it in a thread (liveness keeps answering)."""
        from runtime.loader import load_model
        from runtime.shard_reader import Loader

        if self.model_dir is None:
            raise ValueError("the hf runtime needs --model-dir")
        loader = self._loader or Loader()
        self.loaded = load_model(
            self.model_dir, pick_device(), loader=loader, parked=self._parked, skeleton=self._skeleton
        )
        self._parked = self._skeleton = None  # the parking lot keeps its own references
        config = self.loaded.model.config
        self.tokenizer = load_tokenizer(self.model_dir, config)
        self._eos = _eos_ids(config, self.tokenizer)
        self.ready_unix = time.time()

    def unload(self) -> None:
        self.loaded = None
        self.tokenizer = None

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text)) if self.tokenizer is not None else super().count_tokens(text)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
            return str(rendered)
        return super().chat_prompt(messages)

    def _encode(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.encode(text)
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def _decode(self, ids: list[int]) -> str:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.decode(ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    async def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str]:
        loaded = self.loaded
        if loaded is None:
            raise ModelNotReady(f"model {self.name!r} is not loaded")
        started = time.perf_counter()
        ids = self._encode(prompt)
        if not ids:
            bos = loaded.model.config.bos_token_id
            ids = [bos if isinstance(bos, int) else 0]
        limit = int(getattr(loaded.model.config, "max_position_embeddings", 1 << 30))
        if len(ids) >= limit:
            raise BadRequest(f"prompt is {len(ids)} tokens, the model's context is {limit}", param="prompt")
        state = Decoder(loaded.model, loaded.device, ids, params)
        out: list[int] = []
        text_so_far = ""
        for _ in range(min(params.max_tokens, limit - len(ids))):
            token = await asyncio.to_thread(self._step, state)
            if self.first_token_s is None:
                self.first_token_s = time.perf_counter() - started
                self.first_token_unix = time.time()
            if token in self._eos:
                return
            out.append(token)
            text = self._decode(out)
            # Hold back an incomplete multi-byte character: it shows up whole with the next token.
            piece = "" if text.endswith("\ufffd") else text[len(text_so_far) :]
            if piece:
                text_so_far = text
            yield piece

    def _step(self, state: Decoder) -> int:
        with self._step_lock:
            return state.step()


class Decoder:
    """One request's KV cache and sampler."""

    def __init__(
        self, model: Any, device: torch.device, prompt_ids: list[int], params: GenerationParams
    ) -> None:
        import torch

        self.model = model
        self.device = device
        self.next_input = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        self.past: Any = None
        self.params = params
        self.generator: torch.Generator | None = None
        if params.seed is not None and params.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(params.seed)

    def step(self) -> int:
        import torch

        with torch.inference_mode():
            out = self.model(
                input_ids=self.next_input, past_key_values=self.past, use_cache=True, logits_to_keep=1
            )
            self.past = out.past_key_values
            logits = out.logits[0, -1].float()
            token = sample(logits, self.params.temperature, self.params.top_p, self.generator)
            self.next_input = torch.tensor([[token]], dtype=torch.long, device=self.device)
        return token


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    if 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top one
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator).item())
