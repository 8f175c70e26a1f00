"""Engine configuration: what the user sets, checked once at start with one-line errors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch

GiB = 1 << 30
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


class EngineConfigError(ValueError):
    """An impossible setting; the message is one line that says what to change."""


@dataclass(slots=True)
class EngineConfig:
    model: str = ""  # a local HF-format directory
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, fp32 on CPU)
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    block_size: int = 16
    gpu_memory_utilization: float = 0.9  # CUDA: fraction of device memory the engine may use
    kv_cache_memory: int | None = None  # CPU: KV bytes (default min(2 GiB, 25% of RAM))
    num_kv_blocks: int | None = None  # explicit block count (tests); overrides both budgets
    max_num_seqs: int = 256  # sequences (samples) per step and in the running set
    max_num_batched_tokens: int | None = None  # tokens per step (default 8192 CUDA, 2048 CPU)
    enable_prefix_caching: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds requests that bring no seed of their own
    trust_remote_code: bool = False
    attention_backend: str = "auto"  # auto | torch | triton (auto: triton on CUDA when it imports, else torch)
    # CUDA + triton: False = replay decode steps from CUDA graphs. Eager by default until the graph
    # path has run on a GPU (engine/cuda_graphs.py is unvalidated).
    enforce_eager: bool = True
    # auto: the native llama/qwen2 forward (engine/native_llama.py) where it applies, else the HF
    # model's own forward; native: that path or an error; transformers: always the HF forward
    model_impl: str = "auto"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Settings that are wrong whatever the model; the rest is checked in `resolve`."""
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise EngineConfigError(f"block_size must be a power of two, got {self.block_size}")
        if self.dtype not in ("auto", *DTYPES):
            raise EngineConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise EngineConfigError(f"attention_backend must be auto, torch or triton, got {self.attention_backend!r}")
        if self.model_impl not in ("auto", "native", "transformers"):
            raise EngineConfigError(f"model_impl must be auto, native or transformers, got {self.model_impl!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise EngineConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "num_kv_blocks", "max_model_len", "kv_cache_memory"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise EngineConfigError(f"{name} must be a positive integer, got {value!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        assert self.dtype != "auto", "resolve() first"
        return DTYPES[self.dtype]

    def resolve(self, hf_config: Any) -> "EngineConfig":
        """A copy with device, dtype, max_model_len and the batch budget filled in and checked
        against the model. The KV block count is decided by the model runner (it needs the model)."""
        cfg = dataclasses.replace(self)
        cfg.device = resolve_device(cfg.device)
        on_cuda = cfg.device.startswith("cuda")
        cfg.dtype = resolve_dtype(cfg.dtype, cfg.device)
        from kernels.backend import BackendError, resolve_backend

        try:
            cfg.attention_backend = resolve_backend(cfg.attention_backend, cfg.device)
        except BackendError as e:
            raise EngineConfigError(str(e)) from None
        model_len = model_max_len(hf_config)
        if cfg.max_model_len is None:
            if model_len is None:
                raise EngineConfigError("the model config has no max_position_embeddings; set max_model_len")
            cfg.max_model_len = int(model_len)
        elif model_len is not None and cfg.max_model_len > model_len:
            raise EngineConfigError(
                f"max_model_len={cfg.max_model_len} exceeds the model's max_position_embeddings={model_len}"
            )
        if cfg.max_num_batched_tokens is None:
            cfg.max_num_batched_tokens = 8192 if on_cuda else 2048
        if cfg.kv_cache_memory is None and not on_cuda:
            cfg.kv_cache_memory = default_cpu_kv_bytes()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_max_len(hf_config: Any) -> int | None:
    """The longest sequence the model's positions support: max_position_embeddings, extended by
    a static rope scaling in the config (linear, dynamic NTK and YaRN stretch the trained window by
    `factor`; YaRN counts from original_max_position_embeddings). llama3 and longrope configs
    already state the extended window in max_position_embeddings, so they are taken as given."""
    model_len = getattr(hf_config, "max_position_embeddings", None)
    # transformers 5 keeps it in rope_parameters (with rope_theta), 4.x in rope_scaling
    scaling = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", None) or {}
    if model_len is None or not isinstance(scaling, dict):
        return model_len
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = scaling.get("factor")
    if kind in ("linear", "dynamic", "yarn") and isinstance(factor, (int, float)) and factor > 1:
        base = scaling.get("original_max_position_embeddings") if kind == "yarn" else None
        return int((base or model_len) * factor)
    return int(model_len)


def resolve_device(device: str | None) -> str:
    """"auto" (or None) → "cuda" when CUDA is available, else "cpu"; a CUDA device that is not
    available is an EngineConfigError."""
    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EngineConfigError(f"device={device!r} but CUDA is not available")
    return str(device)


def resolve_dtype(dtype: str | None, device: str) -> str:
    """"auto" (or None) → bfloat16 on CUDA, float32 elsewhere; aliases (fp32, bf16, fp16, half)
    → their names in DTYPES."""
    name = (dtype or "auto").lower()
    if name == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise EngineConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return name


def default_cpu_kv_bytes() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 * GiB
    return int(min(2 * GiB, ram // 4))
