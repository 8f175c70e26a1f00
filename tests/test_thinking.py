"""Thinking models: an unclosed think block is no answer (never a vote), budget forcing cuts the
thoughts at exactly B tokens and lets the model answer, thought/answer tokens are recorded.
Engine and CLI on a tiny random model (its text never contains a close tag by chance)."""

from __future__ import annotations

import json

import pytest
import yaml

from engine import LLM, SamplingParams
from harness.cli import main
from harness.grading import Grader
from harness.grading.grader import ANSWERED, NO_ANSWER_IN_BUDGET
from tests.tiny import GSM8K_DIR

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FLEX = {"name": "flex", "steps": [{"function": "regex", "pattern": "(-?[0-9]+)", "select": "last"}]}


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", str(GSM8K_DIR))


# ------------------------------------------------------------------------------ grading


def test_unclosed_think_is_no_answer_not_a_vote():
    g = Grader([FLEX], "numeric")
    # the model opened a block and never closed it: the 42 inside the thoughts is not read
    assert g.grade("<think>so it is 42", "42")["flex"].key is None
    assert g.outcome("<think>so it is 42") == NO_ANSWER_IN_BUDGET
    # the template opened it (prompt ends with <think>): the completion starts inside the thoughts
    assert g.grade("so it is 42", "42", opened=True)["flex"].key is None
    assert g.outcome("so it is 42", opened=True) == NO_ANSWER_IN_BUDGET
    assert g.grade("so it is 41</think> The answer is 42", "42", opened=True)["flex"].correct
    assert g.outcome("41</think>42", opened=True) == ANSWERED
    assert g.outcome("plain 42") is None and g.grade("plain 42", "42")["flex"].correct
    assert g.prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not g.prompt_opens_thinking("<think>a</think> Q: 1+1")
    assert Grader([FLEX], "numeric", unclosed="invalid").outcome("<think>42") is None


# ------------------------------------------------------------------------------ engine: budget forcing


def test_budget_forcing_cuts_at_exactly_b_thought_tokens(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=64, max_model_len=512)
    tok = llm.tokenizer
    prompt = tok("Question: what is 2 + 3?\nAnswer: <think>").input_ids
    base = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=40, ignore_eos=True)
    free = llm.generate([prompt], base)[0].outputs
    assert all("</think>" not in c.text for c in free)  # the tiny model never closes by itself
    forced_ids = tok.encode("\n</think>\n\n", add_special_tokens=False)
    for budget in (0, 10):
        outs = llm.generate([prompt], base.replace(thinking_budget=budget))[0].outputs
        for c, f in zip(outs, free):
            assert c.forced_at == budget
            assert c.token_ids[:budget] == f.token_ids[:budget]  # the thoughts are the model's own draws
            assert c.token_ids[budget : budget + len(forced_ids)] == forced_ids  # then the close, exactly
            assert len(c.token_ids) == 40 and "</think>" in c.text  # and the model goes on to answer
            assert c.text.split("</think>", 1)[1].strip()
    # a budget the chain never reaches forces nothing
    long = llm.generate([prompt], base.replace(thinking_budget=100))[0].outputs
    assert [c.token_ids for c in long] == [c.token_ids for c in free] and all(c.forced_at is None for c in long)


# ------------------------------------------------------------------------------ harness eval end to end


def _task(tmp_path, **thinking):
    spec = {
        "task": "think-toy", "description": "toy thinking task",
        "dataset": {"name": "gsm8k", "split": "test"},
        "prompt": {"template": "Question: {{ question }}\nAnswer: <think>", "target": "{{ answer.split('####')[-1] | trim }}"},
        "sampling": {"n": 2, "temperature": 1.0, "max_tokens": 24, "seed": 3, "ignore_eos": True},
        "filters": [FLEX],
        **({"thinking": thinking} if thinking else {}),
    }
    path = tmp_path / f"think-{len(thinking)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(tmp_path, task, name):
    out = tmp_path / name
    assert main(["eval", "--task", str(task), "--model", str(_run.model), "--limit", "3", "--no-progress",
                 "--output-dir", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "results.json").read_text())


def test_eval_records_no_answer_in_budget_and_budget_forcing(tmp_path, tiny_model_dir):
    _run.model = tiny_model_dir
    rows, results = _run(tmp_path, _task(tmp_path), "unclosed")
    assert len(rows) == 6 and all(r["outcome"] == NO_ANSWER_IN_BUDGET for r in rows)
    assert all(r["keys"]["flex"] is None and r["answers"]["flex"] is None for r in rows)
    assert all(r["thought_tokens"] == 24 and r["answer_tokens"] == 0 for r in rows)
    m = results["metrics"]["flex"]
    assert m["no_answer_in_budget_rate"] == 1.0 and m["invalid_rate"] == 1.0 and m["mean@2"] == 0.0

    rows, results = _run(tmp_path, _task(tmp_path, budget=8), "forced")
    assert all(r["outcome"] == ANSWERED and r["forced_at"] == 8 for r in rows)
    from transformers import AutoTokenizer

    forced = len(AutoTokenizer.from_pretrained(tiny_model_dir).encode("\n</think>", add_special_tokens=False))
    assert all(r["thought_tokens"] == 8 + forced and r["answer_tokens"] == 24 - 8 - forced for r in rows)
    m = results["metrics"]["flex"]
    assert m["no_answer_in_budget_rate"] == 0.0 and m["mean_thought_tokens"] == 8 + forced
    assert results["by_length"] and results["by_length"][0]["samples"] == 6


def test_budget_forcing_needs_the_engine(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "hf"
    assert main(["eval", "--task", str(_task(tmp_path, budget=4)), "--model", str(tiny_model_dir), "--backend", "hf",
                 "--limit", "1", "--no-progress", "--output-dir", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["finish_reason"] == "error" and "engine backend" in r["error"] for r in rows)


def test_chat_template_kwargs_reach_the_template(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from harness.tasks import load_task
    from harness.tasks.prompts import PromptBuilder

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>{% else %}<think>{% endif %}")
    path = tmp_path / "t.yaml"
    spec = {"task": "t", "dataset": {"name": "gsm8k"}, "filters": [FLEX],
            "prompt": {"template": "{{ question }}", "target": "1", "chat_template": True}}
    path.write_text(yaml.safe_dump(spec))
    on = PromptBuilder(load_task(str(path)), tok).build({"question": "q", "doc_id": "0"})
    spec["prompt"]["chat_template_kwargs"] = {"enable_thinking": False}
    path.write_text(yaml.safe_dump(spec))
    off = PromptBuilder(load_task(str(path)), tok).build({"question": "q", "doc_id": "0"})
    assert on.text == "q<think>" and off.text == "q<think>\n\n</think>"
    g = Grader([FLEX], "numeric")
    assert g.prompt_opens_thinking(on.text) and not g.prompt_opens_thinking(off.text)
