"""What every local backend needs from a resolved model: its tokenizer (with the preset's chat
template), prompt token ids (the BOS rule), EOS ids, dtype and device. The rules themselves are the
engine's (engine.tokenizer, engine.config), so the engine and the hf reference agree."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterator

from engine.config import EngineConfigError
from engine.config import resolve_device as _engine_device
from engine.config import resolve_dtype as _engine_dtype
from engine.tokenizer import encode_prompt, eos_token_ids
from harness import HarnessError

if TYPE_CHECKING:
    from harness.models.resolve import ResolvedModel

__all__ = [
    "chat_template_hash", "encode_prompt", "eos_token_ids", "load_errors", "load_tokenizer", "quiet_transformers",
    "resolve_device",
    "resolve_dtype",
]


def quiet_transformers() -> None:
    """No "Loading weights" / download progress bars from transformers and huggingface_hub: in
    `harness eval` our own bar is the one progress display."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    disable_progress_bars()


def repair_hint(name: str) -> str:
    return f"repair it with `harness models pull {name} --force`"


@contextlib.contextmanager
def load_errors(model: ResolvedModel, what: str) -> Iterator[None]:
    """A model's files that fail to load (unreadable, malformed, cut short) → one line naming the
    model and, for a cache entry, the repair command; not a traceback from deep in transformers."""
    try:
        yield
    except (HarnessError, EngineConfigError):
        raise
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as e:
        hint = "" if model.source in ("dir", "hub") else f"; if the cache entry is damaged, {repair_hint(model.id)}"
        if model.source == "gguf":
            hint = f"; if the cache entry is damaged, {repair_hint('<the .gguf file>')}"
        msg = " ".join(str(e).split())[:300]
        raise HarnessError(f"cannot load the {what} of {model.id} from {model.path}: {type(e).__name__}: {msg}{hint}") from None


def load_tokenizer(model: ResolvedModel, **kwargs: Any):
    """The model's tokenizer with the preset's chat-template override applied."""
    from transformers import AutoTokenizer

    with load_errors(model, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(model.path), **kwargs)
    if model.chat_template:
        tok.chat_template = model.chat_template
    return tok


def resolve_dtype(dtype: str | None, device: str, model: ResolvedModel | None = None):
    """A torch dtype: `auto` → the preset's dtype if it names one, else the engine's rule
    (float32 on CPU, bfloat16 on CUDA)."""
    import torch

    name = (dtype or "auto").lower()
    if name == "auto" and model is not None and model.dtype != "auto":
        name = model.dtype
    try:
        return getattr(torch, _engine_dtype(name, device))
    except EngineConfigError:
        raise HarnessError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


def resolve_device(device: str | None) -> str:
    try:
        return _engine_device(device)
    except EngineConfigError:
        raise HarnessError(f"device {device!r} requested but CUDA is not available") from None


def chat_template_hash(tokenizer: Any) -> str | None:
    """sha256 of the tokenizer's chat template text (None when it has none)."""
    t = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not t:
        return None
    text = t if isinstance(t, str) else json.dumps(t, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
