"""Triton `copy_blocks`: copy whole KV blocks for copy-on-write (same contract as
kernels.copy_blocks.copy_blocks, the torch reference).

When every cache tensor given is a view into one storage (the runner's per-layer K/V are slices
of one [layers, 2, blocks, ...] tensor), one launch copies the blocks in every layer: each cache
is addressed as base + its element offset. Otherwise one launch per cache tensor.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import triton
import triton.language as tl

Caches = Union[torch.Tensor, Sequence[torch.Tensor]]

_CHUNK = 2048  # elements per program


@triton.jit
def _copy_blocks_kernel(
    cache_ptr, offsets_ptr, src_ptr, dst_ptr,
    BLOCK_ELEMS: tl.constexpr, CHUNK: tl.constexpr,
):
    pair = tl.program_id(0)
    cache = tl.program_id(1)
    chunk = tl.program_id(2)
    base = tl.load(offsets_ptr + cache)  # int64 element offset of this cache from cache_ptr
    src = tl.load(src_ptr + pair).to(tl.int64)
    dst = tl.load(dst_ptr + pair).to(tl.int64)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    mask = offs < BLOCK_ELEMS
    x = tl.load(cache_ptr + base + src * BLOCK_ELEMS + offs, mask=mask)
    tl.store(cache_ptr + base + dst * BLOCK_ELEMS + offs, x, mask=mask)


_offsets_cache: dict[tuple, torch.Tensor] = {}


def _offsets(caches: list[torch.Tensor]) -> torch.Tensor:
    key = tuple(c.data_ptr() for c in caches) + (caches[0].device,)
    t = _offsets_cache.get(key)
    if t is None:
        base, size = caches[0].data_ptr(), caches[0].element_size()
        t = torch.tensor([(c.data_ptr() - base) // size for c in caches], dtype=torch.int64, device=caches[0].device)
        if len(_offsets_cache) > 64:
            _offsets_cache.clear()
        _offsets_cache[key] = t
    return t


def copy_blocks(k_cache: Caches, v_cache: Caches, src: torch.Tensor, dst: torch.Tensor) -> None:
    """For every i, copy block src[i] onto block dst[i] in the K and V caches (one layer's or a
    list of layers'), in place. dst ids are distinct and disjoint from src."""
    if src.numel() == 0:
        return
    assert src.shape == dst.shape
    ks = [k_cache] if isinstance(k_cache, torch.Tensor) else list(k_cache)
    vs = [v_cache] if isinstance(v_cache, torch.Tensor) else list(v_cache)
    caches = ks + vs
    first = caches[0]
    for c in caches:
        assert c.is_contiguous() and c.shape == first.shape and c.dtype == first.dtype, "caches must match"
    block_elems = first[0].numel()
    chunk = min(_CHUNK, triton.next_power_of_2(block_elems))
    src = src.to(device=first.device)
    dst = dst.to(device=first.device)
    same_storage = all(
        c.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and (c.data_ptr() - first.data_ptr()) % c.element_size() == 0
        for c in caches
    )
    groups = [caches] if same_storage else [[c] for c in caches]
    for group in groups:
        grid = (src.numel(), len(group), triton.cdiv(block_elems, chunk))
        _copy_blocks_kernel[grid](group[0], _offsets(group), src, dst, BLOCK_ELEMS=block_elems, CHUNK=chunk)
