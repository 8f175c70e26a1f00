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

`harness bench kernels` is the attention-kernel micro-benchmark of `harness.bench_kernels`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from harness import HarnessError

SCHEMA = "reasoning-harness/bench-sc/1"
SYSTEMS = ("engine", "hf", "hf-cb")
DEFAULT_OUT = Path("reports/bench")
GEMM_SIZE = 2048


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
    import torch

    from harness import tasks
    from harness.tasks import data, prompts
    from harness.models import encode_prompt, load_tokenizer, resolve_device, resolve_model

    from engine.cpu_tuning import keep_freed_memory

    reps_for = dict(reps_for or {})
    if threads is not None:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    if device == "cpu":
        keep_freed_memory()  # what the engine does when it loads; set first so that every system runs with it
    resolved = resolve_model(model)
    tok = load_tokenizer(resolved)
    spec = tasks.load_task(task)
    docs = data.load_docs(spec.dataset, spec.dataset.split, data_dir)[:problems]
    if len(docs) < problems:
        raise HarnessError(f"{task} has only {len(docs)} problems, asked for {problems}")
    fewshot = data.load_docs(spec.dataset, spec.dataset.fewshot_split, data_dir) if spec.needs_fewshot_split else None
    builder = prompts.PromptBuilder(spec, tok, fewshot)
    prompt_ids = [encode_prompt(tok, builder.build(d).text) for d in docs]

    t_load = time.perf_counter()
    runners: dict[str, Any] = {}
    hf_lm = None
    if "engine" in systems:
        runners["engine"] = EngineSystem(str(resolved.path), device, dtype, seed, prefix_caching, max_num_batched_tokens)
    if "hf" in systems or "hf-cb" in systems:
        hf_lm = _load_hf(str(resolved.path), device, runners["engine"].torch_dtype if "engine" in runners else _dtype(dtype, device))
    if "hf" in systems:
        runners["hf"] = HFGenerateSystem(hf_lm, tok, hf_batch_rows)
    if "hf-cb" in systems:
        budget = max_num_batched_tokens or (runners["engine"].max_num_batched_tokens if "engine" in runners else 2048)
        runners["hf-cb"] = HFContinuousBatchingSystem(hf_lm, tok, cb_page_size, budget, sharing=prefix_caching)
    log(f"loaded {', '.join(runners)} in {time.perf_counter() - t_load:.1f}s; "
        f"{problems} problems, prompt tokens {[len(p) for p in prompt_ids]}")

    any_lm = runners["engine"].llm.engine.runner.model if "engine" in runners else hf_lm
    facts = model_facts(any_lm, prompt_ids, max_tokens)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(device),
        "workload": {
            "name": "SC-8shot", "task": task, "model": resolved.id, "model_path": str(resolved.path),
            "dtype": str(_dtype(dtype, device)).removeprefix("torch."), "device": device, "problems": problems,
            "doc_ids": [str(d["doc_id"]) for d in docs], "prompt_tokens": [len(p) for p in prompt_ids],
            "n": list(ns), "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "top_k": 0,
            "ignore_eos": True, "seed": seed, "reps": reps, "reps_for": reps_for, "prefix_caching": prefix_caching,
            "hf_batch_rows": hf_batch_rows, "cb_page_size": cb_page_size,
        },
        "model_facts": facts,
        "configs": [],
    }

    gemm_samples: list[float] = []
    gemm_samples.append(measure_gemm(device, _dtype(dtype, device)))
    if warmup:
        wl = Workload(prompt_ids[:1], 2, 4, temperature, top_p, seed)
        for name, runner in runners.items():
            try:
                runner.run(wl)
            except Exception:  # noqa: BLE001 - reported by the measured runs
                pass
    for n in ns:
        wl = Workload(prompt_ids, n, max_tokens, temperature, top_p, seed)
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
                if entry["error"] or rep >= limit:
                    continue
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                try:
                    with RssSampler() as rss:
                        run = runners[s].run(wl)
                except Exception as e:  # noqa: BLE001 - a system that fails is reported, the others go on
                    entry["error"] = f"{type(e).__name__}: {e}"
                    entry["traceback"] = traceback.format_exc(limit=6)
                    log(f"n={n} {s}: FAILED {entry['error']}")
                    continue
                run.update(peak_rss_bytes=rss.peak, rss_before_bytes=rss.start, load_avg_1m=load, rep=rep)
                entry["runs"].append(run)
                log(f"n={n} rep {rep} {s}: {run['tokens_per_s']:.1f} tok/s, wall {run['wall_s']:.1f}s"
                    + (f" (load {load:.1f})" if load is not None else ""))
            gemm_samples.append(measure_gemm(device, _dtype(dtype, device)))
        for s, entry in cfg["systems"].items():
            entry["median"] = _median_run(entry["runs"]) if entry["runs"] else None
        result["configs"].append(cfg)

    result["ceiling"] = ceiling(device, facts, gemm_samples, result["configs"], prompt_ids, max_tokens)
    for cfg in result["configs"]:
        _add_ratios(cfg, result["ceiling"])
    result["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for runner in runners.values():
        runner.close()
    return result


class Workload:
    def __init__(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float, seed: int):
        self.prompts, self.n, self.max_tokens = prompts, n, max_tokens
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    @property
    def num_samples(self) -> int:
        return len(self.prompts) * self.n

    @property
    def generated_tokens(self) -> int:
        return self.num_samples * self.max_tokens


def _finish_run(wl: Workload, wall: float, generated: int, forwarded: int, ttfts: list[float],
                decode_tokens: int, decode_s: float, **extra: Any) -> dict[str, Any]:
    if generated != wl.generated_tokens:
        raise RuntimeError(f"generated {generated} tokens, expected {wl.generated_tokens} (P x n x M)")
    ttfts = sorted(ttfts)
    return {
        "wall_s": wall,
        "generated_tokens": generated,
        "tokens_per_s": generated / wall,
        "tokens_forwarded": forwarded,
        # every sample's first token comes from its prompt's last position; each later token costs one position
        "prompt_tokens_computed": forwarded - (generated - wl.num_samples),
        "ttft_p50_s": _quantile(ttfts, 0.5),
        "ttft_p95_s": _quantile(ttfts, 0.95),
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else None,
        **extra,
    }


class _TokenCounter:
    """Counts the positions a model runs (a forward pre-hook on input_ids)."""

    def __init__(self, module):
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.count += int(ids.numel())

    def close(self) -> None:
        self._handle.remove()


class EngineSystem:
    name = "engine"

    def __init__(self, path: str, device: str, dtype: str, seed: int, prefix_caching: bool, max_num_batched_tokens: int | None):
        from engine import LLM

        kw = dict(device=device, dtype=dtype, seed=seed, enable_prefix_caching=prefix_caching)
        if max_num_batched_tokens:
            kw["max_num_batched_tokens"] = max_num_batched_tokens
        self.llm = LLM(path, **kw)
        self.torch_dtype = self.llm.config.torch_dtype
        self.max_num_batched_tokens = self.llm.config.max_num_batched_tokens

    def describe(self, wl: Workload) -> dict[str, Any]:
        cfg = self.llm.config
        return {"config": {"block_size": cfg.block_size, "num_kv_blocks": self.llm.engine.block_manager.num_blocks,
                           "max_num_seqs": cfg.max_num_seqs, "max_num_batched_tokens": cfg.max_num_batched_tokens,
                           "enable_prefix_caching": cfg.enable_prefix_caching}}

    def run(self, wl: Workload) -> dict[str, Any]:
        from engine import SamplingParams
        from engine.sampler import derive_seed

        eng = self.llm.engine
        bm = eng.block_manager
        bm.peak_used_blocks = bm.num_used_blocks
        before = eng.stats
        counter = _TokenCounter(eng.runner.model)
        try:
            t0 = time.monotonic()
            ids = [
                eng.add_request(p, SamplingParams(n=wl.n, temperature=wl.temperature, top_p=wl.top_p, max_tokens=wl.max_tokens,
                                                  ignore_eos=True, seed=derive_seed(wl.seed, i)), arrival_time=t0)
                for i, p in enumerate(wl.prompts)
            ]
            done, steps = {}, []
            while eng.has_unfinished_requests():
                for out in eng.step():
                    if out.finished:
                        done[out.request_id] = out
                steps.append((time.monotonic(), eng.stats.generated_tokens))
            t_end = time.monotonic()
        finally:
            counter.close()
        outs = [done[i] for i in ids]
        errors = [o.error for o in outs if o.error]
        if errors:
            raise RuntimeError(f"engine request failed: {errors[0]}")
        after = eng.stats
        generated = sum(len(c.token_ids) for o in outs for c in o.outputs)
        first = [o.metrics.first_token_time for o in outs]
        t_last_first = max(first)
        gen_at = next(g for t, g in steps if t >= t_last_first)
        decode_tokens = after.generated_tokens - gen_at
        run = _finish_run(
            wl, t_end - t0, generated, counter.count, [f - t0 for f in first for _ in range(wl.n)],
            decode_tokens, t_end - t_last_first,
            peak_kv_bytes=bm.peak_used_blocks * eng.runner.bytes_per_block,
            kv_pool_bytes=bm.num_blocks * eng.runner.bytes_per_block,
            steps=after.steps - before.steps,
            engine_prompt_tokens_computed=after.prompt_tokens_computed - before.prompt_tokens_computed,
            preemptions=after.num_preemptions - before.num_preemptions,
            forward_s=after.forward_s - before.forward_s, sample_s=after.sample_s - before.sample_s,
        )
        return run

    def close(self) -> None:
        self.llm = None


def _dtype(dtype: str, device: str):
    from harness.models import resolve_dtype

    return resolve_dtype(dtype, device)


def _load_hf(path: str, device: str, torch_dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()


def _kv_bytes_per_token(lm) -> int:
    text = lm.config.get_text_config()
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * lm.dtype.itemsize


def _cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "nbytes"):
                total += t.nbytes
    return total


class HFGenerateSystem:
    name = "hf"

    def __init__(self, lm, tok, batch_rows: int):
        from transformers import GenerationConfig

        self.lm, self.tok, self.batch_rows = lm, tok, batch_rows
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.pad = int(pad)
        # a neutral default config: the checkpoint's sampling defaults and EOS must not leak in
        self.lm.generation_config = GenerationConfig(pad_token_id=self.pad)

    def describe(self, wl: Workload) -> dict[str, Any]:
        per_call = max(1, self.batch_rows // wl.n)
        return {"config": {"problems_per_call": per_call, "rows_per_call": per_call * wl.n, "padding": "left",
                           "attn_implementation": self.lm.config._attn_implementation}}

    def run(self, wl: Workload) -> dict[str, Any]:
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        per_call = max(1, self.batch_rows // wl.n)
        dev = self.lm.device
        counter = _TokenCounter(self.lm)
        t0 = time.perf_counter()
        ttfts, generated, decode_tokens, decode_s, peak_kv, padded_prompt = [], 0, 0, 0.0, 0, 0
        try:
            for call, start in enumerate(range(0, len(wl.prompts), per_call)):
                group = wl.prompts[start : start + per_call]
                width = max(map(len, group))
                ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in group], device=dev)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=dev)
                marks: dict[str, float] = {}

                class FirstToken(StoppingCriteria):
                    def __call__(self, input_ids, scores, **kw):
                        marks.setdefault("first", time.perf_counter())
                        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

                gen = GenerationConfig(do_sample=True, temperature=wl.temperature, top_p=wl.top_p, top_k=0,
                                       max_new_tokens=wl.max_tokens, num_return_sequences=wl.n, eos_token_id=None,
                                       pad_token_id=self.pad, return_dict_in_generate=True)
                torch.manual_seed(wl.seed + call)
                with torch.inference_mode():
                    out = self.lm.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                           stopping_criteria=StoppingCriteriaList([FirstToken()]))
                t_done = time.perf_counter()
                new = out.sequences.shape[1] - width
                rows = out.sequences.shape[0]
                generated += rows * new
                ttfts += [marks["first"] - t0] * rows
                decode_tokens += rows * (new - 1)
                decode_s += t_done - marks["first"]
                cache = out.get("cache", None) if hasattr(out, "get") else None
                if cache is None and "past_key_values" in getattr(out, "keys", lambda: ())():
                    cache = out["past_key_values"]  # transformers < 5
                peak_kv = max(peak_kv, _cache_bytes(cache) or rows * (width + new - 1) * _kv_bytes_per_token(self.lm))
                padded_prompt += rows * width
                del out, cache
        finally:
            counter.close()
        return _finish_run(wl, time.perf_counter() - t0, generated, counter.count, ttfts, decode_tokens, decode_s,
                           peak_kv_bytes=peak_kv, calls=-(-len(wl.prompts) // per_call), padded_prompt_tokens=padded_prompt)

    def close(self) -> None:
        self.lm = None


class HFContinuousBatchingSystem:
    name = "hf-cb"

    def __init__(self, lm, tok, page_size: int, max_batch_tokens: int, sharing: bool = False):
        self.lm, self.tok, self.page_size, self.max_batch_tokens = lm, tok, page_size, max_batch_tokens
        self.sharing = sharing  # CB's block sharing = fork sharing + a prefix cache across requests
        self.pad = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))

    def num_blocks(self, wl: Workload) -> int:
        """Pages the workload holds at its peak (10% slack). With block sharing, each prompt's full
        pages once and per sample its partial prompt page plus its new tokens' pages; without, a
        fork copies the prompt's pages, so every sample holds its whole sequence."""
        ps = self.page_size
        if self.sharing:
            need = sum(len(p) // ps + wl.n * math.ceil((len(p) % ps + wl.max_tokens) / ps) for p in wl.prompts)
        else:
            need = sum(wl.n * math.ceil((len(p) + wl.max_tokens) / ps) for p in wl.prompts)
        return int(need * 1.1) + 2

    def describe(self, wl: Workload) -> dict[str, Any]:
        return {"config": {"page_size": self.page_size, "num_blocks": self.num_blocks(wl),
                           "max_batch_tokens": self.max_batch_tokens, "allow_block_sharing": self.sharing,
                           "attn_implementation": "sdpa (CB's choice without flash-attn)"}}

    def run(self, wl: Workload) -> dict[str, Any]:
        import torch
        from transformers import ContinuousBatchingConfig, GenerationConfig

        gen = GenerationConfig(do_sample=True, temperature=wl.temperature, top_p=wl.top_p, top_k=0,
                               max_new_tokens=wl.max_tokens, num_return_sequences=wl.n, eos_token_id=-1,
                               pad_token_id=self.pad)
        cb = ContinuousBatchingConfig(num_blocks=self.num_blocks(wl), max_batch_tokens=self.max_batch_tokens,
                                      page_size=self.page_size, allow_block_sharing=self.sharing, seed=wl.seed)
        counter = _TokenCounter(self.lm)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.lm.generate_batch(wl.prompts, generation_config=gen, continuous_batching_config=cb,
                                             record_timestamps=True, progress_bar=False, warmup=False)
        finally:
            counter.close()
        t_end = time.perf_counter()
        results = list(out.values())
        failed = [r for r in results if r.error is not None]
        if failed or len(results) != wl.num_samples:
            raise RuntimeError(f"generate_batch returned {len(results)} results, {len(failed)} failed, "
                               f"expected {wl.num_samples}" + (f": {failed[0].error}" if failed else ""))
        firsts = [r.timestamps[0] for r in results]
        t_last_first = max(firsts)
        stamps = [t for r in results for t in r.timestamps]
        decode_tokens = sum(t > t_last_first for t in stamps)
        pool = (cb.num_blocks or self.num_blocks(wl)) * self.page_size * _kv_bytes_per_token(self.lm)
        return _finish_run(wl, t_end - t0, sum(len(r.generated_tokens) for r in results), counter.count,
                           [f - t0 for f in firsts], decode_tokens, max(stamps) - t_last_first,
                           peak_kv_bytes=pool, kv_pool_bytes=pool, kv_note="allocated pool (peak in use is not exposed)")

    def close(self) -> None:
        self.lm = None


# --------------------------------------------------------------------------------------------------
# Measurements


class RssSampler:
    """Peak resident set size of this process while the block runs. On Linux the kernel keeps the
    high-water mark (VmHWM), which writing 5 to /proc/self/clear_refs resets: no sampling thread,
    whose wake-ups would stall the measured systems' GEMM threads on a small machine. Elsewhere a
    thread samples the RSS every `interval` seconds."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self.start = self.peak = rss_bytes()
        if not _reset_hwm():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_bytes(), _hwm_bytes() if self._thread is None else 0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm_bytes() > 0
    except OSError:
        return False


def _hwm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_gemm(device: str, dtype, size: int = GEMM_SIZE, reps: int = 5) -> float:
    """Median FLOP/s of a size^3 matmul at the current thread count; on CPU the better of torch.mm
    (MKL) and oneDNN's matmul (what the engine's linear layers use there), so that the ceiling is
    the machine's best GEMM rate, not the slower library's."""
    import torch

    from engine.cpu_tuning import onednn_available, onednn_linear

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    products = [torch.mm]
    if torch.device(device).type == "cpu" and onednn_available():
        products.append(onednn_linear)  # a @ b.T: the same FLOPs
    best = 0.0
    for product in products:
        times = []
        for i in range(reps + 1):
            _sync(device)
            t = time.perf_counter()
            product(a, b)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t)
        best = max(best, 2 * size**3 / statistics.median(times))
    return best


def measure_bandwidth(device: str, mib: int = 1024) -> float:
    """Bytes/s of a large on-device copy (read + write)."""
    import torch

    x = torch.empty(mib << 18, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    times = []
    for i in range(6):
        _sync(device)
        t = time.perf_counter()
        y.copy_(x)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return 2 * x.nbytes / statistics.median(times)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def model_facts(lm, prompt_ids: list[list[int]], max_tokens: int) -> dict[str, Any]:
    text = lm.config.get_text_config()
    total = sum(p.numel() for p in lm.parameters())
    emb_in = lm.get_input_embeddings().weight
    emb_out = lm.get_output_embeddings()
    emb_out = emb_out.weight if emb_out is not None else None
    tied = emb_out is not None and emb_out.data_ptr() == emb_in.data_ptr()
    embedding = emb_in.numel() + (0 if tied or emb_out is None else emb_out.numel())
    non_emb = total - embedding
    lm_head = emb_out.numel() if emb_out is not None else 0
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layers = text.num_hidden_layers
    mean_prompt = statistics.mean(map(len, prompt_ids))
    mean_ctx = mean_prompt + max_tokens / 2
    attn_per_token = 4 * layers * heads * head_dim * mean_ctx  # QK^T and PV at the mean decode context
    return {
        "parameters": total, "non_embedding_parameters": non_emb, "lm_head_parameters": lm_head,
        "tied_embeddings": tied, "layers": layers, "hidden_size": text.hidden_size, "heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads, "head_dim": head_dim,
        "vocab_size": text.vocab_size, "kv_bytes_per_token": _kv_bytes_per_token(lm),
        "weight_bytes": sum(p.numel() * p.element_size() for p in lm.parameters()),
        "flops_per_token": 2 * non_emb,
        "flops_per_generated_token_all_in": 2 * non_emb + 2 * lm_head + attn_per_token,
        "mean_prompt_tokens": mean_prompt,
    }


def ceiling(device: str, facts: dict[str, Any], gemm_samples: list[float], configs: list[dict], prompt_ids, max_tokens: int) -> dict[str, Any]:
    gemm = statistics.median(gemm_samples)
    out: dict[str, Any] = {
        "gemm": f"{GEMM_SIZE}x{GEMM_SIZE}x{GEMM_SIZE} matmul" + (", best of MKL and oneDNN" if str(device) == "cpu" else ""),
        "gemm_flops_per_s": gemm,
        "gemm_flops_per_s_samples": gemm_samples,
        "basis": "FLOP-bound: GEMM FLOP/s / (2 x non-embedding parameters) per token",
        "tokens_per_s": gemm / facts["flops_per_token"],
        # the whole workload's model FLOPs (prefill once per prompt, lm_head and attention included) per
        # generated token: what an engine doing no redundant work could reach at the GEMM rate
        "all_in": {},
    }
    prompt_tokens = sum(map(len, prompt_ids))
    for cfg in configs:
        gen = len(prompt_ids) * cfg["n"] * max_tokens
        work = prompt_tokens * facts["flops_per_token"] + gen * facts["flops_per_generated_token_all_in"]
        out["all_in"][str(cfg["n"])] = gemm * gen / work
    if str(device).startswith("cuda"):
        bw = measure_bandwidth(device)
        out["bandwidth_bytes_per_s"] = bw
        out["basis"] = "memory-bound decode: weights once per step + each row's KV, at the measured copy bandwidth"
        out["per_n"] = {}
        for cfg in configs:
            rows = len(prompt_ids) * cfg["n"]
            ctx = facts["mean_prompt_tokens"] + max_tokens / 2
            step_bytes = facts["weight_bytes"] + rows * ctx * facts["kv_bytes_per_token"]
            out["per_n"][str(cfg["n"])] = rows * bw / step_bytes
        out["tokens_per_s"] = None
    return out


def _ceiling_for(ceil: dict[str, Any], n: int) -> float | None:
    if ceil.get("per_n"):
        return ceil["per_n"].get(str(n))
    return ceil.get("tokens_per_s")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "rep":
            vals = [r[key] for r in runs if r.get(key) is not None]
            out[key] = statistics.median(vals) if vals else None
    return out


def _add_ratios(cfg: dict[str, Any], ceil: dict[str, Any]) -> None:
    meds = {s: e["median"]["tokens_per_s"] for s, e in cfg["systems"].items() if e.get("median")}
    cfg["ratios"] = {f"{a}/{b}": meds[a] / meds[b] for a in meds for b in meds if a != b}
    c = _ceiling_for(ceil, cfg["n"])
    all_in = ceil.get("all_in", {}).get(str(cfg["n"]))
    cfg["ceiling_tokens_per_s"] = c
    cfg["ceiling_fraction"] = {s: v / c for s, v in meds.items()} if c else {}
    cfg["all_in_ceiling_tokens_per_s"] = all_in
    cfg["all_in_ceiling_fraction"] = {s: v / all_in for s, v in meds.items()} if all_in else {}


def machine_facts(device: str) -> dict[str, Any]:
    import numpy
    import torch
    import transformers

    import harness

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    facts = {
        "cpu": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "numpy": numpy.__version__,
        "harness": getattr(harness, "__version__", None), "device": device,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "malloc": "glibc: mmap threshold 1 GiB, no heap trim (engine.cpu_tuning.keep_freed_memory, process-wide, "
                  "before any system runs)" if str(device) == "cpu" else None,
    }
    try:
        import subprocess

        facts["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        facts["git_commit"] = None
    if str(device).startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def _quantile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in s).strip("-")


# --------------------------------------------------------------------------------------------------
# Outputs


def write_outputs(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    if len(result["configs"]) > 1:
        png = out_dir / f"{name}.png"
        if plot(result, png):
            paths.append(png)
    return paths


def _fmt(v: Any, spec: str = ".1f", scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


def markdown(result: dict[str, Any]) -> str:
    m, w, c = result["machine"], result["workload"], result["ceiling"]
    lines = [
        f"# SC-8shot benchmark — {w['model']}",
        "",
        f"{w['problems']} GSM8K test problems × n samples × {w['max_tokens']} new tokens (EOS ignored), "
        f"{w['task']} prompt ({min(w['prompt_tokens'])}–{max(w['prompt_tokens'])} tokens), temperature "
        f"{w['temperature']}, top-p {w['top_p']}; {w['dtype']} on {w['device']}; median of {w['reps']} repetitions"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in w.get("reps_for", {}).items()) + ")" if w.get("reps_for") else "")
        + " after a warm-up, systems alternating. Engine prefix caching across problems: "
        f"{'on' if w['prefix_caching'] else 'off'}.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, torch threads {m['torch_threads']}; torch {m['torch']}, "
        f"transformers {m['transformers']}; load average at start {_fmt((m.get('load_avg_start') or [None])[0], '.2f')}"
        f", at end {_fmt((m.get('load_avg_end') or [None])[0], '.2f')}.",
        "",
        f"Ceiling: {c['basis']}; GEMM ({c['gemm']}) {c['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s (median of "
        f"{len(c['gemm_flops_per_s_samples'])}, range {min(c['gemm_flops_per_s_samples']) / 1e9:.1f}–"
        f"{max(c['gemm_flops_per_s_samples']) / 1e9:.1f})"
        + (f" → {c['tokens_per_s']:.0f} tokens/s." if c.get("tokens_per_s") else "."),
        "",
    ]
    for cfg in result["configs"]:
        lines += [f"## n = {cfg['n']}", ""]
        lines.append("| system | tok/s | wall s | prompt tok computed | peak KV MiB | peak RSS MiB | TTFT p50 / p95 s "
                     "| decode tok/s | % ceiling | % all-in ceiling |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s, e in cfg["systems"].items():
            md = e.get("median")
            if not md:
                why = e.get("error") or e.get("skipped") or "no runs"
                lines.append(f"| {s} | {why} | | | | | | | | |")
                continue
            lines.append(
                f"| {s} | {md['tokens_per_s']:.1f} | {md['wall_s']:.1f} | {md['prompt_tokens_computed']:.0f} | "
                f"{_fmt(md.get('peak_kv_bytes'), '.0f', 2**-20)}{'†' if s == 'hf-cb' else ''} | "
                f"{_fmt(md.get('peak_rss_bytes'), '.0f', 2**-20)} | {_fmt(md.get('ttft_p50_s'), '.2f')} / "
                f"{_fmt(md.get('ttft_p95_s'), '.2f')} | {_fmt(md.get('decode_tokens_per_s'))} | "
                f"{_fmt(cfg['ceiling_fraction'].get(s), '.1f', 100)} | {_fmt(cfg['all_in_ceiling_fraction'].get(s), '.1f', 100)} |"
            )
        if cfg.get("ratios"):
            lines += ["", "Ratios (tokens/s): " + ", ".join(f"{k} {v:.2f}×" for k, v in sorted(cfg["ratios"].items()))]
        lines.append("")
    lines += [
        "Prompt tokens computed: model positions run minus one per decoded token (hf includes left padding and "
        "recomputes each prompt n times). † hf-cb: the KV pool it allocated (sized to the workload); peak in use is "
        "not exposed. TTFT: from submitting all requests to each sample's first token. Decode tok/s: tokens after "
        "the last prompt's first token over the time from then on (hf: per generate call). All-in ceiling: the "
        "workload's model FLOPs (each prompt once, lm_head and attention included) at the GEMM rate.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = [cfg["n"] for cfg in result["configs"]]
    systems = list(result["configs"][0]["systems"])
    for s in systems:
        pts = [(cfg["n"], cfg["systems"][s]["median"]["tokens_per_s"]) for cfg in result["configs"]
               if cfg["systems"].get(s, {}).get("median")]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=s)
    ceil = [(cfg["n"], cfg["ceiling_tokens_per_s"]) for cfg in result["configs"] if cfg.get("ceiling_tokens_per_s")]
    if ceil:
        ax.plot(*zip(*ceil), linestyle="--", color="gray", label="FLOP-bound ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_yscale("log")
    ax.set_xlabel("samples per problem (n)")
    ax.set_ylabel("generated tokens/s")
    w, m = result["workload"], result["machine"]
    ax.set_title(f"SC-8shot, {w['model']}, P={w['problems']}, M={w['max_tokens']}\n"
                 f"{m['cpu']}, {m['torch_threads']} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
