"""Generated tasks (tasks/reasoning-gym): docs from reasoning-gym's seeded generators, prompts with a
real chat template, and grading through the task's own filters and the reasoning_gym comparator
(the generator's score_answer) of known-right, known-wrong and partly-right answers."""

from __future__ import annotations

import json
import sys

import pytest

from harness import HarnessError
from harness.grading import Grader, cluster_keys, make_comparator, verifiers
from harness.runs.runner import EvalOptions, check_docs, prepare
from harness.tasks import list_tasks, load_task
from harness.tasks.data import load_split
from harness.tasks.prompts import PromptBuilder

rg = pytest.importorskip("reasoning_gym")


def _number_off_by_one(a: str) -> str:
    return str(int(a) + 1)


def _swap_first_sign(a: str) -> str:  # the same numbers, another value
    return a.replace(" + ", " - ", 1) if " + " in a else a.replace(" - ", " + ", 1)


# task → (generator dataset, a wrong answer made from the right one)
FAMILIES = {
    "rg-basic-arithmetic": ("basic_arithmetic", _number_off_by_one),
    "rg-chain-sum": ("chain_sum", _number_off_by_one),
    "rg-leg-counting": ("leg_counting", _number_off_by_one),
    "rg-word-sorting": ("word_sorting", lambda a: ", ".join(reversed(a.split(", ")))),
    "rg-propositional-logic": ("propositional_logic", lambda a: f"¬{a}" if a.startswith("(") else f"¬({a})"),
    "rg-countdown": ("countdown", _swap_first_sign),
    "rg-spell-backward": ("spell_backward", lambda a: a[::-1]),
    "rg-letter-counting": ("letter_counting", _number_off_by_one),
    "rg-gcd": ("gcd", _number_off_by_one),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _with_seed(spec, seed: int, size: int | None = None):
    gen = spec.dataset.generator
    return spec.dataset.model_copy(update={"generator": gen.model_copy(update={"seed": seed, "size": size or gen.size})})


@pytest.mark.parametrize("task", FAMILIES)
def test_family_generates_prompts_and_grades(task, tokenizer):
    name, perturb = FAMILIES[task]
    spec = load_task(task)
    assert spec.dataset.name == name and spec.comparator == "reasoning_gym" and spec.primary_filter == "answer"

    # seeded: the same seed, the same docs (and hash); another seed, other docs
    first, again = load_split(spec.dataset, "test"), load_split(spec.dataset, "test")
    assert len(first.docs) == 200 and first.docs == again.docs and first.sha256 == again.sha256
    assert first.source == f"reasoning_gym {name} size=200 seed=42 (reasoning-gym {verifiers.version()})"
    other = load_split(_with_seed(spec, 7, size=20), "test")
    assert [d["question"] for d in other.docs] != [d["question"] for d in first.docs[:20]]
    assert other.sha256 != load_split(_with_seed(spec, 42, size=20), "test").sha256
    # the docs are the generator's own entries, in order
    library = rg.create_dataset(name, size=200, seed=42)
    assert [d["doc_id"] for d in first.docs[:3]] == ["0", "1", "2"]
    assert all(first.docs[i]["question"] == library[i]["question"] for i in (0, 1, 199))

    grader = Grader.for_spec(spec)
    builder = PromptBuilder(spec, tokenizer)
    # a doc whose recorded answer the verifier accepts (propositional_logic's is only an example, not always valid)
    doc = next(d for d in first.docs if library.score_answer(d["answer"], library[int(d["doc_id"])]) == 1.0)
    built = builder.build(doc)
    assert built.messages == [{"role": "user", "content": built.messages[0]["content"]}]
    assert doc["question"] in built.text and '"Answer: <your answer>"' in built.text
    assert built.text.startswith("<|im_start|>user\n") and built.text.endswith("<|im_start|>assistant\n")

    gold = builder.render_target(doc)
    assert grader.gold_key(gold) == doc["answer"].strip()
    right = grader.grade(f"Let me think about this briefly.\nThat settles it.\n\nAnswer: {doc['answer']}", gold)
    assert (right["answer"].answer, right["answer"].correct) == (doc["answer"], True)
    wrong_answer = perturb(doc["answer"])
    assert wrong_answer != doc["answer"]
    wrong = grader.grade(f"Let me think... **Answer:** {wrong_answer}", gold)
    assert (wrong["answer"].answer, wrong["answer"].correct) == (wrong_answer, False) and not wrong["answer"].invalid
    boxed = grader.grade(f"So it is $\\boxed{{{doc['answer']}}}$.", gold)  # no "Answer:": only the boxed filter reads it
    assert boxed["answer"].invalid and boxed["boxed"].correct


def test_answer_forms_and_partial_credit():
    spec = load_task("rg-basic-arithmetic")
    doc = load_split(spec.dataset, "test").docs[0]  # Calculate -5 * -6. → 30
    gold, grader = doc["gold"], Grader.for_spec(spec)
    assert doc["answer"] == "30"
    # as models write it (seen from Qwen2.5-Coder-0.5B-Instruct): a repeated label, LaTeX, markdown, a full stop
    for text in ("Answer: Answer: 30", "Answer: \\(30\\)", "**Final Answer:** $30$.", "Answer: \\boxed{30}", "Answer: 30\n"):
        assert grader.grade(text, gold)["answer"].correct, text
    got = grader.grade("Answer: 30 apples", gold)["answer"]
    assert got.answer == "30 apples" and not got.correct
    assert grader.comparator.score("30 apples", gold) == pytest.approx(2 / 9)  # the verifier's len(gold)/len(answer)
    assert grader.comparator.score("30", gold) == 1.0 and grader.comparator.score("", gold) == 0.0


def test_votes_and_clusters_use_the_stripped_answer():
    comp = make_comparator("reasoning_gym")
    assert [comp.key(a) for a in ("30", " 30\n", "31", "  ")] == ["30", "30", "31", None]
    assert cluster_keys(["30", " 30 ", "31", None], comp) == ["30", "30", "31", None]


def test_countdown_answers_never_reach_sympy_unless_arithmetic():
    spec = load_task("rg-countdown")
    doc = load_split(_with_seed(spec, 42, size=1), "test").docs[0]
    comp = make_comparator("reasoning_gym")
    assert comp.score(doc["answer"], doc["gold"]) == 1.0
    for hostile in ("__import__('os').getcwd()", "9**9**9**9", doc["answer"] + " + 0*9**9**9"):
        assert comp.score(hostile, doc["gold"]) == 0.0


def test_bad_golds_are_caught_up_front():
    spec = load_task("rg-chain-sum")
    doc = load_split(_with_seed(spec, 42, size=3), "test").docs[2]
    grader = Grader.for_spec(spec)
    ref = json.loads(doc["gold"])
    for change, problem in (({"question_sha256": "0" * 16}, "regenerates a different question"),
                            ({"index": 3}, "index 3 outside the dataset's size 3"),
                            ({"name": "no_such_family"}, "not a reasoning-gym dataset"),
                            ({"seed": "42"}, "malformed reasoning-gym reference")):
        with pytest.raises(HarnessError, match=problem):
            grader.gold_key(json.dumps({**ref, **change}))
        assert not grader.grade("Answer: 5", json.dumps({**ref, **change}))["answer"].correct


def test_runner_prepares_the_first_fifty(monkeypatch):
    monkeypatch.setenv("HARNESS_DATA_DIR", "/nonexistent")  # ambient data is never consulted for generated docs
    prep = prepare(EvalOptions(task="rg-basic-arithmetic", model="", limit=50))
    assert [d["doc_id"] for d in prep.docs] == [str(i) for i in range(50)] and check_docs(prep) == []
    assert prep.data["test"]["source"].startswith("reasoning_gym basic_arithmetic size=200 seed=42")


def test_listed_with_descriptions():
    listed = {n: d for n, d, _ in list_tasks()}
    for task in FAMILIES:
        assert listed[task].startswith("reasoning-gym ") and "\n" not in listed[task]


def _spec_file(tmp_path, dataset: str) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(f"task: t\ndataset: {dataset}\nprompt: {{template: '{{{{ question }}}}', target: '{{{{ gold }}}}'}}\n"
                 "filters: [{name: a, steps: [{function: answer_is}]}]\nscoring: {comparator: reasoning_gym}\n")
    return str(p)


@pytest.mark.parametrize("dataset, problem", [
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 5}}", r"dataset\.generator\.seed"),
    ("{name: chain_sum, generator: {source: gym2, size: 5, seed: 1}}", r"dataset\.generator\.source"),
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 0, seed: 1}}", r"dataset\.generator\.size"),
])
def test_bad_generator_spec_is_one_line(tmp_path, dataset, problem):
    with pytest.raises(HarnessError, match=problem) as e:
        load_task(_spec_file(tmp_path, dataset))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dataset, split, problem", [
    ("{name: no_such_family, generator: {source: reasoning_gym, size: 5, seed: 1}}", "test", "not a reasoning-gym dataset"),
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 5, seed: 1, config: {max_terms: 0}}}", "test",
     "rejects the generator config"),
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 5, seed: 1, config: {colour: red}}}", "test",
     "rejects the generator config: TypeError"),
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 5, seed: 1, config: {seed: 3}}}", "test",
     "config sets seed"),
    ("{name: chain_sum, generator: {source: reasoning_gym, size: 5, seed: 1}}", "train", "makes one split, 'test'"),
])
def test_bad_generator_data_is_one_line(tmp_path, dataset, split, problem):
    spec = load_task(_spec_file(tmp_path, dataset))
    with pytest.raises(HarnessError, match=problem) as e:
        load_split(spec.dataset, split)
    assert "\n" not in str(e.value)


def test_generator_config_reaches_the_generator(tmp_path):
    spec = load_task(_spec_file(tmp_path, "{name: chain_sum, generator: {source: reasoning_gym, size: 5, seed: 1, "
                                          "config: {min_terms: 4, max_terms: 4}}}"))
    split = load_split(spec.dataset, "test")
    assert "config={\"max_terms\": 4, \"min_terms\": 4}" in split.source
    assert all(d["metadata"]["num_terms"] == 4 for d in split.docs)
    assert Grader.for_spec(spec).grade(f"Answer: {split.docs[0]['answer']}", split.docs[0]["gold"])["a"].correct


def test_missing_package_is_one_line(monkeypatch):
    spec = load_task("rg-leg-counting")
    verifiers._dataset.cache_clear()  # a cached dataset object would not need the import
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # `import reasoning_gym` now raises ImportError
    try:
        with pytest.raises(HarnessError, match=r"^dataset 'leg_counting' generates its docs with reasoning-gym: "
                                               r"pip install reasoning-gym \(or reasoning-harness\[gym\]\)$"):
            load_split(spec.dataset, "test")
        with pytest.raises(HarnessError, match="pip install reasoning-gym"):
            Grader.for_spec(spec)
    finally:
        verifiers._dataset.cache_clear()
