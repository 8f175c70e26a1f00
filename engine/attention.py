"""The engine's attention function for HF transformers models, over the paged KV cache.

We register `paged_attention_forward` in transformers' AttentionInterface under ATTN_NAME, and
the model runner loads the model with attn_implementation=ATTN_NAME. transformers then calls it
in every attention layer with the module (module.layer_idx picks the cache), the projected and
rotated q/k/v for the whole step, `scaling`, `sliding_window` and `softcap` as the layer wants
them, and every extra keyword given to `model(...)` - the runner passes the step's
AttentionMetadata that way. transformers builds no mask for an implementation it has no mask
function for (masking_utils exits early and passes None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kernels.backend import get_ops
from kernels.paged_attention import DecodePlan, planned_decode_attention

ATTN_NAME = "reasoning_paged"


@dataclass(slots=True)
class AttentionMetadata:
    """Built once per step, read by every layer."""

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    slot_mapping: torch.Tensor  # [T] flat cache slot of each new token
    num_decode_tokens: int  # the first rows: one token per sequence
    decode_context_lens: torch.Tensor | None = None  # [Bd]
    decode_block_tables: torch.Tensor | None = None  # [Bd, max_blocks], padded with 0
    shared_prefixes: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (decode rows, blocks)
    prefill_cu_seqlens_q: torch.Tensor | None = None  # [Bp + 1]
    prefill_context_lens: torch.Tensor | None = None  # [Bp]
    prefill_block_tables: torch.Tensor | None = None  # [Bp, max_blocks]
    ops: Any = None  # kernel namespace from kernels.backend.get_ops (None: the torch ops)
    decode_plan: DecodePlan | None = None  # torch backend: the decode rows' grouping, made once per step


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, T, D]
    key: torch.Tensor,  # [1, kvH, T, D]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    attn_metadata: AttentionMetadata | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    meta = attn_metadata
    assert meta is not None, f"{ATTN_NAME} attention needs the engine's attn_metadata"
    assert query.shape[0] == 1, "the engine runs one flattened batch"
    scale = module.head_dim**-0.5 if scaling is None else scaling
    out = paged_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                          module.layer_idx, meta, scale, sliding_window, softcap)
    return out.unsqueeze(0), None  # [1, T, H, D], as transformers' attention functions return


def paged_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, kvH, D]
    v: torch.Tensor,
    layer_idx: int,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Write the step's keys/values into layer `layer_idx`'s cache, then attend: decode rows
    first (one query each), then the prefill chunks. Returns [T, H, D]."""
    ops = meta.ops or get_ops("torch")
    k_cache, v_cache = meta.kv_caches[layer_idx]
    ops.write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    nd = meta.num_decode_tokens

    def decode(qd: torch.Tensor) -> torch.Tensor:
        if meta.decode_plan is not None and sliding_window is None and softcap is None:
            return planned_decode_attention(qd, k_cache, v_cache, meta.decode_plan, scale)
        args = (qd, k_cache, v_cache, meta.decode_context_lens, meta.decode_block_tables, scale, sliding_window, softcap)
        if meta.shared_prefixes:
            return ops.shared_prefix_decode_attention(*args, shared_prefixes=meta.shared_prefixes)
        return ops.paged_decode_attention(*args)

    if nd == q.shape[0]:
        return decode(q)
    out = torch.empty_like(q)
    if nd:
        out[:nd] = decode(q[:nd])
    out[nd:] = ops.paged_prefill_attention(
        q[nd:], k_cache, v_cache, meta.prefill_cu_seqlens_q, meta.prefill_context_lens,
        meta.prefill_block_tables, scale, sliding_window, softcap,
    )
    return out


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, paged_attention_forward)
