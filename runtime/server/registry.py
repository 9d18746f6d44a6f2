"""Resolve ``--model``: a built-in kind (``iris``, ``tiny-llm``) or a plugin ``module.path:ClassName``."""

from __future__ import annotations

import importlib
import os
import sys

from runtime.server.model import Model, ModelConfig

BUILTIN = {
    "iris": "runtime.server.iris:IrisModel",
    "tiny-llm": "runtime.server.tiny_llm:TinyLLM",
}


class ModelSpecError(ValueError):
    """``--model`` names nothing loadable (exit code 2: bad input)."""


def resolve_class(kind: str) -> type[Model]:
    target = BUILTIN.get(kind, kind)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ModelSpecError(f"--model {kind!r}: expected one of {sorted(BUILTIN)} or module.path:ClassName")
    if kind not in BUILTIN and "" not in sys.path and os.getcwd() not in sys.path:
        # As `python -m` would: a plugin package in the working directory is found. The console
        # script's sys.path starts at its bin/ folder instead. Appended, so nothing installed is
        # shadowed by a file that happens to be here.
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSpecError(f"--model {kind!r}: cannot import {module_name}: {e}") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Model):
        raise ModelSpecError(
            f"--model {kind!r}: {class_name} in {module_name} is not a runtime.server.model.Model subclass"
        )
    return cls


def default_name(kind: str) -> str:
    return kind if kind in BUILTIN else kind.rpartition(":")[2].lower()


def build(kind: str, config: ModelConfig) -> Model:
    return resolve_class(kind)(config)
