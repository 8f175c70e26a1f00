"""Attention over a paged KV cache, in plain torch: the CPU backend and the oracle for GPU kernels.

Cache layout (per layer): [num_blocks, block_size, num_kv_heads, head_dim] for K and for V. A
sequence's token at position p lives in block `block_tables[b, p // block_size]`, offset
`p % block_size`. Queries are grouped by KV head ([kv_heads, group, ...]) so GQA needs no
repeat of K/V. Scores are computed in float32 whatever the cache dtype.

Masking follows HF transformers: a query at position i sees keys j <= i, and with a sliding
window W only keys with i - W < j. Logit soft-capping is softcap * tanh(score / softcap),
applied after scaling and before masking, as HF's eager attention does.
"""

from __future__ import annotations

from typing import Sequence

import torch


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


def _decode_tail(
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
    *,
    shared_prefixes: Sequence[tuple[torch.Tensor, int]] = (),
) -> torch.Tensor:
    """Attention for one new token per sequence: q [B, H, D] -> [B, H, D].

    Row b's query sits at position context_lens[b] - 1 (its K/V already written).

    shared_prefixes (optional, the cascade path): a list of (rows, num_blocks) meaning that rows
    `rows` (int64 indices into the batch) have identical first `num_blocks` entries in their
    block tables - the samples forked from one prompt. Those blocks are gathered once and all the
    group's queries attend to them in one matmul; each row's own tail is attended separately and
    the two parts are merged by log-sum-exp. The result equals the plain path up to rounding.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert group * num_kv_heads == num_heads, "query heads must be a multiple of KV heads"
    block_size = k_cache.shape[1]
    first_blocks = torch.zeros(batch, dtype=torch.long, device=q.device)
    prefix_parts = []
    for rows, num_blocks in shared_prefixes:
        if num_blocks <= 0 or rows.numel() == 0:
            continue
        if sliding_window is not None and int(context_lens[rows].min()) - sliding_window >= num_blocks * block_size:
            continue  # the whole prefix is out of every row's window
        first_blocks[rows] = num_blocks
        n = rows.numel()
        ids = block_tables[rows[0], :num_blocks].clamp(min=0)
        keys = k_cache[ids].flatten(0, 1).transpose(0, 1)  # [kvH, P, D]
        values = v_cache[ids].flatten(0, 1).transpose(0, 1)
        qg = q[rows].view(n, num_kv_heads, group, head_dim).permute(1, 0, 2, 3).reshape(num_kv_heads, n * group, head_dim)
        mask = None
        if sliding_window is not None:
            k_pos = torch.arange(num_blocks * block_size, device=q.device)
            q_pos = (context_lens[rows] - 1).repeat_interleave(group)
            mask = (k_pos[None, :] > (q_pos - sliding_window)[:, None]).unsqueeze(0)
        o, lse = attend(qg, keys, values, mask, scale, softcap)  # [kvH, n*G, D], [kvH, n*G]
        o = o.view(num_kv_heads, n, group, head_dim).permute(1, 0, 2, 3)
        lse = lse.view(num_kv_heads, n, group).permute(1, 0, 2)
        prefix_parts.append((rows, o, lse))
    out, lse = _decode_tail(q, k_cache, v_cache, context_lens, block_tables, first_blocks, scale, sliding_window, softcap)
    for rows, o_prefix, lse_prefix in prefix_parts:
        out[rows] = merge_attention(o_prefix, lse_prefix, out[rows], lse[rows])
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)
