"""Triton paged prefill attention: a varlen batch of new tokens attending to their cached
prefix and causally to themselves (same contract as
kernels.paged_attention.paged_prefill_attention, the torch reference).

Design (flash-attention forward over a paged cache)
- Query tiles of BLOCK_M tokens of one sequence and one query head. The tiles of all sequences
  are numbered back to back without a host sync: sequence b's tiles start at
  cu_seqlens_q[b] // BLOCK_M + b (an upper bound of the tiles before it), so the grid is
  T // BLOCK_M + B programs and each program finds its sequence by binary search over
  cu_seqlens_q; programs past their sequence's last tile exit at once.
- Keys come from the cache (the new tokens' K/V are written first), BLOCK_N at a time, each
  token's page looked up in the block table. The loop covers only keys some query of the tile
  can see: from the window start of the tile's first query to the tile's last query.
- Online softmax in fp32; scores scaled, soft-capped, then masked (causal, window).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_common import dot_in_fp32, interpreting, online_softmax_step, paged_tile_scores


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, cu_seqlens_ptr, context_lens_ptr, block_tables_ptr, out_ptr,
    scale, softcap, window, num_seqs,
    stride_qt, stride_qh,
    stride_cb, stride_cs, stride_ch,
    stride_bt,
    stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0)
    head = tl.program_id(1)
    kvh = head // GROUP

    # the last sequence b with cu_seqlens[b] // BLOCK_M + b <= pid
    lo = 0
    hi = num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        first_tile = tl.load(cu_seqlens_ptr + mid).to(tl.int32) // BLOCK_M + mid
        if first_tile <= pid:
            lo = mid
        else:
            hi = mid - 1
    b = lo
    q_start = tl.load(cu_seqlens_ptr + b).to(tl.int32)
    q_len = tl.load(cu_seqlens_ptr + b + 1).to(tl.int32) - q_start
    m0 = (pid - (q_start // BLOCK_M + b)) * BLOCK_M
    if m0 < q_len:
        ctx = tl.load(context_lens_ptr + b).to(tl.int32)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < q_len
        q_pos = ctx - q_len + offs_m
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        tok = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            q_ptr + tok[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
            mask=mask_m[:, None] & mask_d[None, :], other=0.0,
        )
        if DOT_FP32:
            q = q.to(tl.float32)

        last_pos = ctx - q_len + tl.minimum(m0 + BLOCK_M, q_len) - 1
        start = 0
        if USE_WINDOW:
            start = tl.maximum(ctx - q_len + m0 - window + 1, 0)
        end = last_pos + 1
        table = block_tables_ptr + b * stride_bt
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, tl.float32)
        acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        for n0 in range(start, end, BLOCK_N):
            s, v, offs_n, valid = paged_tile_scores(
                q, table, k_cache_ptr, v_cache_ptr, n0, end, kvh, offs_d, mask_d, scale, softcap,
                stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, USE_SOFTCAP, DOT_FP32,
            )
            visible = valid[None, :] & (offs_n[None, :] <= q_pos[:, None])
            if USE_WINDOW:
                visible = visible & (offs_n[None, :] > (q_pos - window)[:, None])
            s = tl.where(visible, s, float("-inf"))
            m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :],
        )


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention for B sequences' new tokens, flattened into q [T, H, D] -> [T, H, D].

    Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q, its last q_len positions out of
    context_lens[b] (the new K/V already in the cache). block_tables [B, max_blocks] may be padded.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    num_seqs = block_tables.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    block_d = max(16, triton.next_power_of_2(head_dim))
    if interpreting():
        block_m, block_n, warps = 16, 32, 4
    else:
        block_m, block_n = (64, 64) if block_d <= 128 else (32, 64)
        warps = 4 if block_d <= 64 else 8
    grid = (num_tokens // block_m + num_seqs, num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, out,
        float(scale), float(softcap or 0.0), int(sliding_window or 0), num_seqs,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, PAGE=block_size,
        BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_N=block_n,
        USE_WINDOW=sliding_window is not None, USE_SOFTCAP=bool(softcap), DOT_FP32=dot_in_fp32(q, k_cache),
        num_warps=warps,
    )
    return out
