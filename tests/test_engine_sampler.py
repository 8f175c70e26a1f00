"""The sampler: the candidate fast path equals the whole-vocabulary reference, draws do not depend
on the batch, filters follow HF's order, logprobs."""

from __future__ import annotations

import pytest
import torch

from engine.sampler import _sample_sorted, logprobs, sample, uniforms

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def batch(num_rows, vocab, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, vocab, generator=g) * scale
    temperature = torch.tensor([[0.7, 1.0, 0.3][i % 3] for i in range(num_rows)])
    top_k = torch.tensor([[0, 0, 20, 300, 5000][i % 5] for i in range(num_rows)])
    top_p = torch.tensor([[1.0, 0.9, 1.0, 0.5][(i // 5) % 4] for i in range(num_rows)])
    min_p = torch.tensor([[0.0, 0.0, 0.05][i % 3] for i in range(num_rows)])
    u = uniforms(list(range(seed * 1000, seed * 1000 + num_rows)), [seed] * num_rows)
    return logits, temperature, top_k, top_p, min_p, u


def test_fast_path_equals_whole_vocabulary_reference():
    for seed, scale in enumerate([0.3, 1.0, 3.0, 8.0]):
        logits, t, k, p, m, u = batch(60, 3000, scale, seed)
        fast = sample(logits, t, k, p, m, u)
        x = logits / t.unsqueeze(1)
        ref = torch.cat([_sample_sorted(x[i : i + 1], k[i : i + 1], p[i : i + 1], m[i : i + 1], u[i : i + 1]) for i in range(60)])
        assert torch.equal(fast, ref)


def test_a_rows_draw_does_not_depend_on_its_batch():
    logits, t, k, p, m, u = batch(40, 2000, 2.0, 7)
    together = sample(logits, t, k, p, m, u)
    alone = torch.cat([sample(logits[i : i + 1], t[i : i + 1], k[i : i + 1], p[i : i + 1], m[i : i + 1], u[i : i + 1]) for i in range(40)])
    assert torch.equal(together, alone)


def test_greedy_rows_and_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    zeros = torch.zeros(2)
    out = sample(logits, zeros, torch.zeros(2, dtype=torch.long), torch.ones(2), zeros, torch.zeros(2, dtype=torch.float64))
    assert out.tolist() == [1, 0]  # lowest id among equal maxima


def test_filters_keep_what_hf_processors_keep():
    """top-k, then top-p on the top-k renormalised distribution, then min-p: every draw over many
    uniforms lands in the set HF's TopK -> TopP -> MinP processors keep."""
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(1, 200) * 2
    # (5, 0.9): top-p measured on the top-5 renormalised distribution drops the 5th token
    for k, p, m in [(0, 0.8, 0.0), (30, 0.7, 0.1), (5, 0.9, 0.0), (40, 1.0, 0.05)]:
        scores = logits.clone()
        if k:
            scores = TopKLogitsWarper(k)(None, scores)
        if p < 1:
            scores = TopPLogitsWarper(p)(None, scores)
        if m:
            scores = MinPLogitsWarper(m)(None, scores)
        allowed = set(torch.isfinite(scores[0]).nonzero().squeeze(1).tolist())
        n = 2000
        u = uniforms([1] * n, list(range(n)))
        rows = logits.expand(n, -1)
        drawn = sample(rows, torch.ones(n), torch.full((n,), k), torch.full((n,), p), torch.full((n,), m), u)
        assert set(drawn.tolist()) == allowed and len(allowed) > 1


def test_logprobs_of_chosen_and_top():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    chosen, top_vals, top_ids = logprobs(logits, torch.tensor([1, 2]), 2)
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(chosen, torch.stack([ref[0, 1], ref[1, 2]]))
    assert top_ids.tolist() == [[0, 1], [2, 0]]
    torch.testing.assert_close(top_vals[:, 0], ref.max(-1).values)
    assert logprobs(logits, torch.tensor([0, 0]))[1] is None
