"""The paged-KV inference engine: continuous batching, prefix caching, forked samples.

    from engine import LLM, SamplingParams
    outs = LLM("path/to/hf-model").generate(["Q: 2+2?"], SamplingParams(temperature=0, max_tokens=16))
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
