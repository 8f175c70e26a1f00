"""Tiny random models and a tokenizer trained on the spot: the unit-test workhorse.

Nothing here touches the hub. The tokenizer is a byte-level BPE trained on GSM8K train questions
(from ../shared/data/gsm8k) with a ChatML template, so prompts tokenise like a real model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HARNESS_SHARED", ROOT.parent / "shared"))
GSM8K_DIR = SHARED / "data" / "gsm8k"


def subprocess_env() -> dict:
    """The environment of a `harness` subprocess in a test: offline, the shared GSM8K data, this
    checkout first on the path, and one torch thread (a tiny model gains nothing from threads, and
    with a pytest-xdist worker on each core a second thread only waits on OpenMP barriers)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HARNESS_DATA_DIR=str(GSM8K_DIR), PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    return env

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def gsm8k_texts(limit: int = 2000) -> list[str]:
    texts = []
    with open(GSM8K_DIR / "train.jsonl") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 512):
    """Train a byte-level BPE on GSM8K text; save a transformers tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(gsm8k_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHATML
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "gemma2", "phi3")


def tiny_config(arch: str, vocab_size: int, **overrides):
    """A 2–4 layer config of `arch` small enough for CPU tests in milliseconds."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        cfg = tf.LlamaConfig(**common)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(head_dim=16, **common)
    elif arch == "mistral":
        cfg = tf.MistralConfig(sliding_window=24, **common)
    elif arch == "gemma3":
        # interleaved local/global layers: every 2nd layer global, local window 16
        common.update(num_hidden_layers=4)
        cfg = tf.Gemma3TextConfig(head_dim=16, sliding_window=16, sliding_window_pattern=2, **common)
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(head_dim=16, sliding_window=16, attn_logit_softcapping=5.0, **common)
    elif arch == "phi3":
        cfg = tf.Phi3Config(**common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_tiny_model(out_dir: Path, arch: str = "llama", tokenizer_dir: Path | None = None, seed: int = 0, **overrides) -> Path:
    """Save a random tiny `arch` model (fp32, safetensors) plus the trained tokenizer into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tok = build_tokenizer(out_dir)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        tok.save_pretrained(out_dir)
    cfg = tiny_config(arch, vocab_size=len(tok), **overrides)
    cfg.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    cfg.bos_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg.pad_token_id = tok.convert_tokens_to_ids("<pad>")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random weights give near-uniform logits; scale up so greedy choices are well separated and
    # parity tests are not decided by float rounding.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    model.save_pretrained(out_dir)
    return out_dir
