"""Prompt token ids and EOS ids: the engine's rules, which the harness's backends share.

- BOS: a text prompt gets the tokenizer's special tokens (BOS for models that want one) unless it
  already starts with the BOS token, so a chat-templated prompt never gets two.
- EOS: the union, in order, of the eos ids of the generation config, the model config and the
  tokenizer, plus named extra tokens (a preset's `eos_tokens`, e.g. ChatML's <|im_end|>).
"""

from __future__ import annotations

from typing import Any, Iterable


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def eos_token_ids(sources: Iterable[Any], tokenizer: Any = None, extra_tokens: Iterable[str] = (),
                  strict: bool = False) -> list[int]:
    """EOS ids from `sources` (objects with an `eos_token_id`: an int, a list or None), then
    `extra_tokens` by name, then the tokenizer's own, without repeats. An extra token that is not
    in the vocabulary is skipped, or a ValueError with `strict`."""
    ids: list[int] = []

    def add(value: Any) -> None:
        for x in value if isinstance(value, (list, tuple, set)) else [value]:
            if x is not None and int(x) not in ids:
                ids.append(int(x))

    for source in sources:
        if source is not None:
            add(getattr(source, "eos_token_id", None))
    for name in extra_tokens or ():
        token_id = tokenizer.convert_tokens_to_ids(name) if tokenizer is not None else None
        if not isinstance(token_id, int) or token_id == getattr(tokenizer, "unk_token_id", None):
            if strict:
                raise ValueError(f"eos token {name!r} is not in the tokenizer's vocabulary")
            continue
        add(token_id)
    if tokenizer is not None:
        add(getattr(tokenizer, "eos_token_id", None))
    return ids
