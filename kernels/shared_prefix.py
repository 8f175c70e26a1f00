"""`shared_prefix_decode_attention` in plain torch: the standalone form of the cascade path of
kernels.paged_attention.paged_decode_attention (the CPU backend's op and the Triton kernel's
oracle; same signature as kernels.triton_shared_prefix.shared_prefix_decode_attention).

Contract: `shared_prefixes` is a list of (rows, num_blocks) - rows (int64 decode-row indices) of
one group whose block tables agree on their first num_blocks columns, i.e. they share key
positions [0, num_blocks * block_size) as whole blocks. Groups are disjoint; rows in no group
are attended plainly; groups of one row are fine; num_blocks <= 0 or empty rows are ignored.
Every row of a group has context_lens[r] >= num_blocks * block_size (the shared blocks are full
and precede the row's query; the row's own suffix may be empty). The result equals
paged_decode_attention without `shared_prefixes`, up to rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kernels.paged_attention import paged_decode_attention


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
    return paged_decode_attention(
        q, k_cache, v_cache, context_lens, block_tables, scale, sliding_window, softcap,
        shared_prefixes=shared_prefixes,
    )
