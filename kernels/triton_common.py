"""What the Triton kernels share: the @triton.jit helpers of every paged-attention kernel (the
tile load through a block table, the online-softmax step, reductions, soft-capping) and the host
helpers that pick their launch parameters (interpreter or GPU, fp32 dots, program counts, tile
sizes). Imported by kernels/triton_paged_decode.py, triton_shared_prefix.py and
triton_paged_prefill.py; it imports none of them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_SPLIT_TOKENS = 256  # a split covers at least this many key positions
_CPU_TARGET_PROGRAMS = 8  # interpreter: pretend to be a small device


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except Exception:  # older triton
        import os

        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dot_in_fp32(*tensors: torch.Tensor) -> bool:
    """Whether kernels must upcast dot operands to fp32: always for fp32 data (so the dot is an
    IEEE fp32 product, not TF32), and in the interpreter, whose tl.dot mishandles bf16/fp16
    operands (it multiplies their raw bit patterns)."""
    return interpreting() or any(t.dtype == torch.float32 for t in tensors)


def target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return _CPU_TARGET_PROGRAMS


# Reductions through tl.reduce with triton's own combine functions rather than tl.max/tl.sum/
# tl.zeros: those are themselves @triton.jit functions, decorated when triton is imported, and the
# interpreter cannot call them if triton was imported before TRITON_INTERPRET was set (as in a
# pytest process where transformers imported triton first). The interpreter maps these combine
# functions to numpy; compiled, this is exactly what tl.max / tl.min / tl.sum do.
@triton.jit
def reduce_max(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def reduce_min(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@triton.jit
def reduce_sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def softcap_scores(s, softcap):
    """softcap * tanh(s / softcap), with tanh(x) = 1 - 2 / (exp(2x) + 1) (saturates cleanly)."""
    return softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))


@triton.jit
def paged_tile_scores(
    q, table, k_cache_ptr, v_cache_ptr, n0, end, kvh, offs_d, mask_d, scale, softcap,
    stride_cb, stride_cs, stride_ch,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, USE_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Keys n0 .. n0+BLOCK_N (those < end) of one KV head, read through the block table `table`:
    the scores q.k * scale (soft-capped when asked), the values, the key positions and which of
    them are real (< end). The tile load every paged kernel here shares."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    valid = offs_n < end
    page = tl.load(table + offs_n // PAGE, mask=valid, other=0).to(tl.int64)
    kv_off = page[:, None] * stride_cb + (offs_n % PAGE)[:, None] * stride_cs + kvh * stride_ch + offs_d[None, :]
    kv_mask = valid[:, None] & mask_d[None, :]
    k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    if USE_SOFTCAP:
        s = softcap_scores(s, softcap)
    return s, v, offs_n, valid


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc):
    """One tile of the streaming softmax: fold scores s (-inf where masked) and values v into the
    running max m_i, normaliser l_i and output acc. A row that has seen no key yet keeps m = -inf
    (exponents are then taken against 0, so nothing becomes NaN)."""
    m_new = tl.maximum(m_i, reduce_max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + reduce_sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    return m_new, l_i, acc


def block_n_for(block_size: int) -> int:
    return 32 if interpreting() else max(64, block_size)
