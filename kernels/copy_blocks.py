"""Copy whole KV blocks (copy-on-write support), pure-torch reference."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Caches = Union[torch.Tensor, Sequence[torch.Tensor]]


def copy_blocks(k_cache: Caches, v_cache: Caches, src: torch.Tensor, dst: torch.Tensor) -> None:
    """For every i, copy block src[i] onto block dst[i] in the K and V caches, in place.

    Accepts one layer's caches ([num_blocks, block_size, num_kv_heads, head_dim] each) or a list of
    layers (one call copies the blocks in every layer). `src`/`dst` are int64 block ids on the
    caches' device; dst ids must be distinct and disjoint from src (the block manager guarantees
    it: a copy-on-write target is a freshly allocated block).
    """
    if src.numel() == 0:
        return
    assert src.shape == dst.shape
    ks = [k_cache] if isinstance(k_cache, torch.Tensor) else list(k_cache)
    vs = [v_cache] if isinstance(v_cache, torch.Tensor) else list(v_cache)
    for cache in (*ks, *vs):
        cache.index_copy_(0, dst, cache.index_select(0, src))
