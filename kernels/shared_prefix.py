"""`shared_prefix_decode_attention` in plain torch: decode attention that reads each fork
group's shared prefix once (the CPU backend's op and the Triton kernel's oracle; same signature
as kernels.triton_shared_prefix.shared_prefix_decode_attention).

Contract: `shared_prefixes` is a list of (rows, num_blocks) - rows (int64 decode-row indices) of
one group whose block tables agree on their first num_blocks columns, i.e. they share key
positions [0, num_blocks * block_size) as whole blocks. Groups are disjoint; rows in no group
are attended plainly; groups of one row are fine; num_blocks <= 0 or empty rows are ignored.
Every row of a group has context_lens[r] >= num_blocks * block_size (the shared blocks are full
and precede the row's query; the row's own suffix may be empty). The result equals
kernels.paged_attention.paged_decode_attention on the same inputs, up to rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kernels.paged_attention import attend, decode_tail, merge_attention, plan_decode, planned_decode_attention


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
) -> torch.Tensor:
    """Attention for one new token per sequence, q [B, H, D] -> [B, H, D], with each group's
    shared prefix blocks gathered once: all the group's queries attend to them in one matmul,
    each row's own tail is attended separately, and the two parts are merged by log-sum-exp.
    Without soft-capping or a window this is the planned path (kernels.paged_attention.DecodePlan).
    """
    if softcap is None and sliding_window is None:
        block_size = k_cache.shape[1]
        lens = context_lens.tolist()
        tables = [row[: -(-n // block_size)] for row, n in zip(block_tables.tolist(), lens)]
        plan = plan_decode(lens, tables, [(r.tolist(), nb) for r, nb in shared_prefixes], block_size, q.device)
        return planned_decode_attention(q, k_cache, v_cache, plan, scale)
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
    out, lse = decode_tail(q, k_cache, v_cache, context_lens, block_tables, first_blocks, scale, sliding_window, softcap)
    for rows, o_prefix, lse_prefix in prefix_parts:
        out[rows] = merge_attention(o_prefix, lse_prefix, out[rows], lse[rows])
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)
