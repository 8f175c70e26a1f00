"""The engine on the Triton kernels gives the torch backend's greedy tokens (tiny model, fp32).

Without a GPU the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set before the
kernels are imported; see tests/test_kernels_triton.py). With CUDA this also runs the CUDA
path: Triton kernels compiled for the GPU and decode steps replayed from CUDA graphs.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import triton  # noqa: F401
except Exception as e:  # pragma: no cover - depends on the install
    pytest.skip(f"triton is not importable ({type(e).__name__}: {e}); Triton engine path untested", allow_module_level=True)

from engine import LLM, EngineConfigError, SamplingParams  # noqa: E402
from kernels.backend import get_ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _run(model_dir, backend, prompts, params):
    llm = LLM(
        model_dir, attention_backend=backend, dtype="float32", num_kv_blocks=40, max_model_len=128,
        block_size=16, max_num_batched_tokens=32, max_num_seqs=8,
    )
    assert llm.engine.runner.ops.name == backend
    outs = llm.generate(prompts, params)
    assert llm.stats.blocks_in_use == 0
    return outs, llm


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: soft-capping, sliding window 16, GQA
def test_triton_backend_greedy_parity(arch, tiny_model_factory, monkeypatch):
    """Chunked prefill (a 32-token budget: chunks attend to cached blocks, mixed with decodes),
    decode, and a fork group (n=3 from a 40-token prompt: 2 whole shared blocks) through the
    shared-prefix kernel; tokens equal the torch backend's, chosen-token logprobs within 1e-4."""
    model_dir = tiny_model_factory(arch)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (40, 23, 57)]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    params = [greedy.replace(n=3), greedy, greedy]

    triton_ops = get_ops("triton", "cuda" if ON_CUDA else "cpu")
    shared_calls = []
    real_shared = triton_ops.shared_prefix_decode_attention

    def spy(*args, **kwargs):
        shared_calls.append(len(kwargs["shared_prefixes"]))
        return real_shared(*args, **kwargs)

    monkeypatch.setattr(triton_ops, "shared_prefix_decode_attention", spy)
    got, llm = _run(model_dir, "triton", prompts, params)
    want, _ = _run(model_dir, "torch", prompts, params)
    if not (ON_CUDA and llm.engine.runner.graphs is not None):
        assert shared_calls, "the fork group never reached the shared-prefix kernel"
    for g_out, w_out in zip(got, want):
        assert [c.token_ids for c in g_out.outputs] == [c.token_ids for c in w_out.outputs]
        for gc, wc in zip(g_out.outputs, w_out.outputs):
            torch.testing.assert_close(torch.tensor(gc.logprobs), torch.tensor(wc.logprobs), atol=1e-4, rtol=1e-4)
    assert len(got[0].outputs) == 3 and all(len(c.token_ids) == 8 for o in got for c in o.outputs)


def test_attention_backend_config_errors(tiny_model_factory, monkeypatch):
    model_dir = tiny_model_factory("llama")
    with pytest.raises(EngineConfigError, match="attention_backend must be"):
        LLM(model_dir, attention_backend="flash", num_kv_blocks=16, max_model_len=64)
    if not ON_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(EngineConfigError, match="needs a CUDA device"):
            LLM(model_dir, attention_backend="triton", num_kv_blocks=16, max_model_len=64)
