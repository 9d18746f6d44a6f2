"""Tiny random Llama checkpoints made by the tests themselves (no hub, a few hundred KB each).

torch is imported inside the helpers: this conftest must load even where torch is absent (the
test modules skip themselves with importorskip then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def make_llama(path: Path, *, tie: bool, dtype: str, shard_bytes: str | None = None,
               vocab: int = 300) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    model: Any = LlamaForCausalLM(config)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": shard_bytes} if shard_bytes else {}
    model.save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bf16, tied embeddings, two shards."""
    return make_llama(tmp_path_factory.mktemp("tiny-llama"), tie=True, dtype="bfloat16", shard_bytes="100KB")


@pytest.fixture(scope="session")
def tiny_llama_untied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """float32, separate lm_head, one shard."""
    return make_llama(tmp_path_factory.mktemp("tiny-llama-f32"), tie=False, dtype="float32")
