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


# Draws are decided on the most likely tokens first; see `sample`.
NUM_CANDIDATES = 128


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

    The draw is inverse-CDF sampling over the filtered distribution in descending-probability
    order. Sorting the whole vocabulary for that is the slow part, so the NUM_CANDIDATES most
    likely tokens are sorted first: a row is settled by them when its filters cut inside them, or
    when its draw lands inside them; only the remaining rows sort the whole vocabulary
    (`_sample_sorted`). Both give the same token up to float rounding of the normaliser.
    """
    logits = logits.float()
    sampled = temperature > 0
    if not bool(sampled.any()):
        return torch.argmax(logits, dim=-1)
    if bool(sampled.all()):
        out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    else:
        out = torch.argmax(logits, dim=-1)
    if bool(sampled.all()):  # no row gathers (the common case)
        rows = slice(None)
        x = logits / temperature.unsqueeze(1).to(logits.dtype)
        k, p, m, ur = top_k, top_p.to(x.dtype), min_p.to(x.dtype), u.to(x.device)
    else:
        rows = sampled.nonzero().squeeze(1)
        x = logits[rows] / temperature[rows].unsqueeze(1).to(logits.dtype)
        k, p, m, ur = top_k[rows], top_p[rows].to(x.dtype), min_p[rows].to(x.dtype), u.to(rows.device)[rows]
    vocab = x.shape[-1]
    num = min(vocab, max(NUM_CANDIDATES, int(k.max())))
    vals, idx = _sorted_top(x, num)
    probs = torch.softmax(x, dim=-1).gather(1, idx)  # true probabilities (one fused pass, not logsumexp's four)
    keep = _keep_mask(probs, k, p, m)
    kept = torch.where(keep, probs, torch.zeros_like(probs)).double()
    cdf = torch.cumsum(kept, dim=-1)
    mass = cdf[:, -1]
    # the filters cut inside the candidates: by top-k, by top-p, or by min-p
    settled = ((k > 0) & (k <= num)) | (probs.sum(-1) >= p) | (probs[:, -1] < m * probs[:, 0]) | (num == vocab)
    # no filter at all beyond the candidates: the total is known, and a draw that stops inside
    # the candidates is settled too
    unfiltered = ~settled & (p >= 1.0) & (m <= 0.0)
    total = torch.where(unfiltered, mass + (1.0 - probs.double().sum(-1)).clamp(min=0.0), mass)
    target = ur * total
    settled |= unfiltered & (target < mass)
    pick = torch.searchsorted(cdf, target.unsqueeze(1), right=True).clamp_(max=num - 1)
    chosen = idx.gather(1, pick).squeeze(1)
    if not bool(settled.all()):
        rest = (~settled).nonzero().squeeze(1)
        chosen[rest] = _sample_sorted(x[rest], k[rest], p[rest], m[rest], ur[rest])
    out[rows] = chosen
    return out


def _sorted_top(x: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The num largest entries per row, descending, equal values ordered by token id."""
    if num >= x.shape[-1]:
        return torch.sort(x, dim=-1, descending=True, stable=True)
    vals, idx = torch.topk(x, num, dim=-1, sorted=True)
    # topk breaks ties arbitrarily; re-sort equal values by token id for determinism
    order = torch.argsort(idx, dim=-1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=-1, descending=True, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


def _keep_mask(probs: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Which of the descending-sorted probabilities survive top-k, then top-p (measured on the
    top-k renormalised distribution, as HF's and vLLM's processors do), then min-p. The rows of
    `probs` are either whole distributions or their leading part holding every top-k token."""
    rank = torch.arange(probs.shape[-1], device=probs.device).unsqueeze(0)
    in_top_k = (k.unsqueeze(1) <= 0) | (rank < k.unsqueeze(1))
    norm = torch.where(k > 0, (probs * in_top_k).sum(-1), torch.ones_like(top_p))
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above this token
    keep = in_top_k & (before < (top_p * norm).unsqueeze(1))
    keep &= probs >= min_p.unsqueeze(1) * probs[:, :1]
    keep[:, 0] = True
    return keep


def _sample_sorted(x: torch.Tensor, k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The reference algorithm over the whole (temperature-scaled) vocabulary."""
    vocab = x.shape[-1]
    # A top-k bound lets us sort k entries instead of the vocabulary; top-p alone needs all of it.
    k_eff = vocab if bool((k <= 0).any()) else min(int(k.max()), vocab)
    vals, idx = _sorted_top(x, k_eff)
    probs = torch.softmax(vals, dim=-1)
    keep = _keep_mask(probs, k, top_p, min_p)
    probs = torch.where(keep, probs, torch.zeros_like(probs)).double()
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True).clamp_(max=vals.shape[-1] - 1)
    return idx.gather(1, pick).squeeze(1)

def logprobs(logits: torch.Tensor, chosen: torch.Tensor, num_top: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probabilities under the model's own distribution (raw logits, temperature 1, no
    filtering): the chosen token's [B], and the top num_top (values, token ids) [B, num_top]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen_lp = logp.gather(1, chosen.view(-1, 1).to(logp.device)).squeeze(1)
    if num_top <= 0:
        return chosen_lp, None, None
    top_vals, top_ids = torch.topk(logp, min(num_top, logp.shape[-1]), dim=-1)
    return chosen_lp, top_vals, top_ids


def processed_logprobs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
    chosen: torch.Tensor, num_top: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probabilities under the distribution `sample` draws from: logits / temperature, the
    top-k / top-p / min-p filters (`_keep_mask` on the whole sorted vocabulary), renormalised;
    filtered-out tokens get -inf. A greedy row (temperature 0) is a point mass: 0 for its token.
    What RL importance ratios need when the sampler is not the raw model (logprobs_mode processed)."""
    logits = logits.float()
    greedy = temperature <= 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature).to(logits.dtype)
    vals, idx = _sorted_top(logits / t.unsqueeze(1), logits.shape[-1])
    probs = torch.softmax(vals.double(), dim=-1)
    keep = _keep_mask(probs, top_k, top_p.double(), min_p.double())
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    logp_sorted = torch.log(kept) - torch.log(kept.sum(-1, keepdim=True))
    if bool(greedy.any()):  # the argmax is first in the stable descending order
        point = torch.full_like(logp_sorted, float("-inf"))
        point[:, 0] = 0.0
        logp_sorted = torch.where(greedy.unsqueeze(1), point, logp_sorted)
    logp = torch.empty_like(logp_sorted).scatter_(1, idx, logp_sorted).float()
    chosen_lp = logp.gather(1, chosen.view(-1, 1).to(logp.device)).squeeze(1)
    if num_top <= 0:
        return chosen_lp, None, None
    top_vals, top_ids = torch.topk(logp, min(num_top, logp.shape[-1]), dim=-1)
    return chosen_lp, top_vals, top_ids

