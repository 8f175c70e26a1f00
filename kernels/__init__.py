"""KV-cache and attention ops. The pure-torch versions here are the CPU backend and the test
oracle; GPU kernels (Triton) live beside them with the same signatures."""

from kernels.copy_blocks import copy_blocks
from kernels.paged_attention import attend, merge_attention, paged_decode_attention, paged_prefill_attention
from kernels.write_kv import write_kv

__all__ = [
    "attend",
    "copy_blocks",
    "merge_attention",
    "paged_decode_attention",
    "paged_prefill_attention",
    "write_kv",
]
