"""The systems the SC-8shot benchmark compares, each driven through the same `Workload`:

  EngineSystem                 our engine (`engine.LLM`), one request with n samples per problem
  HFGenerateSystem             `model.generate(num_return_sequences=n)`, left-padded batches
  HFContinuousBatchingSystem   transformers' `model.generate_batch` (continuous batching)

Each has `describe(workload)` (its configuration, for the JSON), `run(workload)` (one measured
run: a run record, the dict `_finish_run` builds, see the keys there) and `close()`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from harness.bench.machine import kv_bytes_per_token

SYSTEMS = ("engine", "hf", "hf-cb")


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
    ttft_p50, ttft_p95 = (float(q) for q in np.quantile(ttfts, [0.5, 0.95])) if ttfts else (None, None)
    return {
        "wall_s": wall,
        "generated_tokens": generated,
        "tokens_per_s": generated / wall,
        "tokens_forwarded": forwarded,
        # every sample's first token comes from its prompt's last position; each later token costs one position
        "prompt_tokens_computed": forwarded - (generated - wl.num_samples),
        "ttft_p50_s": ttft_p50,
        "ttft_p95_s": ttft_p95,
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
            wl, t_end - t0, generated, after.tokens_computed - before.tokens_computed, [f - t0 for f in first for _ in range(wl.n)],
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


def load_hf(path: str, device: str, torch_dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()


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
                peak_kv = max(peak_kv, _cache_bytes(cache) or rows * (width + new - 1) * kv_bytes_per_token(self.lm))
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
        pool = (cb.num_blocks or self.num_blocks(wl)) * self.page_size * kv_bytes_per_token(self.lm)
        return _finish_run(wl, t_end - t0, sum(len(r.generated_tokens) for r in results), counter.count,
                           [f - t0 for f in firsts], decode_tokens, max(stamps) - t_last_first,
                           peak_kv_bytes=pool, kv_pool_bytes=pool, kv_note="allocated pool (peak in use is not exposed)")

    def close(self) -> None:
        self.lm = None
