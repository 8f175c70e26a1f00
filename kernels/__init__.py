"""KV-cache and attention ops. The pure-torch versions are the CPU backend and the test oracle;
GPU kernels (Triton) live beside them with the same signatures, and `get_ops(backend, device)`
picks one set.

    backend                  get_ops / resolve_backend: torch or triton for a device
    paged_attention          torch: paged prefill and decode attention (planned decode groups)
    shared_prefix            torch: decode with a fork group's shared prompt read once
    write_kv, copy_blocks    torch: KV slot writes, copy-on-write block copies
    triton_common            what the Triton kernels share (tile loads, online softmax)
    triton_paged_decode      Triton split-K paged decode with an LSE merge
    triton_shared_prefix     Triton cascade decode for fork groups
    triton_paged_prefill     Triton paged prefill
    triton_write_kv, triton_copy_blocks
"""

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
