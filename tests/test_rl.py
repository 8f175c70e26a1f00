"""Issue 15, the engine's RL door: exact per-token logprobs (raw and processed) against a fresh HF
forward, in-place weight updates that invalidate the prefix cache, sleep/wake_up that give the
KV memory back, and a GRPO-style loop (examples/grpo_tiny.py) that raises its reward."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from engine import LLM, SamplingParams
from tests import tiny

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def prompts(gsm8k_dir) -> list[str]:
    with open(gsm8k_dir / "test.jsonl") as f:
        return [json.loads(line)["question"][:200] for line in f][:6]


def hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()


@torch.no_grad()
def hf_logits(model, prompt_ids: list[int], completion: list[int]) -> torch.Tensor:
    """Logits predicting each completion token, from one forward over prompt + completion."""
    ids = torch.tensor([prompt_ids + completion])
    out = model(ids).logits[0].float()
    return out[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(completion)]


def truncated_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The test's own top-p: logits / T, tokens by descending probability while the mass above
    them is under top_p (the first always kept), renormalised; the rest -inf."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    above = torch.cumsum(sorted_p, dim=-1) - sorted_p
    keep_sorted = above < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return torch.log(kept / kept.sum(-1, keepdim=True))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_sampled_logprobs_equal_a_fresh_hf_forward(tiny_model_factory, prompts, arch, mode):
    model_dir = tiny_model_factory(arch)
    llm = LLM(model_dir, num_kv_blocks=128, max_model_len=512, dtype="float32")
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_tokens=24, seed=7, logprobs=0, logprobs_mode=mode,
                            ignore_eos=True)
    outs = llm.generate(prompts[:3], params)
    ref = hf_model(model_dir)
    worst, checked = 0.0, 0
    for out in outs:
        for c in out.outputs:
            assert len(c.logprobs) == len(c.token_ids) == 24
            logits = hf_logits(ref, out.prompt_token_ids, list(c.token_ids))
            if mode == "raw":
                want = torch.log_softmax(logits, dim=-1)
            else:
                want = truncated_logprobs(logits, 0.7, 0.9)
            want = want.gather(1, torch.tensor(c.token_ids).view(-1, 1)).squeeze(1)
            assert torch.isfinite(want).all(), "a sampled token outside the top-p set"
            worst = max(worst, (want - torch.tensor(c.logprobs, dtype=torch.float64)).abs().max().item())
            checked += len(c.token_ids)
    assert checked == 3 * 4 * 24
    assert worst < 1e-4, f"{arch} {mode}: max |engine - HF| = {worst:.2e}"


def test_processed_logprobs_of_greedy_and_top_k(tiny_model_dir, prompts):
    llm = LLM(tiny_model_dir, num_kv_blocks=64, max_model_len=512)
    greedy = llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=8, logprobs=2, logprobs_mode="processed",
                                                      ignore_eos=True))[0].outputs[0]
    assert greedy.logprobs == [0.0] * 8  # a point mass
    assert all(sorted(t.values(), reverse=True)[1] == -math.inf for t in greedy.top_logprobs)
    k1 = llm.generate(prompts[:1], SamplingParams(temperature=1.0, top_k=1, max_tokens=8, logprobs=0, seed=1,
                                                  logprobs_mode="processed", ignore_eos=True))[0].outputs[0]
    assert k1.logprobs == [0.0] * 8 and k1.token_ids == greedy.token_ids
    with pytest.raises(ValueError, match="logprobs_mode"):
        SamplingParams(logprobs_mode="sampled")


def perturbed(model_dir: Path, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """The checkpoint's weights plus noise, by HF parameter name (tied names listed once)."""
    g = torch.Generator().manual_seed(seed)
    model = hf_model(model_dir)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in model.named_parameters()}


def test_load_weights_matches_hf_with_the_same_weights_and_drops_stale_prefixes(tiny_model_dir, prompts):
    llm = LLM(tiny_model_dir, num_kv_blocks=128, max_model_len=512)
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    before = llm.generate(prompts[:2], greedy)
    again = llm.generate(prompts[:2], greedy)
    assert [o.metrics.num_cached_prompt_tokens for o in again] != [0, 0]  # the prompts are in the prefix cache
    new = perturbed(tiny_model_dir)
    assert llm.load_weights(new.items()) == len(new)
    after = llm.generate(prompts[:2], greedy)
    assert [o.metrics.num_cached_prompt_tokens for o in after] == [0, 0], "a block of the old weights was reused"

    ref = hf_model(tiny_model_dir)
    ref.load_state_dict({**ref.state_dict(), **new})
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr() or not ref.config.tie_word_embeddings
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    for out, old in zip(after, before):
        want = ref.generate(torch.tensor([out.prompt_token_ids]), generation_config=gen)[0, len(out.prompt_token_ids):]
        assert list(out.outputs[0].token_ids) == want.tolist()
        assert out.outputs[0].token_ids != old.outputs[0].token_ids  # the update did change the model


def test_load_weights_checks_names_shapes_and_idleness(tiny_model_dir, prompts):
    llm = LLM(tiny_model_dir, num_kv_blocks=64, max_model_len=512)
    name, w = next(iter(perturbed(tiny_model_dir).items()))
    with pytest.raises(ValueError, match="no parameter 'model.layers.0.nope.weight'"):
        llm.load_weights([("model.layers.0.nope.weight", w)])
    with pytest.raises(ValueError, match=r"shape \(3,\) does not match"):
        llm.load_weights([(name, torch.zeros(3))])
    llm.load_weights([(name, w.to(torch.float64))])  # cast to the model's dtype
    llm.add_request(prompts[0], SamplingParams(max_tokens=4))
    llm.step()  # prefilled: it holds blocks now
    with pytest.raises(RuntimeError, match="still running"):
        llm.load_weights([(name, w)])
    assert llm.reset_prefix_cache() is False  # blocks in use
    while llm.has_unfinished_requests():
        llm.step()
    assert llm.reset_prefix_cache() is True


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("level", [1, 2])
def test_sleep_gives_the_kv_memory_back_and_outputs_survive(tiny_model_dir, prompts, level):
    kv_bytes = 256 << 20
    llm = LLM(tiny_model_dir, kv_cache_memory=kv_bytes, max_model_len=512)
    params = SamplingParams(n=3, temperature=0.8, max_tokens=16, seed=3, ignore_eos=True)
    first = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts[:3], params)]
    awake = _rss()
    llm.sleep(level)
    asleep = _rss()
    assert awake - asleep > 0.8 * kv_bytes, f"sleep returned {(awake - asleep) / 2**20:.0f} MiB of a {kv_bytes >> 20} MiB pool"
    with pytest.raises(RuntimeError, match="asleep"):
        llm.generate(prompts[:1], params)
    llm.wake_up()
    assert _rss() - asleep > 0.8 * kv_bytes
    assert [[c.token_ids for c in o.outputs] for o in llm.generate(prompts[:3], params)] == first


def test_async_llm_load_weights_between_requests(tiny_model_dir, prompts):
    import asyncio

    from engine import AsyncLLM

    new = perturbed(tiny_model_dir, seed=1)

    async def main():
        eng = AsyncLLM(tiny_model_dir, num_kv_blocks=64, max_model_len=512)
        greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        out0 = [o async for o in eng.generate(prompts[0], greedy, "a")][-1]
        assert await eng.load_weights(new.items()) == len(new)
        out1 = [o async for o in eng.generate(prompts[0], greedy, "b")][-1]
        await eng.shutdown()
        return out0, out1

    out0, out1 = asyncio.run(main())
    assert out1.metrics.num_cached_prompt_tokens == 0 and out0.outputs[0].token_ids != out1.outputs[0].token_ids
    sync = LLM(tiny_model_dir, num_kv_blocks=64, max_model_len=512)
    sync.load_weights(new.items())
    assert sync.generate(prompts[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0].token_ids \
        == out1.outputs[0].token_ids


def test_grpo_example_raises_the_reward(tiny_model_dir, tmp_path):
    """examples/grpo_tiny.py: rollout with the engine → GRPO loss from the engine's logprobs →
    Adam step → load_weights → next rollout. Reward: the completion contains the digit 7."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("grpo_tiny", tiny.ROOT / "examples" / "grpo_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    history = mod.train(tiny_model_dir, steps=30, seed=0)
    assert len(history) == 30
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last > first + 0.25, f"mean reward {first:.2f} → {last:.2f}: {history}"


# ------------------------------------------------------------------------------------------ harness rollout


def test_harness_rollout_writes_groups_resumes_and_refuses_another_setup(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_DATA_DIR", str(tiny.GSM8K_DIR))
    out = tmp_path / "r.jsonl"
    base = ["rollout", "--task", "gsm8k-cot-zeroshot", "--model", str(tiny_model_dir), "-n", "4", "--max-tokens", "10",
            "--temperature", "1.0", "--top-p", "0.9", "--logprobs-mode", "processed", "--out", str(out), "--no-progress"]
    assert main(base + ["--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["groups_written"] == 2
    assert main(base + ["--limit", "3"]) == 0  # resumes: only the third group is new
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["groups_written"] == 1
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["doc_id"] for g in lines] == ["0", "1", "2"]
    for g in lines:
        assert g["logprobs_mode"] == "processed" and g["n"] == 4 and len(g["samples"]) == 4
        assert [s["sample_idx"] for s in g["samples"]] == [0, 1, 2, 3]
        assert g["prompt_token_ids"] and g["prompt"].endswith("assistant\n")
        for s in g["samples"]:
            assert len(s["completion_ids"]) == len(s["logprobs"]) > 0 and all(lp <= 0 for lp in s["logprobs"])
            assert s["reward"] in (0.0, 1.0) and s["finish_reason"] in ("stop", "length")
        rs = [s["reward"] for s in g["samples"]]
        assert g["reward_mean"] == sum(rs) / 4
    # the same seeds as eval's samples: rerunning from scratch gives the same completions
    again = tmp_path / "again.jsonl"
    assert main(base[:-3] + ["--out", str(again), "--no-progress", "--limit", "3"]) == 0
    assert [[s["completion_ids"] for s in g["samples"]] for g in map(json.loads, again.read_text().splitlines())] \
        == [[s["completion_ids"] for s in g["samples"]] for g in lines]
    capsys.readouterr()
    assert main(base[:base.index("-n")] + ["-n", "2"] + base[base.index("-n") + 2:] + ["--limit", "3"]) == 2
    assert "different setup (differs in: spec_hash, n)" in capsys.readouterr().err


def test_group_rewards_come_from_the_task_grader():
    from harness.backends.base import Completion, GenerationRequest, SamplingParams as HP
    from harness.grading import Grader
    from harness.runs.rollout import _group_line
    from harness.tasks import load_task

    spec = load_task("gsm8k-cot-zeroshot")
    grader = Grader(spec.filters, spec.comparator, strip_think=spec.strip_think)
    req = GenerationRequest("r", "7", "p", HP(n=3), [0, 1, 2], [1, 2, 3])
    samples = [Completion("r", "7", 0, "so \\boxed{18}", token_ids=[5], logprobs=[-0.5]),
               Completion("r", "7", 1, "\\boxed{17}", token_ids=[6], logprobs=[-1.0]),
               Completion("r", "7", 2, "no idea", token_ids=[7], logprobs=[-2.0], finish_reason="length")]
    line = _group_line({"task": spec.name}, req, [1, 2], "18", samples, grader, spec.primary_filter, 1234)
    assert [s["reward"] for s in line["samples"]] == [1.0, 0.0, 0.0]
    assert [s["answer"] for s in line["samples"]] == ["18", "17", None]
    assert line["reward_mean"] == pytest.approx(1 / 3) and line["reward_std"] == pytest.approx((2 / 9) ** 0.5)


def test_load_weights_keeps_tied_embeddings_tied(tiny_model_factory, prompts):
    model_dir = tiny_model_factory("qwen2", tie_word_embeddings=True)
    llm = LLM(model_dir, num_kv_blocks=64, max_model_len=512)
    m = llm.engine.runner.model
    assert m.lm_head.weight is m.model.embed_tokens.weight
    new = torch.randn_like(m.model.embed_tokens.weight)
    assert llm.load_weights([("model.embed_tokens.weight", new)]) == 1
    assert m.lm_head.weight is m.model.embed_tokens.weight and torch.equal(m.lm_head.weight, new)
    ref = hf_model(model_dir)
    ref.model.embed_tokens.weight.data.copy_(new)
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    want = ref.generate(torch.tensor([out.prompt_token_ids]), generation_config=gen)[0, len(out.prompt_token_ids):]
    assert list(out.outputs[0].token_ids) == want.tolist()
