"""Triton shared-prefix (cascade / Hydragen-style) decode attention.

Contract (identical to kernels.shared_prefix.shared_prefix_decode_attention, the torch oracle):

    shared_prefix_decode_attention(q, k_cache, v_cache, context_lens, block_tables, scale,
                                   sliding_window=None, softcap=None, *, shared_prefixes)
    -> [B, H, D], equal (up to rounding) to paged_decode_attention on the same inputs.

`shared_prefixes` is a list of (rows, num_blocks): `rows` (int64 tensor of decode-row indices)
name the rows of one group; their block tables agree on the first `num_blocks` columns, so they
share key positions [0, num_blocks * block_size) - whole blocks, block-table columns, nothing
finer. Groups are disjoint; a row in no group is attended plainly; a group of one row is
allowed; groups with num_blocks <= 0 or no rows are ignored. The engine only shares full blocks
that lie before every row's query (context_lens[r] >= num_blocks * block_size, so a row's own
"suffix" - positions num_blocks * block_size .. context_lens[r] - 1 - may be as short as the
query itself); this kernel also masks prefix keys at or beyond a row's context length, so it
stays exact even if a row's context ends inside the shared blocks.

How
1. `_prefix_kernel`: one program per (query tile of a group, KV head, prefix split). A group's
   queries - n rows x GROUP query heads of one KV head - form the M dimension of a matmul
   against the prefix keys, read through the group's (first row's) block table: the prefix KV
   is read once per group and split, not once per sample. Each query row keeps its own causal
   and sliding-window mask (rows sit at different positions), and the loop starts at the group's
   earliest visible key. Output: fp32 partial out + log-sum-exp per (row, head, split).
2. The plain decode kernel (kernels/triton_paged_decode.py) with per-row `first_blocks`
   (num_blocks for grouped rows, 0 otherwise) attends to each row's own tail, split-K as usual.
3. One merge kernel combines every row's tail splits and, for grouped rows, its prefix splits,
   by log-sum-exp. A split or part with no visible key has lse = -inf and weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

from kernels.triton_common import (
    MIN_SPLIT_TOKENS,
    block_n_for,
    dot_in_fp32,
    interpreting,
    online_softmax_step,
    paged_tile_scores,
    reduce_max,
    reduce_min,
    target_programs,
)
from kernels.triton_paged_decode import launch_decode, merge, paged_decode_attention


@triton.jit
def _prefix_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, context_lens_ptr, block_tables_ptr,
    rows_ptr, group_start_ptr, group_blocks_ptr, tile_group_ptr, tile_m0_ptr,
    part_out_ptr, part_lse_ptr,
    scale, softcap, window, num_prefix_splits, slot0,
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,
    stride_bt,
    stride_pb, stride_ph, stride_ps,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    grp = tl.load(tile_group_ptr + tile)
    m0 = tl.load(tile_m0_ptr + tile)
    r0 = tl.load(group_start_ptr + grp)
    n_rows = tl.load(group_start_ptr + grp + 1) - r0
    n_blocks = tl.load(group_blocks_ptr + grp).to(tl.int32)

    offs_m = m0 + tl.arange(0, BLOCK_M)  # query index within the group: row-major (row, head)
    mask_m = offs_m < n_rows * GROUP
    rows = tl.load(rows_ptr + r0 + offs_m // GROUP, mask=mask_m, other=0).to(tl.int64)
    heads = kvh * GROUP + offs_m % GROUP
    ctx = tl.load(context_lens_ptr + rows, mask=mask_m, other=0).to(tl.int32)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(
        q_ptr + rows[:, None] * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :], other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)

    # this split's prefix columns, cut to what any query of the tile can see
    cols_per_split = (n_blocks + num_prefix_splits - 1) // num_prefix_splits
    start = split * cols_per_split * PAGE
    end = tl.minimum(n_blocks, (split + 1) * cols_per_split) * PAGE
    end = tl.minimum(end, reduce_max(ctx, 0))  # causal: key j < context_len of some query
    if USE_WINDOW:
        start = tl.maximum(start, reduce_min(tl.where(mask_m, ctx, 2147483647), 0) - window)

    table = block_tables_ptr + tl.load(rows_ptr + r0).to(tl.int64) * stride_bt  # the group's shared columns
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for n0 in range(start, end, BLOCK_N):
        s, v, offs_n, valid = paged_tile_scores(
            q, table, k_cache_ptr, v_cache_ptr, n0, end, kvh, offs_d, mask_d, scale, softcap,
            stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, USE_SOFTCAP, DOT_FP32,
        )
        visible = valid[None, :] & (offs_n[None, :] < ctx[:, None])
        if USE_WINDOW:
            visible = visible & (offs_n[None, :] >= (ctx - window)[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    lse = tl.where(l_i > 0, m_i + tl.log(l_safe), float("-inf"))  # -inf where nothing was visible
    out = acc / l_safe[:, None]
    base = rows * stride_pb + heads * stride_ph + (slot0 + split) * stride_ps
    tl.store(part_out_ptr + base[:, None] + offs_d[None, :], out, mask=mask_m[:, None] & mask_d[None, :])
    tl.store(part_lse_ptr + base // HEAD_DIM, lse, mask=mask_m)


@dataclass(slots=True)
class SharedPrefixPlan:
    """Device-side description of the groups for one batch and GQA ratio (built on the host)."""

    rows: torch.Tensor  # [R] int64, the groups' rows back to back
    group_start: torch.Tensor  # [G + 1] int64 offsets into rows
    group_blocks: torch.Tensor  # [G] int64 shared block count
    tile_group: torch.Tensor  # [tiles] group of each query tile
    tile_m0: torch.Tensor  # [tiles] first query index (row * GROUP + head) of the tile
    first_blocks: torch.Tensor  # [B] int64, num_blocks for grouped rows, 0 otherwise
    block_m: int
    max_blocks: int
    num_groups: int


# (pairs, key, plan) of the last call: every layer of a step passes the same groups, so the plan
# is built once per step. `pairs` keeps the (rows, num_blocks) objects alive, so matching their
# ids means the same objects (their tensors must not be modified in place after the call).
_plan_cache: tuple | None = None


def plan_shared_prefixes(
    shared_prefixes: Sequence[tuple[torch.Tensor, int]], batch: int, group: int, device: torch.device
) -> SharedPrefixPlan | None:
    """Flatten (rows, num_blocks) pairs into the kernel's index arrays (one host->device copy).
    Returns None when no group has anything to share."""
    global _plan_cache
    pairs = tuple(shared_prefixes)
    key = (batch, group, str(device), tuple((id(rows), int(nb)) for rows, nb in pairs))
    if _plan_cache is not None and _plan_cache[1] == key:
        return _plan_cache[2]
    groups = [(rows, int(nb)) for rows, nb in shared_prefixes if int(nb) > 0 and rows.numel() > 0]
    if not groups:
        plan = None
    else:
        sizes = [int(rows.numel()) for rows, _ in groups]
        max_m = max(sizes) * group
        block_m = 16 if interpreting() else 64
        block_m = max(16, min(block_m, triton.next_power_of_2(max_m)))
        starts = [0]
        tile_group, tile_m0 = [], []
        for g, n in enumerate(sizes):
            starts.append(starts[-1] + n)
            for m0 in range(0, n * group, block_m):
                tile_group.append(g)
                tile_m0.append(m0)
        blocks = [nb for _, nb in groups]
        per_row = [nb for nb, n in zip(blocks, sizes) for _ in range(n)]
        ng, nt = len(groups), len(tile_group)
        packed = torch.tensor(starts + blocks + tile_group + tile_m0 + per_row, dtype=torch.int64).to(device, non_blocking=True)
        rows = torch.cat([r.reshape(-1).to(device=device, dtype=torch.int64) for r, _ in groups])
        first_blocks = torch.zeros(batch, dtype=torch.int64, device=device)
        o = 2 * ng + 1 + 2 * nt
        first_blocks.index_copy_(0, rows, packed[o:])
        plan = SharedPrefixPlan(
            rows=rows,
            group_start=packed[: ng + 1],
            group_blocks=packed[ng + 1 : 2 * ng + 1],
            tile_group=packed[2 * ng + 1 : 2 * ng + 1 + nt],
            tile_m0=packed[2 * ng + 1 + nt : o],
            first_blocks=first_blocks,
            block_m=block_m,
            max_blocks=max(blocks),
            num_groups=ng,
        )
    _plan_cache = (pairs, key, plan)
    return plan


def shared_prefix_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    *,
    shared_prefixes: Sequence[tuple[torch.Tensor, int]] = (),
    num_splits: int | None = None,
    num_prefix_splits: int | None = None,
) -> torch.Tensor:
    """Decode attention q [B, H, D] -> [B, H, D] with each group's shared prefix attended once per
    group (see the module docstring for the exact contract). num_splits / num_prefix_splits
    override the split heuristics for the tails / the prefix (tests, benchmarks)."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    plan = plan_shared_prefixes(shared_prefixes, batch, group, q.device) if shared_prefixes else None
    if plan is None:
        return paged_decode_attention(
            q, k_cache, v_cache, context_lens, block_tables, scale, sliding_window, softcap, num_splits=num_splits
        )
    num_tiles = plan.tile_group.numel()
    if num_prefix_splits is None:
        want = triton.cdiv(target_programs(q.device), num_tiles * num_kv_heads)
        num_prefix_splits = min(want, triton.cdiv(plan.max_blocks * block_size, MIN_SPLIT_TOKENS))
    num_prefix_splits = max(1, min(num_prefix_splits, plan.max_blocks))

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    part_out, part_lse, tail_splits = launch_decode(
        q, k_cache, v_cache, context_lens, block_tables, scale, sliding_window, softcap, out,
        first_blocks=plan.first_blocks, num_splits=num_splits, extra_slots=num_prefix_splits,
    )
    grid = (num_tiles, num_kv_heads, num_prefix_splits)
    _prefix_kernel[grid](
        q, k_cache, v_cache, context_lens, block_tables,
        plan.rows, plan.group_start, plan.group_blocks, plan.tile_group, plan.tile_m0,
        part_out, part_lse,
        float(scale), float(softcap or 0.0), int(sliding_window or 0), num_prefix_splits, tail_splits,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        *part_out.stride()[:3],
        GROUP=group, HEAD_DIM=head_dim, PAGE=block_size,
        BLOCK_M=plan.block_m, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_N=block_n_for(block_size),
        USE_WINDOW=sliding_window is not None, USE_SOFTCAP=bool(softcap), DOT_FP32=dot_in_fp32(q, k_cache),
    )
    merge(part_out, part_lse, tail_splits, out, first_blocks=plan.first_blocks)
    return out
