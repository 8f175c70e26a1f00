"""Scatter new keys/values into the paged KV cache (pure-torch reference)."""

from __future__ import annotations

import torch


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write token t's key/value into flat slot `slot_mapping[t]` of the caches, in place.

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] (contiguous).
    k, v: [T, num_kv_heads, head_dim]. slot_mapping: [T] int64, slot = block * block_size + offset;
    -1 means "do not write" (padding tokens).
    """
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches are viewed as flat slot arrays"
    assert k.shape == v.shape and k.shape[0] == slot_mapping.shape[0]
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    slots = slot_mapping
    if slots.numel() and bool((slots < 0).any()):
        keep = slots >= 0
        slots, k, v = slots[keep], k[keep], v[keep]
    flat_k.index_copy_(0, slots, k.to(flat_k.dtype))
    flat_v.index_copy_(0, slots, v.to(flat_v.dtype))
