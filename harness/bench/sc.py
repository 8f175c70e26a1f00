"""`harness bench`: our engine against HF transformers, side by side, on one machine, in one run.

`harness bench sc` runs the self-consistency workload "SC-8shot": the first P GSM8K test problems,
each rendered with the gsm8k-cot task's 8-shot chain-of-thought prompt (~800 tokens), n samples
per problem (temperature 0.7, top-p 0.95, no top-k), exactly M new tokens per sample (EOS ignored,
so every system generates the same number of tokens). Systems, in one process, alternating:

  engine  our engine (`engine.LLM`): every problem is one request with n samples; the prompt is
          prefilled once and the samples fork from it. Prefix caching across requests is off by
          default (`--prefix-caching` turns it on): the 8 exemplars are common to all problems and
          would otherwise be computed once for all, which HF generate cannot do.
  hf      `model.generate(num_return_sequences=n, do_sample=True)`: problems are left-padded into
          one batch of up to `--hf-batch-rows` rows (P*n rows when they fit; otherwise as many
          whole problems per call as fit, calls run one after another). HF expands every prompt
          n times before the prefill, so it computes P*n prompts (padding included).
  hf-cb   transformers' continuous batching (`model.generate_batch`) with num_return_sequences=n
          (it prefills each prompt once and forks the children), a KV pool sized to the workload
          (`--cb-page-size` tokens per page), the same per-step token budget as the engine.

Each system gets one untimed warm-up, then `--reps` measured repetitions; the order of the
systems rotates between repetitions, and the medians are reported. Between repetitions the
machine's fp32 GEMM rate is measured too (a 2048^3 matmul at the thread count in use), and turned
into a FLOP-bound ceiling: tokens/s = GEMM FLOP/s / (2 x non-embedding parameters). On CUDA the
ceiling is the memory-bandwidth bound of a decode step instead (weights + KV read once per step).

Per system and repetition: wall time; generated tokens and tokens/s; prompt tokens computed
(model positions run, minus one position per decoded token); peak KV bytes (engine: blocks in use
at the peak; hf: the DynamicCache at the end; hf-cb: the pool it allocated); peak RSS (the
kernel's high-water mark, reset before each run); TTFT p50/p95 over samples (all requests are
submitted at t=0); decode tokens/s (tokens generated after the last prompt's first token, over the
time from then to the end; for hf, per generate call, summed).

Output: `<out>/<name>.json` (machine facts, workload, every repetition), `<name>.md` (a table per
n), and `<name>.png` (throughput vs n, when several n are run).

This module renders the workload and runs it (`run_sc`); the systems are in `harness.bench.systems`,
the machine's and the model's facts and the ceiling in `harness.bench.machine`, the JSON, Markdown
and plot in `harness.bench.output`. `harness bench kernels` is `harness.bench.kernels`.
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from harness import HarnessError
from harness.bench.machine import RssSampler, ceiling, ceiling_for, machine_facts, measure_gemm, model_facts
from harness.bench.systems import SYSTEMS, EngineSystem, HFContinuousBatchingSystem, HFGenerateSystem, Workload, load_hf

SCHEMA = "reasoning-harness/bench-sc/1"


# --------------------------------------------------------------------------------------------------
# The run


def run_sc(
    model: str = "smollm2-135m-instruct",
    problems: int = 4,
    ns: Sequence[int] = (16,),
    max_tokens: int = 128,
    reps: int = 3,
    reps_for: dict[str, int] | None = None,
    systems: Sequence[str] = SYSTEMS,
    skip: set[tuple[str, int]] = frozenset(),
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 1234,
    threads: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    prefix_caching: bool = False,
    max_num_batched_tokens: int | None = None,
    hf_batch_rows: int = 64,
    cb_page_size: int = 64,
    task: str = "gsm8k-cot",
    data_dir: Path | None = None,
    warmup: bool = True,
    log=print,
) -> dict[str, Any]:
    """The SC-8shot benchmark (see the module docstring): the result that `harness.bench.output` writes."""
    reps_for = dict(reps_for or {})
    device, torch_dtype, resolved = _setup(model, device, dtype, threads)
    tok, docs, prompt_ids = load_prompts(resolved, task, problems, data_dir)
    t_load = time.perf_counter()
    runners, hf_lm = _load_systems(systems, str(resolved.path), tok, device, dtype, torch_dtype, seed, prefix_caching,
                                   max_num_batched_tokens, hf_batch_rows, cb_page_size)
    log(f"loaded {', '.join(runners)} in {time.perf_counter() - t_load:.1f}s; "
        f"{problems} problems, prompt tokens {[len(p) for p in prompt_ids]}")
    facts = model_facts(runners["engine"].llm.engine.runner.model if "engine" in runners else hf_lm, prompt_ids, max_tokens)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(device),
        "workload": {
            "name": "SC-8shot", "task": task, "model": resolved.id, "model_path": str(resolved.path),
            "dtype": str(torch_dtype).removeprefix("torch."), "device": device, "problems": problems,
            "doc_ids": [str(d["doc_id"]) for d in docs], "prompt_tokens": [len(p) for p in prompt_ids],
            "n": list(ns), "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": 0,
            "ignore_eos": True, "seed": seed, "reps": reps, "reps_for": reps_for, "prefix_caching": prefix_caching,
            "hf_batch_rows": hf_batch_rows, "cb_page_size": cb_page_size,
        },
        "model_facts": facts, "configs": [],
    }
    gemm_samples = [measure_gemm(device, torch_dtype)]
    if warmup:
        _warm_up(runners, Workload(prompt_ids[:1], 2, 4, temperature, top_p, seed))
    for n in ns:
        wl = Workload(prompt_ids, n, max_tokens, temperature, top_p, seed)
        result["configs"].append(_measure_config(  # the GEMM rate is measured again after every repetition
            runners, wl, reps, reps_for, skip, log, after_rep=lambda: gemm_samples.append(measure_gemm(device, torch_dtype))))
    _add_ceiling(result, device, gemm_samples, prompt_ids, max_tokens)
    for runner in runners.values():
        runner.close()
    return result


def _setup(model: str, device: str, dtype: str, threads: int | None):
    """Threads and malloc settings for the whole process; the device, the torch dtype and the model."""
    import torch

    from engine.cpu_tuning import keep_freed_memory
    from harness.models import resolve_device, resolve_dtype, resolve_model

    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    if device == "cpu":
        keep_freed_memory()  # what the engine does when it loads; set first so that every system runs with it
    return device, resolve_dtype(dtype, device), resolve_model(model)


def load_prompts(resolved, task: str, problems: int, data_dir: Path | None):
    """The workload's prompts: (tokenizer, the first `problems` test docs of `task`, their prompts'
    token ids), each doc rendered by the task's prompt builder (the 8-shot CoT prompt for gsm8k-cot)."""
    from harness import tasks
    from harness.models import encode_prompt, load_tokenizer
    from harness.tasks import data, prompts

    tok = load_tokenizer(resolved)
    spec = tasks.load_task(task)
    docs = data.load_docs(spec.dataset, spec.dataset.split, data_dir)[:problems]
    if len(docs) < problems:
        raise HarnessError(f"{task} has only {len(docs)} problems, asked for {problems}")
    fewshot = data.load_docs(spec.dataset, spec.dataset.fewshot_split, data_dir) if spec.needs_fewshot_split else None
    builder = prompts.PromptBuilder(spec, tok, fewshot)
    return tok, docs, [encode_prompt(tok, builder.build(d, i).text) for i, d in enumerate(docs)]


def _load_systems(systems: Sequence[str], path: str, tok, device: str, dtype: str, torch_dtype, seed: int,
                  prefix_caching: bool, max_num_batched_tokens: int | None, hf_batch_rows: int,
                  cb_page_size: int) -> tuple[dict[str, Any], Any]:
    """The systems asked for, by name, and the HF model that hf and hf-cb share (None without them)."""
    runners: dict[str, Any] = {}
    hf_lm = None
    if "engine" in systems:
        runners["engine"] = EngineSystem(path, device, dtype, seed, prefix_caching, max_num_batched_tokens)
    if "hf" in systems or "hf-cb" in systems:
        hf_lm = load_hf(path, device, runners["engine"].torch_dtype if "engine" in runners else torch_dtype)
    if "hf" in systems:
        runners["hf"] = HFGenerateSystem(hf_lm, tok, hf_batch_rows)
    if "hf-cb" in systems:
        budget = max_num_batched_tokens or (runners["engine"].max_num_batched_tokens if "engine" in runners else 2048)
        runners["hf-cb"] = HFContinuousBatchingSystem(hf_lm, tok, cb_page_size, budget, sharing=prefix_caching)
    return runners, hf_lm


def _warm_up(runners: dict[str, Any], wl: Workload) -> None:
    """One untimed run of each system; a failure is left for the measured runs to report."""
    for runner in runners.values():
        try:
            runner.run(wl)
        except Exception:  # noqa: BLE001 - reported by the measured runs
            pass


def _measure_config(runners: dict[str, Any], wl: Workload, reps: int, reps_for: dict[str, int],
                    skip: set[tuple[str, int]], log, after_rep: Callable[[], None]) -> dict[str, Any]:
    """Every system's repetitions at one n, the order of the systems rotating between repetitions
    (`after_rep` runs after each), and each system's median run."""
    n = wl.n
    active = [s for s in runners if (s, n) not in skip]
    cfg: dict[str, Any] = {"n": n, "systems": {}}
    for s in runners:
        cfg["systems"][s] = {"runs": [], "error": None, **runners[s].describe(wl)}
        if (s, n) in skip:
            cfg["systems"][s]["skipped"] = "skipped on request (--skip)"
    for rep in range(reps):
        order = active[rep % len(active):] + active[: rep % len(active)] if active else []
        for s in order:
            entry = cfg["systems"][s]
            limit = reps_for.get(f"{s}@{n}", reps_for.get(s, reps))
            if not entry["error"] and rep < limit:
                _measure_run(runners[s], wl, entry, rep, log)
        after_rep()
    for entry in cfg["systems"].values():
        entry["median"] = _median_run(entry["runs"]) if entry["runs"] else None
    return cfg


def _measure_run(runner, wl: Workload, entry: dict[str, Any], rep: int, log) -> None:
    """One measured run, with its peak RSS and the load average before it, appended to
    `entry["runs"]`; or the failure, in `entry["error"]` (the system is not run again at this n)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        with RssSampler() as rss:
            run = runner.run(wl)
    except Exception as e:  # noqa: BLE001 - a system that fails is reported, the others go on
        entry["error"] = f"{type(e).__name__}: {e}"
        entry["traceback"] = traceback.format_exc(limit=6)
        log(f"n={wl.n} {runner.name}: FAILED {entry['error']}")
        return
    run.update(peak_rss_bytes=rss.peak, rss_before_bytes=rss.start, load_avg_1m=load, rep=rep)
    entry["runs"].append(run)
    log(f"n={wl.n} rep {rep} {runner.name}: {run['tokens_per_s']:.1f} tok/s, wall {run['wall_s']:.1f}s"
        + (f" (load {load:.1f})" if load is not None else ""))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the repetitions of each numeric field of the run records (None when no run has it)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "rep":
            vals = [r[key] for r in runs if r.get(key) is not None]
            out[key] = statistics.median(vals) if vals else None
    return out


def _add_ceiling(result: dict[str, Any], device: str, gemm_samples: list[float], prompt_ids, max_tokens: int) -> None:
    """The ceiling (from the GEMM samples of the whole run), each n's ratios between systems and
    fractions of the ceiling, and the load average at the end."""
    result["ceiling"] = ceiling(device, result["model_facts"], gemm_samples, result["configs"], prompt_ids, max_tokens)
    for cfg in result["configs"]:
        _add_ratios(cfg, result["ceiling"])
    result["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _add_ratios(cfg: dict[str, Any], ceil: dict[str, Any]) -> None:
    meds = {s: e["median"]["tokens_per_s"] for s, e in cfg["systems"].items() if e.get("median")}
    cfg["ratios"] = {f"{a}/{b}": meds[a] / meds[b] for a in meds for b in meds if a != b}
    c = ceiling_for(ceil, cfg["n"])
    all_in = ceil.get("all_in", {}).get(str(cfg["n"]))
    cfg["ceiling_tokens_per_s"] = c
    cfg["ceiling_fraction"] = {s: v / c for s, v in meds.items()} if c else {}
    cfg["all_in_ceiling_tokens_per_s"] = all_in
    cfg["all_in_ceiling_fraction"] = {s: v / all_in for s, v in meds.items()} if all_in else {}
