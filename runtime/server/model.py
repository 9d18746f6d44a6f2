"""The plugin interface: what a user model implements so that it needs no HTTP code.

A tensor model subclasses :class:`Model` and implements ``load()`` and ``predict()``; a text
generator subclasses :class:`GenerativeModel` and implements ``load()`` and ``generate()``. Any of
these may be ``async def``. The server calls them as follows:

- ``load()`` once, right after the server starts listening. Liveness answers meanwhile; readiness
  turns true when it returns. A sync ``load()`` runs in a worker thread so the event loop stays free.
- ``predict(inputs)`` with ``{input name: numpy array}`` already decoded and checked against
  ``inputs`` (the declared :class:`TensorSpec` list); it returns ``{output name: numpy array}``.
  A sync ``predict`` runs on the event loop (keep it short, or make it async and offload).
- ``generate(prompt, params)`` is an async iterator of text pieces, one per token. The server
  enforces ``max_tokens`` and stop sequences, counts usage and decides ``finish_reason``, so a model
  only produces tokens.

Example (``zeroserve serve --model mypkg.mymodel:Doubler``)::

    class Doubler(Model):
        inputs = (TensorSpec("x", "FP32", (-1,)),)
        outputs = (TensorSpec("y", "FP32", (-1,)),)
        def load(self) -> None: ...
        def predict(self, inputs): return {"y": inputs["x"] * 2}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.server.datatypes import TensorSpec

if TYPE_CHECKING:
    import numpy.typing as npt

    Arrays = Mapping[str, npt.NDArray[Any]]
else:
    Arrays = Mapping[str, Any]  # numpy is imported by the models that use it, not by the server

__all__ = ["Arrays", "GenerationParams", "GenerativeModel", "Model", "ModelConfig", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the server knows about the model it hosts, handed to the model's constructor."""

    name: str
    model_dir: Path | None = None
    load_time_s: float = 0.5  # tiny-llm's simulated load
    token_latency_s: float = 0.01  # tiny-llm's simulated per-token time
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Model:
    """A model with named tensor inputs and outputs (served over KServe v1 and Open Inference v2)."""

    inputs: Sequence[TensorSpec] = ()
    outputs: Sequence[TensorSpec] = ()
    platform: str = "zeroserve"
    version: str = "1"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name
        self.model_dir = config.model_dir

    def load(self) -> Awaitable[None] | None:
        """Read weights; called once. Override; the default has nothing to load."""
        return None

    def predict(self, inputs: Arrays) -> Arrays | Awaitable[Arrays]:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    def supports_tensors(self) -> bool:
        return type(self).predict is not Model.predict


class GenerativeModel(Model):
    """A text generator (served over the OpenAI API)."""

    owned_by: str = "zeroserve"

    def generate(self, prompt: str, params: GenerationParams) -> AsyncIterator[str]:
        """Yield the completion one token (text piece) at a time."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generate()")

    def count_tokens(self, text: str) -> int:
        """Prompt tokens for usage; whitespace words unless the model knows better."""
        return len(text.split())

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Render chat messages into one prompt; a real model would apply its chat template."""
        lines = [f"{m.get('role', 'user')}: {content_text(m.get('content'))}" for m in messages]
        return "\n".join([*lines, "assistant:"])


def content_text(content: Any) -> str:
    """OpenAI message content is a string or a list of parts; keep the text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
