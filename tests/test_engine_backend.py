"""The harness `engine` backend: Backend protocol, seeds, streaming order, errors, agreement with
the hf backend."""

from __future__ import annotations

import json

import pytest

from harness.backends.base import GenerationRequest, SamplingParams
from harness.backends.engine import EngineBackend, parse_bytes

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    be = EngineBackend(str(tiny_model_dir), num_kv_blocks=128, max_model_len=256, batch_size=8)
    yield be
    be.close()


@pytest.fixture(scope="module")
def prompts(gsm8k_dir):
    with open(gsm8k_dir / "test.jsonl") as f:
        return [json.loads(line)["question"] for line in f][:6]


def request(i, prompt, params, indices=(0,), seeds=None):
    indices = list(indices)
    return GenerationRequest(f"r{i}", f"doc{i}", prompt, params, indices, seeds or [1000 * i + j for j in indices])


def by_key(completions):
    return {(c.doc_id, c.sample_idx): c for c in completions}


def test_info_and_options(backend, tiny_model_dir):
    info = backend.info().to_dict()  # the form results.json records
    assert info["backend"] == "engine" and info["model_path"] == str(tiny_model_dir.resolve())
    assert info["engine_config"]["max_num_seqs"] == 8 and info["num_kv_blocks"] == 128
    assert backend.tokenizer is not None
    assert parse_bytes("64MiB") == 64 * 2**20 and parse_bytes("2e9") == 2_000_000_000 and parse_bytes(2.5e9) == 2_500_000_000


def test_samples_follow_their_seeds(backend, prompts):
    params = SamplingParams(n=4, temperature=0.8, max_tokens=12, ignore_eos=True)
    full = by_key(backend.generate([request(0, prompts[0], params, range(4))]))
    assert len(full) == 4 and len({tuple(c.token_ids) for c in full.values()}) == 4
    # a resumed run asks for a subset of indices with their seeds: same samples
    subset = by_key(backend.generate([request(0, prompts[0], params, [1, 3])]))
    assert [subset[("doc0", i)].token_ids for i in (1, 3)] == [full[("doc0", i)].token_ids for i in (1, 3)]
    assert all(c.prompt_tokens > 0 and c.ttft is not None for c in full.values())


def test_completions_stream_as_they_finish(backend, prompts):
    reqs = [
        request(1, prompts[1], SamplingParams(max_tokens=40, ignore_eos=True)),
        request(2, prompts[2], SamplingParams(max_tokens=3, ignore_eos=True)),
    ]
    order = [c.doc_id for c in backend.generate(reqs)]
    assert order == ["doc2", "doc1"]


def test_errors_do_not_stop_the_stream(backend, prompts):
    long_prompt = " ".join(prompts) * 3
    reqs = [
        request(3, long_prompt, SamplingParams(n=2, max_tokens=8), [0, 1]),
        request(4, prompts[4], SamplingParams(max_tokens=8, ignore_eos=True)),
        request(5, prompts[5], SamplingParams(top_p=0.0, max_tokens=8)),
    ]
    got = by_key(backend.generate(reqs))
    assert got[("doc3", 0)].finish_reason == "error" and got[("doc3", 1)].finish_reason == "error"
    assert "max_model_len" in got[("doc3", 0)].error
    assert got[("doc5", 0)].finish_reason == "error"
    assert got[("doc4", 0)].finish_reason == "length" and len(got[("doc4", 0)].token_ids) == 8


def test_agrees_with_hf_backend(backend, tiny_model_dir, prompts):
    hf = pytest.importorskip("harness.backends.hf")
    reqs = [
        request(6, prompts[0], SamplingParams(max_tokens=16, ignore_eos=True)),
        request(7, prompts[1], SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=16, ignore_eos=True), range(3)),
        request(8, prompts[2], SamplingParams(temperature=1.0, top_k=20, max_tokens=16, stop=("\n",)), [0]),
    ]
    ours = by_key(backend.generate(reqs))
    ref_backend = hf.HFBackend(str(tiny_model_dir), batch_size=4)
    try:
        theirs = by_key(ref_backend.generate(reqs))
    finally:
        ref_backend.close()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].token_ids == theirs[key].token_ids, key
        assert ours[key].text == theirs[key].text, key
        assert ours[key].finish_reason == theirs[key].finish_reason, key


def test_stopping_early_leaves_the_engine_clean(backend, prompts):
    reqs = [request(10 + i, prompts[i], SamplingParams(max_tokens=5 + 10 * i, ignore_eos=True)) for i in range(3)]
    stream = backend.generate(reqs)
    first = next(stream)
    assert first.doc_id == "doc10"
    stream.close()  # the harness was interrupted
    assert not backend.engine.has_unfinished_requests()
    assert backend.engine.block_manager.num_used_blocks == 0
    again = by_key(backend.generate(reqs[1:2]))
    assert len(again[("doc11", 0)].token_ids) == 15
