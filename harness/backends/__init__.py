"""Backend registry: `get_backend(name, model, **options) -> Backend`, importing lazily.

Each backend module is imported only when asked for, so `harness` stays importable without the
optional dependencies of the backends it does not use. The model is the user's string: local
backends resolve it (`resolve_backend_model`, which the runner calls first so that a run's identity
is known before any weights load); a remote backend passes it to its server.

    base     the interface: GenerationRequest, Completion, SamplingParams, Backend
    engine   this project's paged-KV engine, in process
    hf       transformers `generate`, the numerical reference
    openai   any OpenAI-compatible server (harness serve, vLLM, SGLang, hosted APIs) over HTTP
"""

from __future__ import annotations

import importlib
from typing import Any

from harness import HarnessError
from harness.backends.base import Backend, Completion, GenerationRequest, SamplingParams

# name -> (module, class); the class is constructed as cls(model: str, **options)
_BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("harness.backends.hf", "HFBackend"),
    "engine": ("harness.backends.engine", "EngineBackend"),
    "openai": ("harness.backends.openai", "OpenAIBackend"),
}
_LOCAL = {"hf", "engine"}  # backends that run a model from disk: the model string is resolved here
_RESERVED = {
    "vllm": "vLLM in process; a vLLM server is reached with --backend openai --base-url URL",
}


def available_backends() -> list[str]:
    """Registered backend names (whether their modules import is checked only on use)."""
    return sorted(_BACKENDS)


def resolve_backend_model(name: str, model: Any) -> Any:
    """What `get_backend(name, ...)` should be given for the user's model string: a ResolvedModel
    (installed and converted if needed, no weights loaded) for a local backend, the string itself
    for a remote one."""
    if isinstance(model, str) and (name or "").strip().lower() in _LOCAL:
        from harness.models import resolve_model

        return resolve_model(model)
    return model


def get_backend(name: str, model: Any, **options: Any) -> Backend:
    """Build backend `name` for `model`: the user's string (a preset, a path, a hub id; for a remote
    backend a served model name), which a local backend resolves itself, or a ResolvedModel."""
    key = (name or "").strip().lower()
    if key in _RESERVED:
        raise HarnessError(f"backend {key!r} ({_RESERVED[key]}) is not available yet; use one of: {', '.join(available_backends())}")
    if key not in _BACKENDS:
        raise HarnessError(f"unknown backend {name!r}; choose from: {', '.join(available_backends())}")
    module_name, cls_name = _BACKENDS[key]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise HarnessError(f"backend {key!r} is not available: module {module_name} is missing") from None
        raise HarnessError(f"backend {key!r} cannot be loaded: {module_name} needs {e.name!r}, which is not installed") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise HarnessError(f"backend {key!r} is not available: {module_name} has no {cls_name}")
    return cls(model, **options)


__all__ = [
    "Backend", "Completion", "GenerationRequest", "SamplingParams", "available_backends", "get_backend",
    "resolve_backend_model",
]
