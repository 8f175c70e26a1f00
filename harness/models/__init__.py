"""Models: `--model` (a preset, a local directory, a `.gguf` file or a hub id) → a local Hugging Face
directory, and what backends need to load it.

    presets   configs/models/*.yaml: where a model comes from, its dtype, chat template, EOS tokens
    cache     $HARNESS_CACHE: converted checkpoints, manifests, locks; pulling sources into it
    gguf      GGUF → safetensors conversion, verified against the GGUF-loaded model
    resolve   ResolvedModel and resolve_model (the precedence of `--model`), list_models
    loading   tokenizer, prompt ids (BOS rule), EOS ids, dtype and device for the backends
"""

from harness.models.cache import MANIFEST, cache_root, dir_revision, file_sha256, models_cache, pull
from harness.models.gguf import convert_gguf
from harness.models.loading import (
    chat_template_hash,
    encode_prompt,
    eos_token_ids,
    load_errors,
    load_tokenizer,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
)
from harness.models.presets import configs_dir, list_presets, load_preset
from harness.models.resolve import ResolvedModel, list_models, resolve_model

__all__ = [
    "MANIFEST",
    "ResolvedModel",
    "cache_root",
    "chat_template_hash",
    "configs_dir",
    "convert_gguf",
    "dir_revision",
    "encode_prompt",
    "load_errors",
    "eos_token_ids",
    "file_sha256",
    "list_models",
    "list_presets",
    "load_preset",
    "load_tokenizer",
    "models_cache",
    "pull",
    "quiet_transformers",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
]
