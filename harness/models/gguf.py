"""GGUF → transformers conversion: load a GGUF with transformers (dequantised to fp32), make it
savable, save safetensors + tokenizer, and check the saved copy against the GGUF-loaded model
(same logits on a short prompt, same tokenisation, same chat template)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from harness import HarnessError
from harness.models.loading import chat_template_hash, eos_token_ids

_VERIFY_PROMPT = "<|im_start|>user\nWhat is 12 + 30? Answer briefly.<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------
# GGUF → transformers conversion


@contextlib.contextmanager
def _gguf_bar_follows_transformers():
    """transformers' GGUF reader draws its "Converting and de-quantizing" bar with tqdm itself,
    past `disable_progress_bar()`: while that switch is off (`harness eval`, `serve`), keep it off."""
    from transformers import modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as hf_logging

    original = getattr(reader, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    reader.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        reader.tqdm = original


def _load_gguf(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:  # dense fp32 weights even where a packed-GGUF matmul kernel is installed
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers: always dequantises
        pass
    with _gguf_bar_follows_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **kwargs)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model.eval(), tok


def _strip_quantization(model) -> None:
    """Make a GGUF-loaded (already dequantised) model savable: drop the quantizer and its config."""
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise HarnessError(f"GGUF weights were kept packed ({packed[0]}, ...); cannot save a dense checkpoint")
    for n, p in model.named_parameters():
        if not p.is_floating_point():
            raise HarnessError(f"GGUF tensor {n} was not dequantised ({p.dtype})")
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):  # a plain attribute in some versions, a property in others
        model.is_quantized = False
    for obj in (model.config, getattr(model.config, "text_config", None)):
        if obj is None:
            continue
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if attr in getattr(obj, "__dict__", {}):
                delattr(obj, attr)


def convert_gguf(gguf: Path, out_dir: Path, eos_tokens: list[str] | None = None, verify: bool = True) -> dict[str, Any]:
    """Convert one GGUF into a transformers checkpoint in `out_dir` (fp32 safetensors + tokenizer).

    Returns facts for the manifest (eos ids, chat-template hash, verification numbers). With
    `verify`, the saved checkpoint is reloaded and must give the same logits and tokenisation.
    """
    import torch
    import transformers

    t0 = time.perf_counter()
    model, tok = _load_gguf(gguf)
    t_load = time.perf_counter() - t0
    _strip_quantization(model)
    gen = model.generation_config
    try:
        eos = eos_token_ids([gen if gen.eos_token_id is not None else model.config], tok, eos_tokens or (), strict=True)
    except ValueError as e:
        raise HarnessError(str(e)) from None
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    if gen.bos_token_id is None and tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    model.config.name_or_path = out_dir.name
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    facts: dict[str, Any] = {
        "eos_token_ids": eos,
        "chat_template_sha256": chat_template_hash(tok),
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "gguf_load_seconds": round(t_load, 3),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
    }
    if verify:
        facts["verify"] = _verify(model, tok, out_dir)
    del model
    return facts


def _verify(ref_model, ref_tok, out_dir: Path) -> dict[str, Any]:
    """Reload the saved checkpoint; logits, tokenisation and chat template must match the GGUF's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    reload_s = time.perf_counter() - t0
    text = _VERIFY_PROMPT
    a, b = ref_tok(text)["input_ids"], tok(text)["input_ids"]
    if a != b:
        raise HarnessError(f"converted tokenizer encodes differently from the GGUF's ({a[:8]}... vs {b[:8]}...)")
    if ref_tok.chat_template != tok.chat_template:
        raise HarnessError("the chat template did not survive the conversion")
    ids = torch.tensor([a[:32]])
    with torch.inference_mode():
        la = ref_model(ids).logits
        lb = model(ids).logits
    diff = float((la - lb).abs().max())
    if diff > 1e-4 or int(la[0, -1].argmax()) != int(lb[0, -1].argmax()):
        raise HarnessError(f"converted model's logits differ from the GGUF-loaded model's (max |diff| {diff:.3g})")
    return {"max_abs_logit_diff": diff, "prompt_tokens": int(ids.shape[1]), "reload_seconds": round(reload_s, 3)}

