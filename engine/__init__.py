"""The paged-KV inference engine: continuous batching, prefix caching, forked samples.

    from engine import LLM, SamplingParams
    outs = LLM("path/to/hf-model").generate(["Q: 2+2?"], SamplingParams(temperature=0, max_tokens=16))

    config           EngineConfig (the knobs, checked once) and the device/dtype rules
    sampling_params  per-request sampling settings
    sequence         sequences, fork groups, request outputs
    block_manager    KV blocks: ref counts, copy-on-write, the prefix cache
    scheduler        continuous batching under a token budget, chunked prefill, preemption
    attention        per-step AttentionMetadata and the paged attention function registered in transformers
    model_runner     loads an HF causal LM and runs one flattened step over the paged cache
    cuda_graphs      decode-step graph capture (CUDA + Triton, opt-in: enforce_eager=False)
    cpu_tuning       CPU allocator and oneDNN linear layers
    sampler          counter-based per-sample seeds, top-k/top-p/min-p sampling, logprobs
    tokenizer        prompt ids (the BOS rule) and EOS ids, shared with the harness
    llm_engine       the step loop: schedule, run, sample, detokenise, stop
    llm, async_llm   the synchronous and asyncio facades
"""

import importlib
from typing import Any

# Imported on first use (PEP 562), so a light submodule (engine.sampler's seeds, the server's
# argument list) does not pull torch and the whole engine into a process that needs only it.
_EXPORTS = {
    "AsyncLLM": "engine.async_llm",
    "CompletionOutput": "engine.sequence",
    "EngineConfig": "engine.config",
    "EngineConfigError": "engine.config",
    "EngineStats": "engine.llm_engine",
    "LLM": "engine.llm",
    "LLMEngine": "engine.llm_engine",
    "RequestOutput": "engine.sequence",
    "SamplingParams": "engine.sampling_params",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
