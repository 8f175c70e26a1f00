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

from engine.async_llm import AsyncLLM
from engine.config import EngineConfig, EngineConfigError
from engine.llm import LLM
from engine.llm_engine import EngineStats, LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import CompletionOutput, RequestOutput

__all__ = [
    "AsyncLLM",
    "CompletionOutput",
    "EngineConfig",
    "EngineConfigError",
    "EngineStats",
    "LLM",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
]
