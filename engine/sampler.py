"""Token sampling with per-sample, counter-based randomness.

Each sample owns a 64-bit seed. Its k-th draw is a pure function of (seed, k): a SplitMix64 hash
turned into a uniform in [0, 1), used for inverse-CDF sampling over the filtered distribution.
So a sample's tokens do not depend on which other sequences share its batch, on preemption and
recompute, or on resuming a run — and the hf backend, which uses this same function, draws the
same tokens as the engine when the logits agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, doc id, sample index, ...); not seed + i, so
    neighbouring samples and neighbouring runs do not share streams."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def uniforms(seeds: np.ndarray | list[int], steps: np.ndarray | list[int]) -> torch.Tensor:
    """U[0,1) for each (seed, step) pair, float64. SplitMix64 finaliser over seed ^ step-mix."""
    with np.errstate(over="ignore"):
        s = np.asarray(seeds, dtype=np.uint64)
        k = np.asarray(steps, dtype=np.uint64)
        z = s + (k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    u: torch.Tensor,
) -> torch.Tensor:
    """Pick one token per row of `logits` [B, V].

    temperature [B] (0 = greedy), top_k [B] int (0 = off), top_p [B], min_p [B] (0 = off),
    u [B] uniforms from `uniforms`. Ties resolve to the lowest token id (stable sort).
    """
    logits = logits.float()
    out = torch.argmax(logits, dim=-1)
    sampled = temperature > 0
    if not bool(sampled.any()):
        return out
    rows = sampled.nonzero().squeeze(1)
    x = logits[rows] / temperature[rows].unsqueeze(1).to(logits.dtype)
    k = top_k[rows]
    vocab = x.shape[-1]
    # A top-k bound lets us sort k entries instead of the vocabulary; top-p alone needs all of it.
    k_eff = vocab if bool((k <= 0).any()) else min(int(k.max()), vocab)
    if k_eff < vocab:
        vals, idx = torch.topk(x, k_eff, dim=-1, sorted=True)
        # topk breaks ties arbitrarily; re-sort equal values by token id for determinism
        order = torch.argsort(idx, dim=-1, stable=True)
        vals, idx = vals.gather(1, order), idx.gather(1, order)
        order = torch.argsort(vals, dim=-1, descending=True, stable=True)
        vals, idx = vals.gather(1, order), idx.gather(1, order)
    else:
        vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
    probs = torch.softmax(vals, dim=-1)
    rank = torch.arange(vals.shape[-1], device=vals.device).unsqueeze(0)
    keep = torch.ones_like(probs, dtype=torch.bool)
    keep &= (k.unsqueeze(1) <= 0) | (rank < k.unsqueeze(1))
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above this token
    keep &= before < top_p[rows].unsqueeze(1).to(probs.dtype)
    keep &= probs >= min_p[rows].unsqueeze(1).to(probs.dtype) * probs[:, :1]
    keep[:, 0] = True
    probs = torch.where(keep, probs, torch.zeros_like(probs)).double()
    cdf = torch.cumsum(probs, dim=-1)
    target = (u[rows].to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=vals.shape[-1] - 1)
    out[rows] = idx.gather(1, pick).squeeze(1)
    return out
