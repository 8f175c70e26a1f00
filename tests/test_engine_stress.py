"""Randomised workload under a tight KV budget: forks sharing cached prefixes, preemption, aborts,
requests arriving at random steps. Outputs must equal an unconstrained run and every block must
come back."""

from __future__ import annotations

import random

import pytest

from engine import LLM, SamplingParams
from engine.block_manager import cdiv

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def check_pool_is_clean(bm):
    assert bm.num_used_blocks == 0
    assert all(r == 0 for r in bm.ref_counts)
    assert sorted(bm.free_order()) == list(range(bm.num_blocks))
    for key, block_id in bm.cache.items():
        assert bm.block_key[block_id] == key


def test_random_workload_tight_budget(tiny_model_dir):
    rng = random.Random(0)
    shared = [rng.randrange(10, 500) for _ in range(40)]  # a common "few-shot" prefix
    prompts, params = [], []
    for i in range(24):
        own = [rng.randrange(10, 500) for _ in range(rng.randrange(1, 30))]
        prompts.append(shared[: rng.choice([0, 16, 33, 40])] + own)
        n = rng.choice([1, 1, 2, 4])
        params.append(SamplingParams(n=n, temperature=rng.choice([0.0, 0.9]), top_k=rng.choice([0, 40]),
                                     max_tokens=rng.randrange(4, 24), ignore_eos=True, seed=i))
    bs = 16
    footprint = max(
        (len(p) // bs if sp.n > 1 else 0) + sp.n * (cdiv(len(p) + sp.max_tokens - 1, bs) - (len(p) // bs if sp.n > 1 else 0))
        for p, sp in zip(prompts, params)
    )
    reference = LLM(tiny_model_dir, num_kv_blocks=512, max_model_len=256).generate(prompts, params)

    tight = LLM(tiny_model_dir, num_kv_blocks=footprint + 2, max_model_len=(footprint + 2) * bs,
                max_num_batched_tokens=40, max_num_seqs=12)
    engine = tight.engine
    arrivals = sorted(rng.randrange(0, 60) for _ in prompts)
    aborted = {3, 11}
    ids, done, step = {}, {}, 0
    while len(done) < len(prompts):
        for i, at in enumerate(arrivals):
            if at == step:
                ids[engine.add_request(prompts[i], params[i], request_id=f"q{i}")] = i
        if step == 70:
            for i in aborted:
                engine.abort_request(f"q{i}")
        for out in engine.step():
            if out.finished:
                done[ids[out.request_id]] = out
        step += 1
        assert step < 3000
    for i in range(len(prompts)):
        got = [c.token_ids for c in done[i].outputs]
        want = [c.token_ids for c in reference[i].outputs]
        if i in aborted and any(c.finish_reason == "abort" for c in done[i].outputs):
            for g, w, c in zip(got, want, done[i].outputs):
                assert w[: len(g)] == g  # an aborted sample is a prefix of the full one
            continue
        assert got == want, i
    stats = tight.stats
    assert stats.num_preemptions > 0
    assert stats.prompt_tokens_cached > 0
    check_pool_is_clean(engine.block_manager)
    assert not engine.scheduler.running and not engine.scheduler.waiting
