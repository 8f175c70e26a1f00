"""`gsm8k` claims lm-evaluation-harness's format: its prompts and stops must be lm-eval 0.4's.

lm-eval is not a dependency; its algorithm is restated here from its documented behaviour (the
gsm8k task YAML and the ContextSampler of lm_eval/api/samplers.py, 0.4.x):

- doc_to_text "Question: {{question}}\\nAnswer:", doc_to_target "{{answer}}", 5 shots from the
  train split, target_delimiter " ", fewshot_delimiter "\\n\\n", no description;
- the sampler holds one random.Random(1234) (`--fewshot_random_seed`'s default) and calls
  `rnd.sample(train_docs, 5)` once per evaluated doc, in test-split order; a drawn doc equal to
  the evaluated one is dropped (never the case train vs test);
- the context is, for each shot, text + " " + target + "\\n\\n", then the doc's text;
- generation stops at "Question:", "</s>", "<|im_end|>" (plus the model's EOS), greedy, and the
  HF backend's max_gen_toks default is 256.
"""

from __future__ import annotations

import random

import pytest

from harness.tasks import load_task
from harness.tasks.data import load_docs
from harness.tasks.prompts import PromptBuilder

LM_EVAL_GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")


def lm_eval_contexts(test_docs: list[dict], train_docs: list[dict], limit: int, seed: int = 1234) -> list[str]:
    """lm-eval 0.4's few-shot contexts for the first `limit` test docs (its draw order, its layout)."""
    rnd = random.Random(seed)
    out = []
    for doc in test_docs[:limit]:
        shots = [s for s in rnd.sample(train_docs, 5) if s != doc][:5]
        context = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        out.append(context + f"Question: {doc['question']}\nAnswer:")
    return out


def _raw(docs: list[dict]) -> list[dict]:
    """The rows as lm-eval sees them (without the doc_id we add)."""
    return [{k: v for k, v in d.items() if k != "doc_id"} for d in docs]


@pytest.fixture(scope="module")
def gsm8k_docs(gsm8k_dir):
    return load_docs({"name": "gsm8k"}, "test", gsm8k_dir), load_docs({"name": "gsm8k"}, "train", gsm8k_dir)


def test_gsm8k_prompts_equal_lm_eval_byte_for_byte(gsm8k_docs):
    test_docs, train_docs = gsm8k_docs
    expected = lm_eval_contexts(_raw(test_docs), _raw(train_docs), 50)
    builder = PromptBuilder(load_task("gsm8k"), None, train_docs)
    ours = [builder.build(doc, i).text for i, doc in enumerate(test_docs[:50])]
    assert [i for i, (a, b) in enumerate(zip(ours, expected)) if a != b] == []
    assert len(set(ours)) == 50 and all(p.count("\nAnswer: ") == 5 for p in ours)


def test_gsm8k_stops_and_budget_are_lm_eval_s():
    s = load_task("gsm8k").sampling
    assert s.stop == LM_EVAL_GSM8K_STOPS  # no "\n\n": lm-eval lets a model write a blank line
    assert s.max_tokens == 256 and s.temperature == 0.0 and s.n == 1


def test_lm_eval_draw_is_a_stream_in_split_order(gsm8k_docs):
    """Building out of order (a resumed run, check_docs then build_requests) gives the same shots:
    the draw for position p is the p-th of the stream, whatever was built before."""
    test_docs, train_docs = gsm8k_docs
    spec = load_task("gsm8k")
    forward = PromptBuilder(spec, None, train_docs)
    backward = PromptBuilder(spec, None, train_docs)
    a = [forward.build(d, i).fewshot_ids for i, d in enumerate(test_docs[:12])]
    b = [backward.build(d, i).fewshot_ids for i, d in reversed(list(enumerate(test_docs[:12])))][::-1]
    assert a == b and len(set(a)) == 12
    # position, not the doc, decides: the same doc at another position gets another draw
    assert forward.build(test_docs[0], 3).fewshot_ids == a[3]


def test_lm_eval_sampler_same_split_draws_one_extra(tmp_path):
    """Shots from the evaluated split: lm-eval draws num + 1 and drops the doc itself."""
    import yaml

    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump({
        "task": "toy", "dataset": {"name": "toy", "split": "test", "fewshot_split": "test"},
        "prompt": {"template": "Q: {{ q }}", "target": "{{ a }}", "fewshot": {"num": 2, "source": "split", "sampler": "lm_eval"}},
        "filters": [{"name": "f", "steps": [{"function": "strip"}]}]}))
    docs = [{"q": f"q{i}", "a": str(i), "doc_id": str(i)} for i in range(6)]
    b = PromptBuilder(load_task(str(spec_path)), None, docs)
    rnd = random.Random(1234)
    for i, d in enumerate(docs):
        drawn = rnd.sample(range(6), 3)
        expected = [str(j) for j in drawn if j != i][:2]
        assert list(b.build(d, i).fewshot_ids) == expected
    with pytest.raises(Exception, match="position"):
        PromptBuilder(load_task(str(spec_path)), None, docs).build(docs[0])
