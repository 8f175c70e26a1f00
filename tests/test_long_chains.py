"""Long chains: a tiny model generates 8k+ new tokens per sample, two requests of n=4, under a KV
budget that holds one request's four chains at full length (the engine admits a request only if
its n samples fit together) but not both, so the scheduler must preempt and recompute; the
samples must equal an unconstrained run's, token for token (same seeds), and every chain must
reach its budget. Also the window a model's rope scaling allows."""

from __future__ import annotations

import time

import pytest

from engine import LLM, SamplingParams
from engine.block_manager import cdiv

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NEW_TOKENS = 8200
BLOCK = 64


def test_8k_token_chains_equal_under_a_small_kv_budget(tiny_model_factory):
    model = tiny_model_factory("llama", max_position_embeddings=8448)
    params = SamplingParams(n=4, temperature=1.0, top_k=20, seed=11, max_tokens=NEW_TOKENS, ignore_eos=True)
    prompts = [list(range(5, 45)), list(range(50, 90))]
    per_chain = cdiv(len(prompts[0]) + NEW_TOKENS, BLOCK)

    t0 = time.perf_counter()
    roomy = LLM(model, num_kv_blocks=8 * per_chain + 8, block_size=BLOCK, max_model_len=8448)
    free = roomy.generate(prompts, params)
    t_free = time.perf_counter() - t0
    assert roomy.engine.stats.num_preemptions == 0

    t0 = time.perf_counter()
    tight = LLM(model, num_kv_blocks=5 * per_chain, block_size=BLOCK, max_model_len=8448)
    cut = tight.generate(prompts, params)
    t_cut = time.perf_counter() - t0
    stats = tight.engine.stats
    assert stats.num_preemptions > 0  # the budget really was too small for four chains at once
    assert all(r.error is None for r in cut)
    for ra, rb in zip(free, cut):
        for a, b in zip(ra.outputs, rb.outputs):
            assert len(a.token_ids) == len(b.token_ids) == NEW_TOKENS and a.finish_reason == b.finish_reason == "length"
            assert a.token_ids == b.token_ids
    assert len({tuple(o.token_ids[:64]) for r in free for o in r.outputs}) == 8  # eight different samples
    print(f"8k chains: unconstrained {t_free:.1f} s, tight {t_cut:.1f} s, {stats.num_preemptions} preemptions")


def test_max_model_len_follows_rope_scaling():
    import transformers as tf

    from engine.config import model_max_len

    yarn = tf.Qwen2Config(max_position_embeddings=32768,
                          rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert model_max_len(yarn) == 131072
    assert model_max_len(tf.LlamaConfig(max_position_embeddings=2048, rope_scaling={"rope_type": "linear", "factor": 2.0})) == 4096
    llama3 = tf.LlamaConfig(max_position_embeddings=131072, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    assert model_max_len(llama3) == 131072  # already the extended window
    assert model_max_len(tf.LlamaConfig(max_position_embeddings=4096)) == 4096
