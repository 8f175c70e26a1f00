"""The native llama/qwen2 forward (engine/native_llama.py) against HF transformers on the same
weights: logprobs, tied embeddings and q/k/v biases, the fallback for other families, and RL
weight updates reaching the fused weights."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, EngineConfigError, SamplingParams
from tests.test_engine import token_prompts

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def questions(gsm8k_dir):
    import json

    with open(gsm8k_dir / "test.jsonl") as f:
        return [json.loads(line)["question"] for line in f][:16]


def hf_logprobs(model_dir, prompt, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("qwen2", {}),  # q/k/v biases
])
def test_native_logprobs_match_hf(arch, overrides, tiny_model_factory, questions):
    model_dir = tiny_model_factory(arch, **overrides)
    prompts = token_prompts(model_dir, questions, [31, 47])
    llm = LLM(model_dir, num_kv_blocks=64, max_model_len=256, max_num_batched_tokens=24)
    assert llm.engine.runner.native is not None
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=24, ignore_eos=True, logprobs=0)
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        assert len(out.outputs) == 3
        for c in out.outputs:
            ref = hf_logprobs(model_dir, prompt, c.token_ids)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_other_families_fall_back_and_native_is_checked(tiny_model_factory):
    mistral = LLM(tiny_model_factory("mistral"), num_kv_blocks=16, max_model_len=128)
    assert mistral.engine.runner.native is None  # sliding window: the HF forward
    with pytest.raises(EngineConfigError) as err:
        LLM(tiny_model_factory("gemma2"), num_kv_blocks=16, max_model_len=128, model_impl="native")
    msg = str(err.value)
    assert "model_impl=native" in msg and "gemma2" in msg and "\n" not in msg
    with pytest.raises(EngineConfigError, match="model_impl must be"):
        LLM(tiny_model_factory("llama"), model_impl="vllm")


def test_weight_updates_reach_the_fused_weights(tiny_model_factory, questions):
    """load_weights (RL) copies into the HF Parameters, which are views of the fused tensors."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_factory("qwen2")
    [prompt] = token_prompts(model_dir, questions, [29])
    llm = LLM(model_dir, num_kv_blocks=32, max_model_len=128)
    layer = llm.engine.runner.native.layers[1]
    torch.manual_seed(0)
    new = {"model.layers.1.self_attn.k_proj.weight": torch.randn(layer.kv_out, 64) * 0.2,
           "model.layers.1.self_attn.v_proj.bias": torch.randn(layer.kv_out),
           "model.layers.1.mlp.up_proj.weight": torch.randn(layer.inter, 64) * 0.2}
    assert llm.engine.runner.load_weights(new.items()) == 3
    q, kv = layer.q_out, layer.kv_out
    assert torch.equal(layer.qkv_w[q : q + kv], new["model.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(layer.qkv_b[q + kv :], new["model.layers.1.self_attn.v_proj.bias"])
    assert torch.equal(layer.gate_up_w[layer.inter :], new["model.layers.1.mlp.up_proj.weight"])

    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref_model.load_state_dict(new, strict=False)
    [out] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0))
    with torch.no_grad():
        ids = torch.tensor([prompt])
        greedy = ref_model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.outputs[0].token_ids == greedy[0, len(prompt):].tolist()
