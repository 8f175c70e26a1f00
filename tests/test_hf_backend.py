"""The transformers reference backend on the tiny random model: parity, seeds, stops, errors."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.sampler import derive_seed, sample, uniforms  # noqa: E402
from harness import HarnessError  # noqa: E402
from harness.backends import get_backend  # noqa: E402
from harness.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from harness.models import encode_prompt, resolve_model  # noqa: E402

PROMPTS = [
    "Janet has 3 apples and buys 2 more. How many apples does she have?",
    "Question: 12 + 30 =",
    "<|im_start|>user\nA train travels 60 miles in 2 hours. What is its speed?<|im_end|>\n<|im_start|>assistant\n",
    "Tom",
    "The school has 4 classes with 25 students each, and 10 teachers. How many people are there in total?",
]


@pytest.fixture(scope="module")
def be(tiny_model_dir):
    # pinned to CPU fp32: the parity checks compare against a plain fp32 CPU model
    b = get_backend("hf", resolve_model(str(tiny_model_dir)), batch_size=4, device="cpu", dtype="float32")
    yield b
    b.close()


def _req(i: int, prompt: str, params: SamplingParams, indices=None, run_seed: int = 1234) -> GenerationRequest:
    indices = list(range(params.n)) if indices is None else list(indices)
    doc = f"doc{i}"
    return GenerationRequest(
        request_id=f"r{i}",
        doc_id=doc,
        prompt=prompt,
        params=params,
        sample_indices=indices,
        seeds=[derive_seed(run_seed, doc, k) for k in indices],
    )


def _by_key(completions):
    out = {}
    for c in completions:
        key = (c.doc_id, c.sample_idx)
        assert key not in out, f"duplicate completion {key}"
        out[key] = c
    return out


def test_info_and_tokenizer(be, tiny_model_dir):
    info = be.info().to_dict()  # the form results.json records
    assert info["backend"] == "hf" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["batch_size"] == 4 and info["revision"] and len(info["chat_template_sha256"]) == 64
    assert info["transformers_version"] and info["model_path"] == str(tiny_model_dir.resolve())
    assert be.tokenizer.chat_template and be.tokenizer.eos_token == "<|im_end|>"


def test_greedy_matches_plain_generate(be, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    params = SamplingParams(max_tokens=12)
    reqs = [_req(i, p, params) for i, p in enumerate(PROMPTS)]
    gen = be.generate(reqs)
    assert inspect.isgenerator(gen)
    got = _by_key(gen)
    assert len(got) == len(PROMPTS)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    eos = ref.generation_config.eos_token_id
    for i, p in enumerate(PROMPTS):
        ids = encode_prompt(be.tokenizer, p)
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=12, do_sample=False)
        want = out[0, len(ids):].tolist()
        c = got[(f"doc{i}", 0)]
        assert c.token_ids == want, f"prompt {i}"
        assert c.prompt_tokens == len(ids) and c.error is None
        if want[-1] == eos:
            assert (c.finish_reason, c.stop_reason) == ("stop", eos)
        else:
            assert c.finish_reason == "length" and len(want) == 12
        assert c.text == be.tokenizer.decode(want, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert c.latency is not None and c.ttft is not None and 0 <= c.ttft <= c.latency


def test_greedy_n_gives_identical_samples(be):
    cs = list(be.generate([_req(0, PROMPTS[1], SamplingParams(n=3, max_tokens=8))]))
    assert sorted(c.sample_idx for c in cs) == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in cs}) == 1


def _sampled_requests(params=None):
    params = params or SamplingParams(n=3, temperature=0.9, top_p=0.95, top_k=50, max_tokens=16, ignore_eos=True)
    return [_req(i, p, params) for i, p in enumerate(PROMPTS)]


def test_sampling_is_independent_of_batch_size(be, tiny_model_dir):
    a = _by_key(be.generate(_sampled_requests()))
    one = get_backend("hf", resolve_model(str(tiny_model_dir)), batch_size=1, device="cpu", dtype="float32")
    b = _by_key(one.generate(_sampled_requests()))
    # and in a different request order
    c = _by_key(be.generate(list(reversed(_sampled_requests()))))
    assert a.keys() == b.keys() == c.keys() and len(a) == 3 * len(PROMPTS)
    for k in a:
        assert a[k].token_ids == b[k].token_ids == c[k].token_ids, k
        assert len(a[k].token_ids) == 16 and a[k].finish_reason == "length"
    # different seeds really give different samples
    assert len({tuple(a[("doc0", j)].token_ids) for j in range(3)}) == 3


def test_sampled_tokens_replay_with_engine_sampler(be, tiny_model_dir):
    """Each sampled token is sample(logits, ..., uniforms(seed, step)) on the model's own logits."""
    from transformers import AutoModelForCausalLM

    params = SamplingParams(n=1, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, max_tokens=8, ignore_eos=True)
    req = _req(0, PROMPTS[0], params)
    c = next(iter(be.generate([req])))
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = encode_prompt(be.tokenizer, req.prompt)
    f = lambda x, dt=torch.float32: torch.tensor([x], dtype=dt)  # noqa: E731
    for step, tok in enumerate(c.token_ids):
        with torch.no_grad():
            logits = ref(torch.tensor([ids + c.token_ids[:step]])).logits[:, -1].float()
        pick = sample(logits, f(0.7), f(20, torch.long), f(0.9), f(0.05), uniforms([req.seeds[0]], [step]))
        assert int(pick[0]) == tok, f"step {step}"


def test_resume_subset_gives_the_same_samples(be):
    params = SamplingParams(n=4, temperature=1.0, max_tokens=10, ignore_eos=True)
    full = _by_key(be.generate([_req(7, PROMPTS[2], params)]))
    part = _by_key(be.generate([_req(7, PROMPTS[2], params, indices=[3, 1])]))
    assert set(part) == {("doc7", 1), ("doc7", 3)}
    for k, c in part.items():
        assert c.token_ids == full[k].token_ids and c.text == full[k].text


def test_stop_strings_trim_text(be):
    base = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=24, ignore_eos=True))])))
    text = base.text
    # a stop string that first appears well inside the text
    stop = next(text[j : j + 2] for j in range(3, len(text) - 2) if text.find(text[j : j + 2]) == j and text[j : j + 2].strip())
    c = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=24, ignore_eos=True, stop=("@@never@@", stop)))])))
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)
    assert c.text == text[: text.find(stop)] and stop not in c.text
    assert c.token_ids == base.token_ids[: len(c.token_ids)] and len(c.token_ids) < len(base.token_ids)
    # token_ids run up to and including the token that completed the stop string
    dec = lambda x: be.tokenizer.decode(x, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
    assert stop in dec(c.token_ids) and stop not in dec(c.token_ids[:-1])


def test_max_tokens_gives_length(be):
    c = next(iter(be.generate([_req(0, PROMPTS[3], SamplingParams(max_tokens=5, ignore_eos=True))])))
    assert c.finish_reason == "length" and c.stop_reason is None and len(c.token_ids) == 5


def test_eos_stops_unless_ignored(be):
    base = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=16, ignore_eos=True))])))
    eos = base.token_ids[3]  # pretend the 4th greedy token is EOS
    first = base.token_ids.index(eos)
    saved = be.eos_token_ids
    be.eos_token_ids = [eos]
    try:
        c = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=16))])))
        assert (c.finish_reason, c.stop_reason) == ("stop", eos)
        assert c.token_ids == base.token_ids[: first + 1]  # the EOS id is included
        d = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=16, ignore_eos=True))])))
        assert d.finish_reason == "length" and d.token_ids == base.token_ids
    finally:
        be.eos_token_ids = saved


def test_oversized_prompt_is_an_error_and_others_complete(be):
    huge = "Janet has 3 apples. " * 800  # far past the tiny model's 2048 positions
    reqs = [
        _req(0, PROMPTS[0], SamplingParams(max_tokens=6)),
        _req(1, huge, SamplingParams(n=2, temperature=1.0, max_tokens=6)),
        _req(2, PROMPTS[1], SamplingParams(n=2, temperature=1.0, max_tokens=6)),
        _req(3, PROMPTS[1], SamplingParams(max_tokens=0)),
    ]
    got = _by_key(be.generate(reqs))
    assert len(got) == 6
    for j in (0, 1):
        e = got[("doc1", j)]
        assert e.finish_reason == "error" and "max length" in e.error and e.prompt_tokens > 2048
    assert got[("doc3", 0)].finish_reason == "error" and "max_tokens" in got[("doc3", 0)].error
    for k in [("doc0", 0), ("doc2", 0), ("doc2", 1)]:
        assert got[k].finish_reason in ("stop", "length") and got[k].error is None and got[k].token_ids


def test_generation_is_clipped_at_max_model_len(be):
    prompt_ids = encode_prompt(be.tokenizer, "Janet has 3 apples. " * 200)
    room = be.max_model_len - len(prompt_ids)
    assert 0 < room < 100
    params = SamplingParams(max_tokens=room + 10, ignore_eos=True)
    c = next(iter(be.generate([_req(0, "Janet has 3 apples. " * 200, params)])))
    assert c.finish_reason == "length" and len(c.token_ids) == room


def test_logprobs(be):
    c = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=6, ignore_eos=True, logprobs=0))])))
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) == 6
    assert all(x <= 0 for x in c.logprobs)
    d = next(iter(be.generate([_req(0, PROMPTS[0], SamplingParams(max_tokens=6, ignore_eos=True))])))
    assert d.logprobs is None and d.token_ids == c.token_ids


def test_a_failing_batch_is_split_and_only_the_bad_row_errors(be, monkeypatch):
    real = be._run_batch

    def flaky(rows):
        if any(r.req.doc_id == "doc1" for r in rows):
            raise RuntimeError("boom")
        return real(rows)

    monkeypatch.setattr(be, "_run_batch", flaky)
    reqs = [_req(i, PROMPTS[i], SamplingParams(max_tokens=4)) for i in range(3)]
    got = _by_key(be.generate(reqs))
    assert got[("doc1", 0)].finish_reason == "error" and "boom" in got[("doc1", 0)].error
    assert got[("doc0", 0)].error is None and got[("doc2", 0)].error is None


def test_registry_errors(tiny_model_dir, monkeypatch):
    import harness.backends as reg

    m = resolve_model(str(tiny_model_dir))
    with pytest.raises(HarnessError, match="not available yet"):
        get_backend("vllm", m)
    with pytest.raises(HarnessError, match="needs --base-url"):  # a real backend now (it needs a server)
        get_backend("openai", str(tiny_model_dir))
    with pytest.raises(HarnessError, match="unknown backend"):
        get_backend("nope", m)
    monkeypatch.setitem(reg._BACKENDS, "engine", ("harness.backends._no_such_engine_module", "EngineBackend"))
    with pytest.raises(HarnessError, match="not available.*_no_such_engine_module"):
        get_backend("engine", m)


@pytest.mark.slow
def test_smollm2_chat_stops_at_im_end(tmp_path, monkeypatch):
    """The real SmolLM2 preset (pulled into a temp cache unless the default cache already has it)."""
    from harness import models

    default = models.cache_root()
    if models.cache.read_manifest(default / "models" / "smollm2-135m-instruct") is None:
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    b = get_backend("hf", "smollm2-135m-instruct", device="cpu", batch_size=2)
    tok = b.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    c = next(iter(b.generate([_req(0, prompt, SamplingParams(max_tokens=48))])))
    assert c.error is None and c.text.strip()
    if c.finish_reason == "stop":
        assert c.stop_reason == im_end and c.token_ids[-1] == im_end and "<|im_end|>" not in c.text
    assert im_end in b.eos_token_ids and b.info().revision == b.model.preset["source"]["sha256"]
    b.close()
