"""Engine end to end on tiny random models (fp32, CPU): HF parity in staggered mixed batches with
chunked prefill, fork memory, preemption, seed invariance, errors, stops, logprobs, streaming."""

from __future__ import annotations

import asyncio
import json
import math
import os

import pytest
import torch
from transformers import AttentionInterface

from engine import LLM, AsyncLLM, EngineConfigError, SamplingParams
from engine.attention import ATTN_NAME, paged_attention_forward
from engine.block_manager import cdiv
from engine.native_llama import FAMILIES as NATIVE_FAMILIES
from engine.sampler import derive_seed
from tests import tiny

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def questions(gsm8k_dir):
    with open(gsm8k_dir / "test.jsonl") as f:
        return [json.loads(line)["question"] for line in f][:64]


def token_prompts(model_dir, questions, lengths):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for i, n in enumerate(lengths):
        text, j = questions[i % len(questions)], i + 1
        while len(ids := tok(text).input_ids) < n:
            text += " " + questions[j % len(questions)]
            j += 1
        out.append(ids[:n])
    return out


def hf_greedy(model_dir, prompts, max_new_tokens):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    refs = []
    for ids in prompts:
        out = model.generate(torch.tensor([ids]), generation_config=gen)
        refs.append(out[0, len(ids) :].tolist())
    return refs


def run_staggered(llm, prompts, params, arrivals):
    """Add prompt i just before step arrivals[i] (step-level API); outputs in prompt order."""
    params = params if isinstance(params, list) else [params] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: arrivals[i])
    done, ids, step = {}, {}, 0
    while len(done) < len(prompts):
        while order and arrivals[order[0]] <= step:
            i = order.pop(0)
            ids[llm.add_request(prompts[i], params[i], request_id=f"req{i}-{step}")] = i
        for out in llm.step():
            if out.finished:
                done[ids[out.request_id]] = out
        step += 1
        assert step < 5000, "engine made no progress"
    return [done[i] for i in range(len(prompts))]


def tokens_of(outputs):
    return [[c.token_ids for c in o.outputs] for o in outputs]


# --- parity ---------------------------------------------------------------------------------


# every arch on its default forward, and the native families (llama, qwen2) also on the HF forward
PARITY_CASES = [(a, "auto") for a in tiny.ARCHS] + [(a, "transformers") for a in NATIVE_FAMILIES]


@pytest.mark.parametrize("arch,impl", PARITY_CASES)
def test_greedy_parity_with_hf_staggered_chunked(arch, impl, tiny_model_factory, questions):
    """Requests arrive at different steps; a 16-token step budget chunks every prefill and mixes
    prefill chunks with decodes. Prompts (26-60 tokens) exceed mistral's window (24) and gemma's (16)."""
    model_dir = tiny_model_factory(arch)
    prompts = token_prompts(model_dir, questions, [30, 45, 26, 60, 37])
    refs = hf_greedy(model_dir, prompts, GREEDY.max_tokens)
    llm = LLM(model_dir, num_kv_blocks=64, max_model_len=256, max_num_batched_tokens=16, model_impl=impl)
    native = llm.engine.runner.native is not None
    assert native == (impl == "auto" and arch in NATIVE_FAMILIES)
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return paged_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTN_NAME, spy)
    try:
        outs = run_staggered(llm, prompts, GREEDY, arrivals=[0, 0, 3, 5, 9])
    finally:
        AttentionInterface.register(ATTN_NAME, paged_attention_forward)
    assert [o.outputs[0].token_ids for o in outs] == refs
    if native:
        assert masks == []  # the native forward calls the paged attention directly
    else:
        assert masks and all(m is None for m in masks)  # transformers built no dense mask for us
    stats = llm.stats
    assert stats.steps > sum(len(p) for p in prompts) / 16  # prefill really was chunked
    assert stats.prompt_tokens_computed == sum(len(p) for p in prompts)
    assert stats.blocks_in_use == 0


def test_prefix_cache_hits_keep_parity(tiny_model_dir, questions):
    """Later requests reuse a cached 48-token prefix (block size 32 here) and still match HF."""
    base = token_prompts(tiny_model_dir, questions, [80])[0]
    prompts = [base[:70], base[:48] + [5, 6, 7], base[:66]]
    refs = hf_greedy(tiny_model_dir, prompts, 16)
    llm = LLM(tiny_model_dir, num_kv_blocks=32, block_size=32, max_model_len=256)
    outs = run_staggered(llm, prompts, GREEDY.replace(max_tokens=16), arrivals=[0, 20, 40])
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert [o.metrics.num_cached_prompt_tokens for o in outs] == [0, 32, 64]
    assert llm.stats.prompt_tokens_cached == 96
    assert llm.stats.prompt_tokens_computed == sum(len(p) for p in prompts) - 96


# --- forks ----------------------------------------------------------------------------------


def eight_shot_prompt(model_dir, gsm8k_dir, target=900):
    """An 8-shot GSM8K CoT prompt; trimmed to whole shots so it is close to `target` tokens
    with the tiny tokenizer (whose vocabulary is smaller than a real model's)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(gsm8k_dir / "train.jsonl") as f:
        shots = [json.loads(next(f)) for _ in range(8)]
    with open(gsm8k_dir / "test.jsonl") as f:
        question = json.loads(next(f))["question"]
    text = ""
    for shot in shots:
        candidate = text + f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n"
        if len(tok(candidate + question).input_ids) > target + 100:
            break
        text = candidate
    return tok(text + f"Question: {question}\nAnswer:").input_ids


def test_fork_memory_8shot_n16(tiny_model_dir, gsm8k_dir):
    prompt = eight_shot_prompt(tiny_model_dir, gsm8k_dir)
    assert 750 <= len(prompt) <= 1100
    bs, n, new = 16, 16, 128
    llm = LLM(tiny_model_dir, num_kv_blocks=600, max_model_len=2048, block_size=bs)
    params = SamplingParams(n=n, temperature=0.7, max_tokens=new, ignore_eos=True, seed=11)
    [out] = llm.generate([prompt], params)
    stats = llm.stats
    assert [len(c.token_ids) for c in out.outputs] == [new] * n
    assert len({tuple(c.token_ids) for c in out.outputs}) == n  # the samples really differ
    assert stats.prompt_tokens_computed == len(prompt)  # prefilled once
    bound = cdiv(len(prompt), bs) + n * cdiv(new, bs) + n
    assert stats.peak_blocks_in_use <= 1.05 * bound, (stats.peak_blocks_in_use, bound)
    assert stats.blocks_in_use == 0


def test_fork_equals_independent_samples(tiny_model_dir, questions):
    """n samples forked from one prefill draw exactly what n separate requests with the same
    per-sample seeds draw (fork + copy-on-write do not change the KV a sample sees)."""
    [prompt] = token_prompts(tiny_model_dir, questions, [37])  # ends mid-block: CoW on fork
    seeds = [derive_seed(3, i) for i in range(4)]
    params = SamplingParams(n=4, temperature=0.8, max_tokens=20, ignore_eos=True, seed=3)
    llm = LLM(tiny_model_dir, num_kv_blocks=64, max_model_len=256, enable_prefix_caching=False)
    [forked] = llm.generate([prompt], params)
    singles = llm.generate([prompt] * 4, [params.replace(n=1, seed=None, seeds=[s]) for s in seeds])
    assert [c.token_ids for c in forked.outputs] == [o.outputs[0].token_ids for o in singles]
    assert llm.stats.prompt_tokens_computed == 5 * len(prompt)


# --- preemption and seeds -------------------------------------------------------------------


def test_preemption_at_5_percent_budget_matches_unconstrained(tiny_model_dir, questions):
    lengths = [20 + (7 * i) % 41 for i in range(32)]
    prompts = token_prompts(tiny_model_dir, questions, lengths)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    need = sum(cdiv(len(p) + params.max_tokens, 16) for p in prompts)
    budget = max(math.ceil(0.05 * need), cdiv(max(lengths) + params.max_tokens, 16))
    assert budget <= 0.06 * need
    free = LLM(tiny_model_dir, num_kv_blocks=need + 16, max_model_len=256)
    tight = LLM(tiny_model_dir, num_kv_blocks=budget, max_model_len=budget * 16, max_num_batched_tokens=64)
    expected = free.generate(prompts, params)
    got = run_staggered(tight, prompts, params, arrivals=[i // 4 for i in range(32)])
    assert tokens_of(got) == tokens_of(expected)
    assert tight.stats.num_preemptions > 0
    assert free.stats.num_preemptions == 0
    assert tight.stats.blocks_in_use == 0


@pytest.fixture(scope="module")
def sampled_workload(tiny_model_dir, questions):
    lengths = [23, 41, 30, 52, 35, 18, 44, 27]
    prompts = token_prompts(tiny_model_dir, questions, lengths)
    params = [
        SamplingParams(n=1 + 2 * (i % 2), temperature=0.7, top_p=0.95, max_tokens=20, ignore_eos=True, seed=100 + i)
        for i in range(len(prompts))
    ]
    return prompts, params


@pytest.mark.parametrize(
    "max_num_seqs,tight",
    [(64, False), (4, False), (1, False), (64, True), (4, True), (1, True)],
    ids=["seqs64", "seqs4", "seqs1", "seqs64-preempt", "seqs4-preempt", "seqs1-preempt"],
)
def test_sampled_outputs_independent_of_batching(tiny_model_dir, sampled_workload, max_num_seqs, tight):
    prompts, params = sampled_workload
    reference = _sampled_reference(tiny_model_dir, prompts, params)
    if tight:
        footprints = [
            (len(p) // 16 if sp.n > 1 else 0) + sp.n * (cdiv(len(p) + sp.max_tokens - 1, 16) - (len(p) // 16 if sp.n > 1 else 0))
            for p, sp in zip(prompts, params)
        ]
        llm = LLM(tiny_model_dir, num_kv_blocks=max(footprints) + 1, max_model_len=(max(footprints) + 1) * 16,
                  max_num_seqs=max_num_seqs, max_num_batched_tokens=32)
    else:
        llm = LLM(tiny_model_dir, num_kv_blocks=256, max_model_len=256, max_num_seqs=max_num_seqs, max_num_batched_tokens=48)
    got = run_staggered(llm, prompts, params, arrivals=[0, 0, 1, 2, 2, 5, 8, 8])
    assert tokens_of(got) == reference
    # with one sequence at a time nothing can be preempted: only one group is ever admitted
    assert (llm.stats.num_preemptions > 0) == (tight and max_num_seqs > 1)
    if tight and max_num_seqs > 1:  # a forked group was preempted and re-forked on resume
        assert any(o.metrics.num_preemptions for o in got if len(o.outputs) > 1)


_REFERENCE: dict = {}


def _sampled_reference(model_dir, prompts, params):
    key = str(model_dir)
    if key not in _REFERENCE:
        llm = LLM(model_dir, num_kv_blocks=512, max_model_len=256)
        _REFERENCE[key] = tokens_of(llm.generate(prompts, params))
        distinct = {tuple(t) for out in _REFERENCE[key] for t in out}
        assert len(distinct) == sum(p.n for p in params)
    return _REFERENCE[key]


def test_seed_derivation():
    a = SamplingParams(n=2, seed=5)
    assert [derive_seed(5, i) for i in range(2)] != [5, 6]
    assert a.seeds is None
    with pytest.raises(ValueError):
        SamplingParams(n=2, seeds=[1])


# --- errors ---------------------------------------------------------------------------------


def test_impossible_requests_get_error_results_and_batch_completes(tiny_model_dir, questions):
    prompts = token_prompts(tiny_model_dir, questions, [30, 150, 40, 100])
    params = [GREEDY, GREEDY, GREEDY, GREEDY.replace(max_tokens=40)]
    params.append(GREEDY.replace(n=64))  # more blocks than the cache has
    prompts.append(prompts[0])
    llm = LLM(tiny_model_dir, num_kv_blocks=16, max_model_len=128)
    outs = llm.generate(prompts, params)
    assert outs[1].error and "max_model_len" in outs[1].error
    assert outs[3].error and "max_model_len" in outs[3].error  # 100 + 40 > 128
    assert outs[4].error and "KV blocks" in outs[4].error
    for o in (outs[1], outs[3], outs[4]):
        assert o.finished and all(c.finish_reason == "error" for c in o.outputs)
    for o in (outs[0], outs[2]):
        assert o.error is None and len(o.outputs[0].token_ids) == GREEDY.max_tokens
    assert llm.stats.requests_rejected == 3


def test_config_errors_are_one_line(tiny_model_dir):
    cases = [
        (dict(block_size=12), "power of two"),
        (dict(num_kv_blocks=4, max_model_len=256), "max_model_len=256"),
        (dict(kv_cache_memory=1000, max_model_len=256), "kv_cache_memory"),
        (dict(max_model_len=10**6), "max_position_embeddings"),
        (dict(dtype="float8"), "dtype"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(EngineConfigError) as err:
            LLM(tiny_model_dir, **kwargs)
        assert needle in str(err.value) and "\n" not in str(err.value)


# --- stops, text, logprobs ------------------------------------------------------------------


def test_stops_text_and_logprobs(tiny_model_dir, questions):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    [prompt] = token_prompts(tiny_model_dir, questions, [33])
    llm = LLM(tiny_model_dir, num_kv_blocks=32, max_model_len=256)
    [out] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=3))
    c = out.outputs[0]
    assert c.finish_reason == "length" and c.stop_reason is None
    assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)
    for token, top in zip(c.token_ids, c.top_logprobs):
        assert len(top) == 3 and max(top, key=top.get) == token  # greedy picks the top-1

    # a stop string cuts the text before it
    start = next(i for i in range(5, len(c.text) - 3) if c.text[i : i + 3].isalnum())
    stop = c.text[start : start + 3]
    [cut] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))
    assert cut.outputs[0].text == c.text[: c.text.find(stop)]
    assert (cut.outputs[0].finish_reason, cut.outputs[0].stop_reason) == ("stop", stop)
    [kept] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop], include_stop_str_in_output=True))
    assert kept.outputs[0].text == c.text[: c.text.find(stop) + len(stop)]

    # a stop token id ends the sample on that token
    stop_id = c.token_ids[7]
    [by_id] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop_token_ids=[stop_id]))
    first = c.token_ids.index(stop_id)
    assert by_id.outputs[0].token_ids == c.token_ids[: first + 1]
    assert (by_id.outputs[0].finish_reason, by_id.outputs[0].stop_reason) == ("stop", stop_id)


def test_eos_stops_unless_ignored(tiny_model_dir, questions):
    [prompt] = token_prompts(tiny_model_dir, questions, [30])
    llm = LLM(tiny_model_dir, num_kv_blocks=32, max_model_len=256)
    [free] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    eos = free.outputs[0].token_ids[4]
    llm.engine.eos_token_ids = {eos}  # pretend the 5th generated token is EOS
    [stopped] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=30))
    ids = free.outputs[0].token_ids
    assert stopped.outputs[0].token_ids == ids[: ids.index(eos) + 1]
    assert stopped.outputs[0].finish_reason == "stop"


# --- streaming ------------------------------------------------------------------------------


def test_async_streaming_and_abort(tiny_model_dir, questions):
    prompts = token_prompts(tiny_model_dir, questions, [30, 40])
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    sync = LLM(tiny_model_dir, num_kv_blocks=32, max_model_len=256).generate([prompts[0]], params)

    async def main():
        llm = AsyncLLM(tiny_model_dir, num_kv_blocks=32, max_model_len=256)

        async def collect(request_id, prompt, abort_after=None):
            seen = []
            async for out in llm.generate(prompt, params, request_id):
                seen.append(out)
                if abort_after is not None and len(seen) == abort_after:
                    llm.abort(request_id)
            return seen

        try:
            return await asyncio.gather(collect("a", prompts[0]), collect("b", prompts[1], abort_after=3))
        finally:
            await llm.shutdown()

    a, b = asyncio.run(main())
    lengths = [len(o.outputs[0].token_ids) for o in a]
    assert lengths == sorted(lengths) and lengths[-1] == 20 and len(a) >= 10  # streamed step by step
    assert a[-1].finished and a[-1].outputs[0].token_ids == sync[0].outputs[0].token_ids
    assert b[-1].finished and b[-1].outputs[0].finish_reason == "abort"
    assert len(b[-1].outputs[0].token_ids) < 20
    assert a[-1].metrics.ttft is not None and a[-1].metrics.ttft > 0


# --- real model (slow) ----------------------------------------------------------------------


def smollm2_dir():
    override = os.environ.get("ENGINE_SMOLLM2_DIR")
    if override:
        return override
    try:
        from harness.models import resolve_model

        return str(resolve_model("smollm2-135m-instruct").path)
    except Exception as exc:  # noqa: BLE001 - any failure means: no real model here
        pytest.skip(f"SmolLM2-135M-Instruct not available ({type(exc).__name__}: {exc})")


@pytest.mark.slow
def test_smollm2_greedy_parity_gsm8k(questions):
    from transformers import AutoTokenizer

    model_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions[:6]
    ]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    refs = hf_greedy(model_dir, ids, 48)
    # staggered arrivals and a 96-token step budget: chunked prefills run beside decodes
    llm = LLM(model_dir, max_model_len=1024, num_kv_blocks=512, max_num_batched_tokens=96)
    outs = run_staggered(llm, ids, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True), arrivals=[0, 0, 2, 4, 7, 20])
    assert [o.outputs[0].token_ids for o in outs] == refs
