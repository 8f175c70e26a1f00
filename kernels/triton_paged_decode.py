"""Triton paged decode attention: one query token per sequence over its block table (same
contract as kernels.paged_attention.paged_decode_attention, the torch reference).

Design
- One program per (sequence, KV head, split). The program handles all GROUP query heads that
  share the KV head (GQA packing: the query tile is [GROUP padded to >= 16, head_dim]), so each
  K/V element is read once per sequence, whatever the GQA ratio.
- Split-K: a long context is cut into `num_splits` contiguous ranges of block-table columns.
  Each split writes its partial output and log-sum-exp (fp32) to a scratch buffer, and a second
  small kernel (`_merge_kernel`) combines the splits by log-sum-exp. With one split the first
  kernel writes the output directly and no merge runs.
- Keys are visited BLOCK_N tokens at a time; every token's page is looked up in the block table,
  so BLOCK_N need not equal the page size. A sliding window starts the loop at the first visible
  key (keys j with i - window < j <= i, HF semantics) so blocks wholly outside it are not read.
- Scores are fp32 (scale, then soft-cap softcap * tanh(s / softcap), then mask).
- The number of splits is chosen on the host from the block table's width (no device sync):
  enough programs to fill the GPU, each split at least MIN_SPLIT_TOKENS tokens.

The same kernel serves the shared-prefix (cascade) op: given per-row `first_blocks` it attends
only to the row's tail (table columns >= first_blocks[b]) and the merge kernel folds in the
prefix part's extra partial slots (kernels/triton_shared_prefix.py calls `launch_decode` and
`merge` here). The tile load, softmax step and launch helpers are in kernels/triton_common.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_common import (
    MIN_SPLIT_TOKENS,
    block_n_for,
    dot_in_fp32,
    online_softmax_step,
    paged_tile_scores,
    reduce_max,
    reduce_sum,
    target_programs,
)


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, context_lens_ptr, block_tables_ptr, first_blocks_ptr,
    out_ptr, part_out_ptr, part_lse_ptr,
    scale, softcap, window, cols_per_split,
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,
    stride_bt,
    stride_ob, stride_oh,
    stride_pb, stride_ph, stride_ps,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_FIRST: tl.constexpr, USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    DIRECT: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    b64 = b.to(tl.int64)

    ctx = tl.load(context_lens_ptr + b).to(tl.int32)
    first_col = 0
    if HAS_FIRST:
        first_col = tl.load(first_blocks_ptr + b).to(tl.int32)
    col_lo = first_col + split * cols_per_split
    start = col_lo * PAGE
    end = tl.minimum(ctx, (col_lo + cols_per_split) * PAGE)
    if USE_WINDOW:
        start = tl.maximum(start, ctx - window)  # query at ctx - 1 sees keys j > ctx - 1 - window

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_g
    q = tl.load(
        q_ptr + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_g[:, None] & mask_d[None, :], other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_G], 0.0, tl.float32)
    acc = tl.full([BLOCK_G, BLOCK_D], 0.0, tl.float32)
    table = block_tables_ptr + b64 * stride_bt
    for n0 in range(start, end, BLOCK_N):
        s, v, offs_n, valid = paged_tile_scores(
            q, table, k_cache_ptr, v_cache_ptr, n0, end, kvh, offs_d, mask_d, scale, softcap,
            stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, USE_SOFTCAP, DOT_FP32,
        )
        s = tl.where(valid[None, :], s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    out_mask = mask_g[:, None] & mask_d[None, :]
    if DIRECT:
        tl.store(
            out_ptr + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty), mask=out_mask,
        )
    else:
        lse = tl.where(l_i > 0, m_i + tl.log(l_safe), float("-inf"))  # -inf: the split saw no key
        base = b64 * stride_pb + heads * stride_ph + split * stride_ps
        tl.store(part_out_ptr + base[:, None] + offs_d[None, :], out, mask=out_mask)
        # part_lse [B, H, S] is part_out [B, H, S, D] (contiguous) without its last dim
        tl.store(part_lse_ptr + base // HEAD_DIM, lse, mask=mask_g)


@triton.jit
def _merge_kernel(
    part_out_ptr, part_lse_ptr, first_blocks_ptr, out_ptr,
    num_tail_splits, num_total_splits,
    stride_pb, stride_ph, stride_ps, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_FIRST: tl.constexpr,
):
    """out[b, h] = sum_s w_s * o_s / sum_s w_s with w_s = exp(lse_s - max lse). Slots at and
    after num_tail_splits (the shared-prefix parts) count only for rows in a group
    (first_blocks[b] > 0); a row that saw no key at all gets 0."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    n_valid = num_tail_splits
    if HAS_FIRST:
        in_group = tl.load(first_blocks_ptr + b) > 0
        n_valid = tl.where(in_group, num_total_splits, num_tail_splits)
    mask_s = offs_s < n_valid
    base = b * stride_pb + h * stride_ph + offs_s * stride_ps
    lse = tl.load(part_lse_ptr + base // HEAD_DIM, mask=mask_s, other=float("-inf"))
    top = reduce_max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(lse - top)  # 0 for empty slots
    o = tl.load(part_out_ptr + base[:, None] + offs_d[None, :], mask=mask_s[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    total = reduce_sum(w, 0)
    total = tl.where(total > 0, total, 1.0)
    merged = reduce_sum(o * w[:, None], 0) / total
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d, merged.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def choose_splits(batch: int, num_kv_heads: int, max_cols: int, block_size: int, device: torch.device) -> int:
    """How many splits for a context of up to max_cols blocks (host-only, no device sync)."""
    max_tokens = max_cols * block_size
    if max_tokens <= MIN_SPLIT_TOKENS:
        return 1
    want = triton.cdiv(target_programs(device), max(batch * num_kv_heads, 1))
    return max(1, min(want, triton.cdiv(max_tokens, MIN_SPLIT_TOKENS)))


def launch_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
    out: torch.Tensor,
    *,
    first_blocks: torch.Tensor | None = None,
    max_cols: int | None = None,
    num_splits: int | None = None,
    extra_slots: int = 0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """Run the decode kernel over table columns [first_blocks[b], ...) of every row.

    Without extra_slots and with one split, writes `out` directly and returns (None, None, 1).
    Otherwise returns the fp32 scratch (part_out [B, H, S + extra_slots, D], part_lse
    [B, H, S + extra_slots]) with slots 0..S-1 filled, and S; the caller fills the extra slots
    and runs `merge`.
    """
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    if max_cols is None:
        max_cols = block_tables.shape[1]
    if num_splits is None:
        num_splits = choose_splits(batch, num_kv_heads, max_cols, block_size, q.device)
    num_splits = max(1, min(num_splits, max(max_cols, 1)))
    cols_per_split = max(triton.cdiv(max_cols, num_splits), 1)
    num_splits = max(triton.cdiv(max_cols, cols_per_split), 1)
    direct = num_splits == 1 and extra_slots == 0
    if direct:
        part_out = part_lse = None
        p_args = (out, out)
        p_strides = (0, 0, 0)
    else:
        slots = num_splits + extra_slots
        part_out = torch.empty(batch, num_heads, slots, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(batch, num_heads, slots, dtype=torch.float32, device=q.device)
        p_args = (part_out, part_lse)
        p_strides = part_out.stride()[:3]
    block_g = max(16, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (batch, num_kv_heads, num_splits)
    if batch:
        _decode_kernel[grid](
            q, k_cache, v_cache, context_lens, block_tables,
            first_blocks if first_blocks is not None else context_lens,
            out, *p_args,
            float(scale), float(softcap or 0.0), int(sliding_window or 0), cols_per_split,
            q.stride(0), q.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            block_tables.stride(0),
            out.stride(0), out.stride(1),
            *p_strides,
            GROUP=group, HEAD_DIM=head_dim, PAGE=block_size,
            BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_N=block_n_for(block_size),
            HAS_FIRST=first_blocks is not None, USE_WINDOW=sliding_window is not None,
            USE_SOFTCAP=bool(softcap), DIRECT=direct, DOT_FP32=dot_in_fp32(q, k_cache),
        )
    return part_out, part_lse, num_splits


def merge(
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    num_tail_splits: int,
    out: torch.Tensor,
    first_blocks: torch.Tensor | None = None,
) -> None:
    batch, num_heads, slots, head_dim = part_out.shape
    if batch == 0:
        return
    assert part_lse.stride(2) * head_dim == part_out.stride(2) and part_out.is_contiguous() and part_lse.is_contiguous()
    _merge_kernel[(batch, num_heads)](
        part_out, part_lse, first_blocks if first_blocks is not None else part_lse, out,
        num_tail_splits, slots,
        *part_out.stride()[:3], out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_S=max(2, triton.next_power_of_2(slots)),
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), HAS_FIRST=first_blocks is not None,
    )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention for one new token per sequence: q [B, H, D] -> [B, H, D] (q's dtype).

    Row b's query sits at position context_lens[b] - 1 (its K/V already written). block_tables
    [B, max_blocks] may be padded with -1 or 0 (padding is never read). Batches with shared
    prefixes have kernels.triton_shared_prefix.shared_prefix_decode_attention.
    `num_splits` overrides the split-K heuristic (tests, benchmarks).
    """
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    part_out, part_lse, splits = launch_decode(
        q, k_cache, v_cache, context_lens, block_tables, scale, sliding_window, softcap, out, num_splits=num_splits
    )
    if part_out is not None:
        merge(part_out, part_lse, splits, out)
    return out
