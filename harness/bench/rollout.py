"""`harness bench rollout`: RL rollout throughput — `harness rollout` on the engine (one prefill,
n forked samples, token ids, logprobs, rewards) against what TRL falls back to without vLLM: HF
`generate(num_return_sequences=n)` over the same prompts, graded by the same grader. Both stop at
EOS (real rollouts, not fixed-length), same model, dtype and sampling; one run each, engine first.
Tokens count each sample's generated tokens up to and including its EOS."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from harness.bench.machine import machine_facts


def run_rollout_bench(model: str, task: str, limit: int, n: int, max_tokens: int, temperature: float, top_p: float,
                      data_dir: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from harness.models import encode_prompt, quiet_transformers, resolve_model
    from harness.runs.rollout import RolloutOptions, rollout
    from harness.runs.runner import EvalOptions, build_requests, prepare

    quiet_transformers()
    facts = machine_facts("cpu")
    resolved = resolve_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"engine: harness rollout {task} --limit {limit} -n {n} --max-tokens {max_tokens}")
        summary = rollout(RolloutOptions(task=task, model=model, out=Path(tmp) / "r.jsonl", data_dir=data_dir, limit=limit,
                                         n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p), log=log)
    engine = {"wall_s": summary["wall_s"], "generated_tokens": summary["generated_tokens"],
              "tokens_per_s": summary["tokens_per_s"], "mean_reward": summary["mean_reward"]}
    log(f"engine: {engine}")

    from transformers import AutoModelForCausalLM, GenerationConfig

    prep = prepare(EvalOptions(task=task, model=model, data_dir=data_dir, limit=limit, n=n, max_tokens=max_tokens,
                               temperature=temperature, top_p=top_p))
    tok = resolved.load_tokenizer()
    reqs = build_requests(prep, tok, ())
    lm = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=torch.float32).eval()
    eos = set(lm.generation_config.eos_token_id if isinstance(lm.generation_config.eos_token_id, list)
              else [lm.generation_config.eos_token_id])
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    prompts = [encode_prompt(tok, r.prompt) for r in reqs.requests]
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_tokens,
                           num_return_sequences=n, eos_token_id=sorted(eos), pad_token_id=pad)
    log(f"hf: generate({len(prompts)} prompts, num_return_sequences={n})")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = lm.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    wall = time.perf_counter() - t0
    tokens, rewards = 0, []
    primary = prep.spec.primary_filter
    for row, seq in enumerate(out[:, width:].tolist()):
        cut = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
        tokens += cut
        req = reqs.requests[row // n]
        text = tok.decode(seq[:cut], skip_special_tokens=True)
        rewards.append(float(prep.grader.grade(text, reqs.gold[req.doc_id], reqs.opened.get(req.doc_id, False))[primary].correct))
    hf = {"wall_s": round(wall, 3), "generated_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
          "mean_reward": round(sum(rewards) / len(rewards), 4), "rows_per_call": len(prompts) * n}
    log(f"hf: {hf}")
    return {"workload": {"model": resolved.id, "task": task, "problems": limit, "n": n, "max_tokens": max_tokens,
                         "temperature": temperature, "top_p": top_p, "dtype": "float32", "stops_at_eos": True},
            "machine": facts, "engine": engine, "hf_generate": hf,
            "ratio_tokens_per_s": round(engine["tokens_per_s"] / hf["tokens_per_s"], 2)}


def markdown(r: dict[str, Any]) -> str:
    w, e, h = r["workload"], r["engine"], r["hf_generate"]
    return "\n".join([
        f"# RL rollout benchmark — {w['model']}", "",
        f"{w['problems']} {w['task']} problems × n={w['n']} samples, up to {w['max_tokens']} new tokens (stopping at EOS), "
        f"temperature {w['temperature']}, top-p {w['top_p']}, {w['dtype']} on CPU ({r['machine'].get('cpu')}). One run each, "
        "engine first; rewards from the task's grader.", "",
        "| system | generated tokens | wall s | tokens/s | mean reward |", "|---|---|---|---|---|",
        f"| engine (`harness rollout`) | {e['generated_tokens']} | {e['wall_s']:.1f} | {e['tokens_per_s']:.1f} | {e['mean_reward']:.3f} |",
        f"| HF `generate(num_return_sequences={w['n']})`, {h['rows_per_call']} rows | {h['generated_tokens']} | "
        f"{h['wall_s']:.1f} | {h['tokens_per_s']:.1f} | {h['mean_reward']:.3f} |", "",
        f"Engine / HF tokens/s: **{r['ratio_tokens_per_s']:.2f}×** (one run each: no noise range).", "",
    ])
