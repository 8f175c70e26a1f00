"""Prompt rendering: exact GSM8K layouts, seeded few-shot draws, the jinja sandbox, chat templates."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from harness import HarnessError
from harness.tasks.data import load_docs
from harness.models import chat_template_hash
from harness.tasks.prompts import BuiltPrompt, PromptBuilder
from harness.tasks import load_task

from tests import tiny

TOY = {
    "task": "toy",
    "dataset": {"name": "toy", "split": "test", "fewshot_split": "test"},
    "prompt": {"template": "Q: {{ question }}\nA:", "target": "{{ answer }}",
               "fewshot": {"num": 3, "source": "split", "seed": 7}},
    "filters": [{"name": "last", "steps": [{"function": "regex", "pattern": "(-?[0-9]+)", "select": "last"}]}],
}


def toy_spec(tmp_path: Path, **prompt_changes):
    d = copy.deepcopy(TOY)
    for k, v in prompt_changes.items():
        if isinstance(v, dict) and isinstance(d["prompt"].get(k), dict):
            d["prompt"][k].update(v)
        else:
            d["prompt"][k] = v
    path = tmp_path / f"toy-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_task(str(path))


def toy_docs(n: int) -> list[dict]:
    return [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "doc_id": str(i)} for i in range(n)]


@pytest.fixture(scope="module")
def test_docs(gsm8k_dir):
    return load_docs({"name": "gsm8k"}, "test", gsm8k_dir)


@pytest.fixture(scope="module")
def train_docs(gsm8k_dir):
    return load_docs({"name": "gsm8k"}, "train", gsm8k_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# ------------------------------------------------------------------------------- GSM8K layouts


def test_gsm8k_prompt_exact(test_docs, train_docs):
    spec = load_task("gsm8k")
    doc = test_docs[0]
    built = PromptBuilder(spec, None, train_docs).build(doc, 0)
    assert isinstance(built, BuiltPrompt) and built.messages is None
    by_id = {d["doc_id"]: d for d in train_docs}
    assert len(built.fewshot_ids) == 5 and len(set(built.fewshot_ids)) == 5
    shots = [by_id[i] for i in built.fewshot_ids]
    expected = "\n\n".join(f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots)
    expected += f"\n\nQuestion: {doc['question']}\nAnswer:"
    assert built.text == expected
    assert built.text.startswith("Question: ") and built.text.endswith(
        "How much in dollars does she make every day at the farmers' market?\nAnswer:")
    assert built.text.count("####") == 5
    assert built.prompt_hash == hashlib.sha256(expected.encode()).hexdigest()
    assert PromptBuilder(spec, None, train_docs).render_target(doc) == "18"


def test_gsm8k_cot_prompt_exact(test_docs):
    spec = load_task("gsm8k-cot")
    doc = test_docs[0]
    b = PromptBuilder(spec)
    built = b.build(doc)
    ex = spec.prompt.fewshot.exemplars
    expected = "".join(f"Q: {e['question']}\nA: {e['answer']}\n\n" for e in ex) + f"Q: {doc['question']}\nA:"
    assert built.text == expected
    assert built.text.startswith("Q: There are 15 trees in the grove.")
    assert "23 - 15 is 8. The answer is 8.\n\nQ: Janet’s ducks lay 16 eggs per day." in built.text
    assert built.text.count("Q: ") == 9 and built.text.count("The answer is") == 8
    assert b.render_target(doc) == "18"
    # the self-consistency variant renders the very same prompt
    assert PromptBuilder(load_task("gsm8k-cot-sc")).build(doc).text == built.text


def test_every_gsm8k_target_is_a_number(test_docs):
    b = PromptBuilder(load_task("gsm8k-cot"))
    for doc in test_docs:
        t = b.render_target(doc)
        assert t and t.lstrip("-").replace(",", "").replace(".", "").isdigit(), (doc["doc_id"], t)


# ------------------------------------------------------------------------------- few-shot draws


def test_fewshot_deterministic_per_doc(tmp_path, test_docs, train_docs):
    spec = toy_spec(tmp_path, fewshot={"num": 5})  # per_doc, our default sampler
    a = PromptBuilder(spec, None, train_docs)
    b = PromptBuilder(spec, None, list(train_docs))
    # the same doc gets the same shots whatever the order of building
    first = [a.build(d).fewshot_ids for d in test_docs[:20]]
    second = [b.build(d).fewshot_ids for d in reversed(test_docs[:20])][::-1]
    assert first == second
    assert len(set(first)) > 15  # per-doc draws differ between docs
    other_seed = PromptBuilder(spec.with_overrides(), None, train_docs)
    assert other_seed.build(test_docs[0]).fewshot_ids == first[0]


def test_fewshot_seed_changes_draw(tmp_path):
    docs = toy_docs(50)
    a = PromptBuilder(toy_spec(tmp_path), None, docs)
    b = PromptBuilder(toy_spec(tmp_path, fewshot={"seed": 8}), None, docs)
    assert [a.build(d).fewshot_ids for d in docs] != [b.build(d).fewshot_ids for d in docs]


def test_fewshot_excludes_the_doc_itself(tmp_path):
    spec = toy_spec(tmp_path)  # fewshot_split == split
    docs = toy_docs(4)  # exactly num + 1: the shots must be the three other docs
    b = PromptBuilder(spec, None, docs)
    for d in docs:
        ids = b.build(d).fewshot_ids
        assert d["doc_id"] not in ids
        assert sorted(ids) == sorted(x["doc_id"] for x in docs if x is not d)
    big = PromptBuilder(spec, None, toy_docs(30))
    for d in toy_docs(30):
        assert d["doc_id"] not in big.build(d).fewshot_ids


def test_fewshot_excludes_identical_doc_from_other_split(tmp_path):
    spec = toy_spec(tmp_path)
    doc = {"question": "What is 1 + 1?", "answer": "2", "doc_id": "x"}
    pool = [dict(doc, doc_id="copy")] + [{"question": f"q{i}", "answer": str(i), "doc_id": f"p{i}"} for i in range(3)]
    assert sorted(PromptBuilder(spec, None, pool).build(doc).fewshot_ids) == ["p0", "p1", "p2"]


def test_fixed_sampler_shares_shots(tmp_path):
    spec = toy_spec(tmp_path, fewshot={"sampler": "fixed"})
    docs = toy_docs(40)
    b = PromptBuilder(spec, None, docs)
    draws = [b.build(d).fewshot_ids for d in docs]
    common = max(set(draws), key=draws.count)
    for d, ids in zip(docs, draws):
        assert d["doc_id"] not in ids
        if d["doc_id"] not in common:
            assert ids == common
    assert draws.count(common) >= 40 - 3


def test_fewshot_docs_required_and_sufficient(tmp_path):
    spec = toy_spec(tmp_path)
    with pytest.raises(HarnessError, match="fewshot_docs"):
        PromptBuilder(spec)
    with pytest.raises(HarnessError, match="only 3 docs"):
        PromptBuilder(spec, None, toy_docs(3))


def test_system_prompt_and_separator(tmp_path):
    spec = toy_spec(tmp_path, system="You are {{ 'careful' | upper }}.", fewshot={"num": 1, "separator": "\n###\n"})
    docs = toy_docs(5)
    built = PromptBuilder(spec, None, docs).build(docs[0])
    shot = next(d for d in docs if d["doc_id"] == built.fewshot_ids[0])
    assert built.text == f"You are CAREFUL.\n###\nQ: {shot['question']}\nA: {shot['answer']}\n###\nQ: What is 0 + 0?\nA:"


# ------------------------------------------------------------------------------- sandbox and errors


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ question.__class__.__mro__[1].__subclasses__() }}",
    "{{ doc.update({'answer': 1}) }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_blocks_internals(tmp_path, template):
    spec = toy_spec(tmp_path, template=template, fewshot={"num": 0})
    with pytest.raises(HarnessError) as ei:
        PromptBuilder(spec).build(toy_docs(1)[0])
    msg = str(ei.value)
    assert "\n" not in msg and "prompt.template" in msg, msg


def test_sandbox_message(tmp_path):
    spec = toy_spec(tmp_path, template="{{ ''.__class__.__mro__ }}", fewshot={"num": 0})
    with pytest.raises(HarnessError, match="sandbox"):
        PromptBuilder(spec).build(toy_docs(1)[0])


def test_strict_undefined(tmp_path):
    spec = toy_spec(tmp_path, template="Q: {{ questoin }}", fewshot={"num": 0})
    with pytest.raises(HarnessError) as ei:
        PromptBuilder(spec).build(toy_docs(1)[0])
    msg = str(ei.value)
    assert "'questoin' is undefined" in msg and "doc 0" in msg and "question, answer" in msg and "\n" not in msg


# ------------------------------------------------------------------------------- chat templates


def test_zeroshot_chat_template(tokenizer, test_docs):
    spec = load_task("gsm8k-cot-zeroshot")
    doc = test_docs[0]
    built = PromptBuilder(spec, tokenizer).build(doc)
    assert built.messages is not None and len(built.messages) == 1
    m = built.messages[0]
    assert m["role"] == "user" and m["content"].endswith(doc["question"]) and "\\boxed{}" in m["content"]
    assert built.text == f"<|im_start|>user\n{m['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert built.prompt_hash == hashlib.sha256(built.text.encode()).hexdigest()


def test_chat_fewshot_multiturn_and_inline(tmp_path, tokenizer, test_docs):
    base = Path(__file__).resolve().parent.parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    p = tmp_path / "chat.yaml"
    p.write_text(yaml.safe_dump({"task": "cot-chat", "include": str(base),
                                 "prompt": {"chat_template": True, "system": "Think step by step."}}))
    spec = load_task(str(p))
    doc = test_docs[0]
    built = PromptBuilder(spec, tokenizer).build(doc)
    roles = [m["role"] for m in built.messages]
    assert roles == ["system"] + ["user", "assistant"] * 8 + ["user"]
    assert built.messages[1]["content"].startswith("Q: There are 15 trees")
    assert built.messages[2]["content"].endswith("The answer is 6.")
    assert built.messages[-1]["content"] == f"Q: {doc['question']}\nA:"
    assert built.text.startswith("<|im_start|>system\nThink step by step.<|im_end|>\n")
    assert built.text.endswith("<|im_start|>assistant\n")

    inline = spec.to_dict()
    inline["prompt"]["chat_fewshot"] = "inline"
    inline.pop("path")
    q = tmp_path / "inline.yaml"
    q.write_text(yaml.safe_dump(inline))
    built2 = PromptBuilder(load_task(str(q)), tokenizer).build(doc)
    assert [m["role"] for m in built2.messages] == ["system", "user"]
    assert built2.messages[1]["content"] == PromptBuilder(load_task("gsm8k-cot")).build(doc).text


def test_chat_without_tokenizer_gives_messages(test_docs):
    built = PromptBuilder(load_task("gsm8k-cot-zeroshot"), None).build(test_docs[0])
    assert built.messages[0]["role"] == "user" and built.text == built.messages[0]["content"]


def test_missing_chat_template_is_an_error(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = None
    with pytest.raises(HarnessError) as ei:
        PromptBuilder(load_task("gsm8k-cot-zeroshot"), tok)
    msg = str(ei.value)
    assert "no chat template" in msg and "gsm8k-cot-zeroshot" in msg and "\n" not in msg
    assert chat_template_hash(tok) is None
    # a task without chat_template does not need one
    PromptBuilder(load_task("gsm8k-cot"), tok).build({"question": "q", "answer": "#### 1", "doc_id": "0"})


def test_chat_template_hash(tokenizer):
    h = chat_template_hash(tokenizer)
    assert h == hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()
    assert h == hashlib.sha256(tiny.CHATML.encode()).hexdigest()
    assert chat_template_hash(None) is None
