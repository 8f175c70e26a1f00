"""KV-cache and attention ops. The pure-torch versions here are the CPU backend and the test
oracle; GPU kernels (Triton, kernels/triton_*.py) live beside them with the same signatures, and
`get_ops(backend, device)` picks one set."""

from kernels.backend import BackendError, get_ops
from kernels.copy_blocks import copy_blocks
from kernels.paged_attention import attend, merge_attention, paged_decode_attention, paged_prefill_attention
from kernels.shared_prefix import shared_prefix_decode_attention
from kernels.write_kv import write_kv

__all__ = [
    "BackendError",
    "attend",
    "copy_blocks",
    "get_ops",
    "merge_attention",
    "paged_decode_attention",
    "paged_prefill_attention",
    "shared_prefix_decode_attention",
    "write_kv",
]
