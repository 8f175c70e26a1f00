"""A native forward for the llama and qwen2 families, over the weights of the loaded HF model.

Why: on CPU a decode step is a chain of matrix-vector products whose speed is set by how well
each one streams its weights from memory, plus ~50 small ops per layer of HF modeling code. Here
the q/k/v projections are one matrix and gate/up another (a wider product streams faster, and
two launches fewer per layer), the layer is a flat sequence of tensor ops, and the final norm
and output projection run only on the rows that sample.

The weights stay the HF model's Parameters: q/k/v (and gate/up) are copied once into one fused
tensor and each Parameter's data becomes a view into it, so `ModelRunner.load_weights` (in-place
RL updates) writes straight into the fused weights, and tied embeddings stay tied. The arithmetic
is HF's (same order of operations, float32 RMSNorm and rotary tables from the model's own
rotary module); only the products' blocking differs, so logits match HF's to rounding.

`model_impl="auto"` takes this path when `unsupported_reason(model)` is None, else the HF path.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionMetadata, paged_attention
from engine.cpu_tuning import onednn_available, onednn_linear
from kernels import cpu_gemv

FAMILIES = ("llama", "qwen2")


def unsupported_reason(model) -> str | None:
    """None when `model` can run natively, else one line saying what stops it."""
    cfg = model.config.get_text_config()
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILIES:
        return f"model_type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (native path: silu)"
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return "sliding-window layers (native path: full attention only)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return f"{type(model).__name__} does not have the .model.layers / .lm_head layout"
    return None


def _fuse(modules: list[torch.nn.Module], name: str) -> torch.Tensor | None:
    """Concatenate the modules' `name` tensors (weight or bias) along dim 0 into one tensor and
    make each Parameter's data a view of its rows. None when the modules have no such tensor."""
    parts = [getattr(m, name) for m in modules]
    if all(p is None for p in parts):
        return None
    assert all(p is not None for p in parts), f"some projections have a {name} and some do not"
    fused = torch.cat([p.detach() for p in parts], dim=0)
    first = 0
    for p in parts:
        rows = p.shape[0]
        p.data = fused[first : first + rows]
        first += rows
    return fused


class _Layer:
    __slots__ = ("idx", "ln1", "ln2", "eps1", "eps2", "qkv_w", "qkv_b", "o_w", "o_b", "gate_up_w", "gate_up_b",
                 "down_w", "down_b", "q_out", "kv_out", "num_heads", "num_kv_heads", "head_dim", "scale", "inter")

    def __init__(self, idx: int, layer, cfg):
        attn, mlp = layer.self_attn, layer.mlp
        self.idx = idx
        self.ln1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.ln2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.head_dim = attn.head_dim
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.scale = attn.scaling
        self.q_out, self.kv_out = attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0]
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        self.qkv_w, self.qkv_b = _fuse(projs, "weight"), _fuse(projs, "bias")
        self.o_w, self.o_b = attn.o_proj.weight, attn.o_proj.bias
        self.inter = mlp.gate_proj.weight.shape[0]
        self.gate_up_w, self.gate_up_b = _fuse([mlp.gate_proj, mlp.up_proj], "weight"), _fuse([mlp.gate_proj, mlp.up_proj], "bias")
        self.down_w, self.down_b = mlp.down_proj.weight, mlp.down_proj.bias
        assert self.o_w.is_contiguous() and self.down_w.is_contiguous(), "the products read weights row by row"


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op, HF's formula (weight * x * rsqrt(mean(x^2) + eps))
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)
    h = x.float()  # HF computes the statistic in float32 and scales in the input's dtype
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class NativeLlama:
    """forward(input_ids [1, T], positions [1, T], meta, logits_rows [R]) -> logits [R, V]."""

    def __init__(self, model):
        reason = unsupported_reason(model)
        assert reason is None, reason
        cfg = model.config.get_text_config()
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb  # the model's own rope (scaling types included)
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.lm_head_w, self.lm_head_b = model.lm_head.weight, getattr(model.lm_head, "bias", None)
        self.layers = [_Layer(i, layer, cfg) for i, layer in enumerate(inner.layers)]
        w = self.lm_head_w
        cpu32 = w.device.type == "cpu" and w.dtype == torch.float32
        # oneDNN's products are faster than MKL's on the CPUs measured (engine/cpu_tuning.py); steps
        # of at most MAX_ROWS tokens (decode with few sequences) stream the weights with our kernel
        self.wide = onednn_linear if cpu32 and onednn_available() else torch.nn.functional.linear
        self.skinny = cpu_gemv.load() if cpu32 else None

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.skinny is not None and 0 < x.shape[0] <= cpu_gemv.MAX_ROWS:
            return self.skinny(x, w, b)
        return self.wide(x, w, b)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                logits_rows: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        x = self.embed(input_ids[0])  # [T, hidden]
        cos, sin = self.rotary(x, positions)  # [1, T, D]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]: broadcast over heads
        T = x.shape[0]
        for L in self.layers:
            h = _rms_norm(x, L.ln1, L.eps1)
            qkv = lin(h, L.qkv_w, L.qkv_b)
            # queries and keys are rotated together: heads side by side, one set of ops
            qk = _rotate(qkv[:, : L.q_out + L.kv_out].view(T, L.num_heads + L.num_kv_heads, L.head_dim), cos, sin)
            v = qkv[:, L.q_out + L.kv_out :].view(T, L.num_kv_heads, L.head_dim)
            attn = paged_attention(qk[:, : L.num_heads], qk[:, L.num_heads :], v, L.idx, meta, L.scale)
            x = x + lin(attn.reshape(T, L.q_out), L.o_w, L.o_b)
            h = _rms_norm(x, L.ln2, L.eps2)
            gate_up = lin(h, L.gate_up_w, L.gate_up_b)
            h = torch.nn.functional.silu(gate_up[:, : L.inter]).mul_(gate_up[:, L.inter :])
            x = x + lin(h, L.down_w, L.down_b)
        x = _rms_norm(x[logits_rows], self.norm, self.norm_eps)
        return lin(x, self.lm_head_w, self.lm_head_b)
