"""Triton `write_kv`: scatter new keys/values into the paged KV cache (same contract as
kernels.write_kv.write_kv, the torch reference).

One program per (token, chunk of kv_heads * head_dim elements). A slot of -1 (padding) writes
nothing. k/v may be strided views (the runner passes key[0].transpose(0, 1)); only the last dim
must be contiguous. The caches must be contiguous (they are addressed as flat slot arrays).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    t = tl.program_id(0)
    chunk = tl.program_id(1)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    # (not `offs < N & slot >= 0`: the interpreter turns a block & scalar of bools into int32)
    mask = offs < tl.where(slot >= 0, NUM_KV_HEADS * HEAD_DIM, 0)
    head = offs // HEAD_DIM
    dim = offs % HEAD_DIM
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + head * stride_kh + dim, mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + head * stride_vh + dim, mask=mask)
    dst = slot * (NUM_KV_HEADS * HEAD_DIM) + offs  # cache rows are [slot, kv_head, dim], contiguous
    tl.store(k_cache_ptr + dst, k, mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write token t's key/value into flat slot `slot_mapping[t]` of the caches, in place.

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] (contiguous).
    k, v: [T, num_kv_heads, head_dim]. slot_mapping: [T] int, -1 = do not write.
    """
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "caches are viewed as flat slot arrays"
    assert k.shape == v.shape and k.shape[0] == slot_mapping.shape[0]
    num_tokens, num_kv_heads, head_dim = k.shape
    assert k_cache.shape[2:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    if num_tokens == 0:
        return
    # a dtype change is rare (the model's K/V normally have the cache's dtype): do it in torch so
    # rounding is torch's round-to-nearest-even on every device (the interpreter truncates)
    if k.dtype != k_cache.dtype or k.stride(-1) != 1:
        k = k.to(k_cache.dtype).contiguous()
    if v.dtype != v_cache.dtype or v.stride(-1) != 1:
        v = v.to(v_cache.dtype).contiguous()
    width = num_kv_heads * head_dim
    block = min(triton.next_power_of_2(width), 4096)
    grid = (num_tokens, triton.cdiv(width, block))
    _write_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK=block,
    )
