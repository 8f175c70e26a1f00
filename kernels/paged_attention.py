"""Attention over a paged KV cache, in plain torch: the CPU backend and the oracle for GPU kernels.

Cache layout (per layer): [num_blocks, block_size, num_kv_heads, head_dim] for K and for V. A
sequence's token at position p lives in block `block_tables[b, p // block_size]`, offset
`p % block_size`. Queries are grouped by KV head ([kv_heads, group, ...]) so GQA needs no
repeat of K/V. Scores are computed in float32 whatever the cache dtype.

Masking follows HF transformers: a query at position i sees keys j <= i, and with a sliding
window W only keys with i - W < j. Logit soft-capping is softcap * tanh(score / softcap),
applied after scaling and before masking, as HF's eager attention does.

Fast paths (no soft-capping): on CPU the dense attention of each piece runs in torch's fused
flash-attention kernel (`_sdpa_lse`), and decode rows are attended by a `DecodePlan` - built once
per step from host-side lists and used by every layer - that reads each fork group's shared prefix
once for the whole group, reads contiguous block runs as views instead of gathering them, and
merges prefix and tail by their log-sum-exp. The general path below is the oracle they equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention with a boolean mask (True = visible); returns (out, lse).

    q [..., M, D], k and v [..., L, D] (batch dims broadcast), mask broadcastable to [..., M, L].
    out [..., M, D] in float32, lse [..., M] (the log-sum-exp of the visible scores, -inf for a
    row that sees nothing; such a row's output is 0) so partial results can be merged.
    """
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - finite_lse.unsqueeze(-1))
    return torch.matmul(probs, v.float()), lse


def merge_attention(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> torch.Tensor:
    """Combine attention over two disjoint key sets, given each part's output and log-sum-exp."""
    top = torch.maximum(lse_a, lse_b)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w_a = torch.exp(lse_a - top).unsqueeze(-1)
    w_b = torch.exp(lse_b - top).unsqueeze(-1)
    return (out_a * w_a + out_b * w_b) / (w_a + w_b)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_flash_cpu = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _sdpa_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attend` without soft-capping, fused: q [B, h, M, D], k and v [B, h, L, D] (views with a
    unit last stride are fine), mask an additive float mask broadcastable to [B, 1, M, L] with at
    least one visible key per row. Returns (out [B, h, M, D] float32, lse [B, h, M])."""
    if _flash_cpu is not None and q.device.type == "cpu":
        out, lse = _flash_cpu(q, k, v, 0.0, False, attn_mask=None if mask is None else mask.to(q.dtype), scale=scale)[:2]
        return out.float(), lse
    return attend(q, k, v, None if mask is None else mask == 0, scale)


def _blocks(cache: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """cache[ids] as [len(ids) * block_size, kvH, D]: a view when the ids are one ascending run."""
    first = ids[0]
    if ids[-1] - first == len(ids) - 1 and all(b == first + i for i, b in enumerate(ids)):
        return cache[first : first + len(ids)].flatten(0, 1)
    return cache.index_select(0, torch.tensor(ids, device=cache.device)).flatten(0, 1)


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

    Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q, which are its last q_len
    positions out of context_lens[b] (cached prefix + new tokens; the new K/V must already be in
    the cache). block_tables [B, max_blocks] may be padded with -1 or 0.
    """
    num_tokens, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    out = torch.empty(num_tokens, num_heads, head_dim, dtype=q.dtype, device=q.device)
    starts, lens = cu_seqlens_q.tolist(), context_lens.tolist()
    if softcap is None:
        tables = block_tables.tolist()
        for b, ctx in enumerate(lens):
            q_len = starts[b + 1] - starts[b]
            if q_len:
                out[starts[b] : starts[b + 1]] = _prefill_one(
                    q[starts[b] : starts[b + 1]], k_cache, v_cache, ctx, tables[b], scale, sliding_window
                )
        return out
    for b, ctx in enumerate(lens):
        q_start, q_end = starts[b], starts[b + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        first_q_pos = ctx - q_len
        # keys before the first query's window are never visible: do not gather them
        first_key = 0 if sliding_window is None else max(0, first_q_pos - sliding_window + 1)
        first_block = first_key // block_size
        ids = block_tables[b, first_block:_cdiv(ctx, block_size)].clamp(min=0)
        k_pos = torch.arange(first_block * block_size, ctx, device=q.device)
        keys = k_cache[ids].flatten(0, 1)[: k_pos.numel()]  # [L, kvH, D]
        values = v_cache[ids].flatten(0, 1)[: k_pos.numel()]
        q_pos = torch.arange(first_q_pos, ctx, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
        qb = q[q_start:q_end].view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        o, _ = attend(qb, keys.transpose(0, 1).unsqueeze(1), values.transpose(0, 1).unsqueeze(1), mask, scale, softcap)
        out[q_start:q_end] = o.permute(2, 0, 1, 3).reshape(q_len, num_heads, head_dim).to(q.dtype)
    return out


def _prefill_one(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx: int, table: list[int], scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One sequence's last q_len positions of ctx, causal, through torch's SDPA (GQA without a
    K/V repeat); keys in one ascending block run are read in place."""
    q_len, block_size = q.shape[0], k_cache.shape[1]
    first_q_pos = ctx - q_len
    first_key = 0 if sliding_window is None else max(0, first_q_pos - sliding_window + 1)
    first_block = first_key // block_size
    ids = [max(b, 0) for b in table[first_block : _cdiv(ctx, block_size)]]
    num_keys = ctx - first_block * block_size
    keys = _blocks(k_cache, ids)[:num_keys].transpose(0, 1).unsqueeze(0)  # [1, kvH, L, D]
    values = _blocks(v_cache, ids)[:num_keys].transpose(0, 1).unsqueeze(0)
    mask, causal = None, first_q_pos == 0 and first_block == 0 and (sliding_window is None or sliding_window >= ctx)
    if not causal:
        k_pos = torch.arange(first_block * block_size, ctx, device=q.device)
        q_pos = torch.arange(first_q_pos, ctx, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, is_causal=causal,
        scale=scale, enable_gqa=True,
    )
    return o[0].transpose(0, 1)


def decode_tail(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    first_blocks: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per row against keys from block first_blocks[b] to the end of the context.

    Returns (out [B, kvH, G, D] float32, lse [B, kvH, G]). Rows are padded to the longest tail.
    """
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    q_pos = context_lens - 1
    if sliding_window is not None:  # skip blocks wholly outside the window
        first_blocks = torch.maximum(first_blocks, (q_pos - sliding_window + 1).clamp(min=0) // block_size)
    last_blocks = (context_lens + block_size - 1) // block_size
    num_blocks = max(int((last_blocks - first_blocks).max()), 1)
    cols = first_blocks[:, None] + torch.arange(num_blocks, device=q.device)[None, :]  # [B, nb]
    ids = block_tables.gather(1, cols.clamp(max=block_tables.shape[1] - 1)).clamp(min=0)
    keys = k_cache[ids].view(batch, num_blocks * block_size, num_kv_heads, head_dim)
    values = v_cache[ids].view(batch, num_blocks * block_size, num_kv_heads, head_dim)
    k_pos = (cols[:, :, None] * block_size + torch.arange(block_size, device=q.device)).view(batch, -1)
    mask = (k_pos < context_lens[:, None]) & (k_pos >= first_blocks[:, None] * block_size)
    if sliding_window is not None:
        mask &= k_pos > (q_pos - sliding_window)[:, None]
    qg = q.view(batch, num_kv_heads, group, head_dim)
    return attend(qg, keys.transpose(1, 2), values.transpose(1, 2), mask[:, None, None, :], scale, softcap)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention for one new token per sequence: q [B, H, D] -> [B, H, D].

    Row b's query sits at position context_lens[b] - 1 (its K/V already written). Batches whose
    rows share prefix blocks have kernels.shared_prefix.shared_prefix_decode_attention, which
    gives the same result reading each shared prefix once.
    """
    if softcap is None and sliding_window is None:
        block_size = k_cache.shape[1]
        lens = context_lens.tolist()
        tables = [row[: _cdiv(n, block_size)] for row, n in zip(block_tables.tolist(), lens)]
        plan = plan_decode(lens, tables, [], block_size, q.device)
        return planned_decode_attention(q, k_cache, v_cache, plan, scale)
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    first_blocks = torch.zeros(batch, dtype=torch.long, device=q.device)
    out, _ = decode_tail(q, k_cache, v_cache, context_lens, block_tables, first_blocks, scale, sliding_window, softcap)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


# --- the planned decode path ---------------------------------------------------------------------


@dataclass(slots=True)
class DecodeGroup:
    """Decode rows attended together: a fork group sharing `prefix` (the ids of its common full
    blocks, or a slice when they are one ascending run), or rows with no shared prefix."""

    rows: slice | torch.Tensor  # decode rows (a slice when consecutive)
    num_rows: int
    prefix: slice | torch.Tensor | None  # shared prefix blocks, read once for the whole group
    prefix_tokens: int
    tail_ids: torch.Tensor  # [num_rows * tail_blocks]: each row's blocks after the prefix, padded
    tail_blocks: int
    tail_tokens: int | None  # every row's tail length when they are equal (no mask needed)
    tail_mask: torch.Tensor | None  # else an additive mask [num_rows, 1, 1, tail_blocks * block_size]


@dataclass(slots=True)
class DecodePlan:
    num_rows: int
    groups: list[DecodeGroup]
    # one K and one V buffer the tails are gathered into, reused by every group and layer of the
    # step: the gather then writes to memory that is already in cache (about 3x faster than into
    # a fresh tensor), and the attention reads it from there
    scratch: list[torch.Tensor] = field(default_factory=list)

    def gather_tails(self, cache: torch.Tensor, ids: torch.Tensor, which: int) -> torch.Tensor:
        """cache[ids] written into scratch buffer `which` (0: K, 1: V)."""
        if not self.scratch or self.scratch[0].shape[1:] != cache.shape[1:] or self.scratch[0].dtype != cache.dtype:
            blocks = max(g.tail_ids.numel() for g in self.groups)
            self.scratch = [cache.new_empty((blocks, *cache.shape[1:])) for _ in range(2)]
        return torch.index_select(cache, 0, ids, out=self.scratch[which][: ids.numel()])


def _rows_index(rows: list[int], device) -> slice | torch.Tensor:
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, dtype=torch.long, device=device)


def plan_decode(
    context_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    shared_prefixes: Sequence[tuple[Sequence[int], int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> DecodePlan:
    """Host-side bookkeeping for `planned_decode_attention`, done once per step: row b has
    context_lens[b] tokens in blocks block_tables[b]; shared_prefixes as in
    kernels.shared_prefix.shared_prefix_decode_attention (rows, num_blocks). A group's prefix is
    cut so that every row keeps at least one key of its own."""
    groups, grouped = [], set()
    for rows, num_blocks in shared_prefixes:
        rows = [r for r in rows if r not in grouped]
        if not rows:
            continue
        num_blocks = min(num_blocks, *((context_lens[r] - 1) // block_size for r in rows))
        if num_blocks <= 0 or len(rows) < 2:
            continue
        grouped.update(rows)
        groups.append(_group(rows, num_blocks, context_lens, block_tables, block_size, device))
    rest = [r for r in range(len(context_lens)) if r not in grouped]
    if rest:
        groups.append(_group(rest, 0, context_lens, block_tables, block_size, device))
    return DecodePlan(len(context_lens), groups)


def _group(rows, num_blocks, context_lens, block_tables, block_size, device) -> DecodeGroup:
    prefix = None
    if num_blocks:
        ids = list(block_tables[rows[0]][:num_blocks])
        prefix = (slice(ids[0], ids[0] + num_blocks) if ids == list(range(ids[0], ids[0] + num_blocks))
                  else torch.tensor(ids, dtype=torch.long, device=device))
    tails = [context_lens[r] - num_blocks * block_size for r in rows]
    width = _cdiv(max(tails), block_size)
    ids = []
    for r in rows:
        own = [max(b, 0) for b in block_tables[r][num_blocks : num_blocks + width]]
        ids += own + [own[-1]] * (width - len(own))
    equal = all(t == tails[0] for t in tails)
    mask = None
    if not equal:
        visible = torch.arange(width * block_size)[None, :] < torch.tensor(tails)[:, None]
        mask = torch.zeros(len(rows), 1, 1, width * block_size).masked_fill_(~visible[:, None, None, :], float("-inf"))
        mask = mask.to(device)
    return DecodeGroup(
        rows=_rows_index(rows, device), num_rows=len(rows), prefix=prefix, prefix_tokens=num_blocks * block_size,
        tail_ids=torch.tensor(ids, dtype=torch.long, device=device), tail_blocks=width,
        tail_tokens=tails[0] if equal else None, tail_mask=mask,
    )


def planned_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: DecodePlan, scale: float
) -> torch.Tensor:
    """paged_decode_attention (no window, no soft-capping) following a precomputed plan: per
    group, the rows' own tails in one fused attention, the shared prefix in one attention of all
    the group's queries, and the two merged by log-sum-exp. Each group's data stays in cache."""
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    assert batch == plan.num_rows, "the plan was made for another batch"
    out = torch.empty_like(q)
    for g in plan.groups:
        n = g.num_rows
        qg = (q[g.rows] if isinstance(g.rows, slice) else q.index_select(0, g.rows)).view(n, num_kv_heads, group, head_dim)
        span = g.tail_blocks * block_size
        keys = plan.gather_tails(k_cache, g.tail_ids, 0).view(n, span, num_kv_heads, head_dim)
        values = plan.gather_tails(v_cache, g.tail_ids, 1).view(n, span, num_kv_heads, head_dim)
        if g.tail_tokens is not None:
            keys, values = keys[:, : g.tail_tokens], values[:, : g.tail_tokens]
        o, lse = _sdpa_lse(qg, keys.transpose(1, 2), values.transpose(1, 2), scale, g.tail_mask)  # [n, kvH, G, D]
        if g.prefix is not None:
            if isinstance(g.prefix, slice):
                pk, pv = k_cache[g.prefix].flatten(0, 1), v_cache[g.prefix].flatten(0, 1)
            else:
                pk, pv = k_cache.index_select(0, g.prefix).flatten(0, 1), v_cache.index_select(0, g.prefix).flatten(0, 1)
            qp = qg.permute(1, 0, 2, 3).reshape(1, num_kv_heads, n * group, head_dim)
            op, lse_p = _sdpa_lse(qp, pk.transpose(0, 1).unsqueeze(0), pv.transpose(0, 1).unsqueeze(0), scale)
            op = op.view(num_kv_heads, n, group, head_dim).transpose(0, 1)
            lse_p = lse_p.view(num_kv_heads, n, group).transpose(0, 1)
            # softmax over both parts = the parts weighted by their shares of the total mass
            o = torch.lerp(o, op, torch.sigmoid(lse_p - lse).unsqueeze(-1))
        o = o.reshape(n, num_heads, head_dim).to(q.dtype)
        if isinstance(g.rows, slice):
            out[g.rows] = o
        else:
            out.index_copy_(0, g.rows, o)
    return out
