"""The grading table: completions and gold answers, each checked by our grading (a math task's
extraction chain + the `math` comparator) and by Hugging Face's math-verify (its own parse of the
raw completion + verify), against the verdict a careful human grader would give.

Where math-verify disagrees, the row says so, who is right and why:
  mv_reads  - math-verify's own extraction from the raw completion goes wrong (given our
              extraction, the `math_verify` comparator gets the row right);
  mv_judges - math-verify's comparison of the answers goes wrong (the comparator too).
math-verify's actual verdict is asserted on those rows too, so a library change is noticed.

The reported problems among the rows: lm-eval's hendrycks_math never reading \\boxed{}, two
\\boxed{840} read as 840840, bold answers **73**; then the usual dressing of MATH answers."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pytest
from math_verify import parse, verify

from harness import HarnessError
from harness.grading import Grader, MathVerifyComparator, cluster_keys, make_comparator
from harness.grading.comparators import math_verify_text
from harness.grading.math_worker import MathWorker

logging.getLogger("math_verify").setLevel(logging.ERROR)  # its warnings (a parse it gave up on) are not test output

CHAINS = {
    "boxed": [{"function": "boxed"}],  # a MATH-500 / AIME task: the last \boxed{}
    "answer": [{"function": "answer_is"}],  # "The final answer is ..." / "Answer: ..."
}


@dataclass(frozen=True)
class Case:
    completion: str
    gold: str
    ok: bool  # the right verdict
    why: str
    chain: str = "boxed"
    mv_reads: str = ""  # why math-verify's extraction is wrong here (who is right and why)
    mv_judges: str = ""  # why math-verify's comparison is wrong here

    @property
    def mv_ok(self) -> bool:
        return self.ok if not (self.mv_reads or self.mv_judges) else not self.ok


C = Case
TABLE = [
    # -- reported problems
    C(r"So the answer is \boxed{5}.", "5", True, "lm-eval hendrycks_math: the \\boxed{} answer was never read"),
    C(r"First \boxed{840}. Checking again: \boxed{840}", "840", True, "reported: two boxes concatenated to 840840"),
    C("The answer is **73**.", "73", True, "reported: a bold answer **73**", chain="answer"),
    C("**Answer:** 73", "73", True, "bold label, colon inside the bold", chain="answer"),
    C("**Answer**: 73", "73", True, "bold label, colon outside the bold (ours missed it: fixed)", chain="answer"),
    C("Final answer: **73**", "73", True, "bold value after the label", chain="answer"),
    C("The final answer is 5", "5", True, "no box, a sentence", chain="answer"),
    # -- fractions and decimals
    C(r"so \boxed{0.5}", r"\frac{1}{2}", True, "a terminating decimal equals the fraction"),
    C(r"so \boxed{\dfrac{1}{2}}", r"\frac{1}{2}", True, "\\dfrac is \\frac"),
    C(r"so \boxed{\tfrac12}", "0.5", True, "\\tfrac with brace-less arguments"),
    C(r"\boxed{\frac{1}{2}}", r"\frac{2}{4}", True, "an unreduced gold fraction"),
    C(r"\boxed{3/4}", r"\frac{3}{4}", True, "slash fraction"),
    C(r"\boxed{7/2}", r"\frac72", True, "\\frac72 is 7/2"),
    C(r"\boxed{\frac{7}{2}}", "3.5", True, "fraction vs decimal gold"),
    C(r"\boxed{-\frac{1}{2}}", "-0.5", True, "negative fraction"),
    C(r"\boxed{0.333}", r"\frac{1}{3}", False, "a rounded decimal is not 1/3"),
    C(r"\boxed{0.3333333}", r"\frac{1}{3}", False, "exact answers are asked for",
      mv_judges="ours: math-verify rounds to 6 places, so 0.3333333 and 0.33333349 both pass as 1/3"),
    C(r"\boxed{\frac{1}{2}}", r"\frac{1}{3}", False, "a different fraction"),
    C(r"\boxed{1.50}", "1.5", True, "trailing zero"),
    C(r"\boxed{3.0}", "3", True, "3.0 is 3"),
    # -- multiple choice and text answers
    C(r"\boxed{\text{(C)}}", r"\text{(C)}", True, "a choice in \\text{}"),
    C(r"\boxed{C}", r"\text{(C)}", True, "the bare letter of the choice"),
    C(r"\boxed{\textbf{(B)}}", "B", True, "a bold choice"),
    C(r"\boxed{\text{A}}", "A", True, "letter in \\text{}"),
    C(r"\boxed{(D)}", r"\text{(C)}", False, "another choice"),
    C(r"\boxed{\text{even}}", r"\text{even}", True, "a word answer"),
    C(r"\boxed{\text{odd}}", r"\text{even}", False, "the other word"),
    C(r"\boxed{\text{Monday}}", r"\text{Monday}", True, "a day"),
    # -- units, degrees, percent, money, separators
    C(r"\boxed{5 \text{ cm}}", "5", True, "a trailing unit"),
    C(r"\boxed{12 \text{ inches}}", "12", True, "a plural unit"),
    C(r"\boxed{12\text{ cm}^2}", "12", True, "a squared unit"),
    C(r"\boxed{4}", r"4\text{ cm}^2", True, "the gold carries a squared unit (ours missed it: fixed)"),
    C(r"\boxed{5}", r"5 \text{ cm}", True, "the gold carries the unit"),
    C(r"\boxed{\mbox{ sq. units}}", "12", False, "a unit and no number"),
    C(r"\boxed{90^\circ}", "90", True, "degrees"),
    C(r"\boxed{72^{\circ}}", "72", True, "degrees in braces"),
    C(r"\boxed{10^\circ}", r"10^{\circ}", True, "degrees on both sides"),
    C(r"\boxed{50\%}", "50", True, "MATH golds drop the percent sign"),
    C(r"\boxed{1,000}", "1000", True, "thousands separator"),
    C(r"\boxed{1000}", "1,000", True, "thousands separator in the gold"),
    C(r"\boxed{1\,000}", "1000", True, "a thin space as thousands separator",
      mv_judges="ours: \\, is LaTeX spacing, math-verify reads 1\\,000 as 1*000 = 0"),
    C(r"\boxed{\$5}", "5", True, "a dollar sign"),
    C(r"\boxed{\$18.90}", "18.90", True, "dollars and cents"),
    C(r"\boxed{\$1,000.00}", "1000", True, "dollars, separator, cents"),
    # -- intervals, tuples, sets
    C(r"\boxed{(1, 2]}", "(1,2]", True, "half-open interval"),
    C(r"\boxed{[1, 2]}", "(1,2]", False, "the closed end differs"),
    C(r"\boxed{(-\infty, 0)}", r"(-\infty,0)", True, "an infinite end"),
    C(r"\boxed{[2, 5)}", "[2,5)", True, "spacing inside an interval"),
    C(r"\boxed{\left[ 0, 1 \right)}", "[0,1)", True, "\\left[ \\right)"),
    C(r"\boxed{x \in (1, 2]}", "(1,2]", True, "x \\in S is S (ours missed it: fixed)"),
    C(r"\boxed{x > 2}", r"(2, \infty)", False, "asked for interval notation; neither grader converts"),
    C(r"\boxed{(1,2)}", "(1, 2)", True, "an ordered pair"),
    C(r"\boxed{(1, 2)}", "(2, 1)", False, "ordered pairs are ordered"),
    C(r"\boxed{1,2}", "(1,2)", False, "a list of two values is not the pair (or open interval) (1,2)",
      mv_judges="ours: math-verify reads both as one sequence: the pair/interval (1,2) and the values 1, 2"),
    C(r"\boxed{2, 1}", "1, 2", True, "all solutions: order does not matter (ours compared in order: fixed)"),
    C(r"\boxed{1,2,3}", "1, 2, 3", True, "a list, spacing"),
    C(r"\boxed{1, 2}", "1, 3", False, "one solution wrong"),
    C(r"\boxed{\{1, 2\}}", r"\{2, 1\}", True, "a set in braces, any order (ours read it as text: fixed)"),
    C(r"\boxed{\{1, 2\}}", "1, 2", True, "a set and the bare list of its elements"),
    C(r"\boxed{\{1, 2\}}", "(1, 2)", False, "a set is not an ordered pair",
      mv_judges="ours: math-verify reads (1, 2) as the open interval and counts the set {1, 2} equal to it"),
    C(r"\boxed{\{5\}}", r"\{5\}", True, "a one-element set"),
    # -- roots, pi, expressions
    C(r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True, "equal surds"),
    C(r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", True, "a rationalised denominator"),
    C(r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", True, "slash over a root"),
    C(r"\boxed{\sqrt[3]{8}}", "2", True, "a cube root"),
    C(r"\boxed{\sqrt{8}}", "2.83", False, "a rounded root is not the root"),
    C(r"\boxed{\sqrt{3}}", "1.732", False, "a rounded root, gold side"),
    C(r"\boxed{2\pi}", r"2 \pi", True, "spacing around \\pi"),
    C(r"\boxed{\pi/2}", r"\frac{\pi}{2}", True, "\\pi over 2"),
    C(r"\boxed{6.28}", r"2\pi", False, "a rounded multiple of \\pi"),
    C(r"\boxed{\pi}", "3.14159", False, "\\pi is not 3.14159"),
    C(r"\boxed{\pi r^2}", r"\pi r^{2}", True, "an exponent with and without braces"),
    C(r"\boxed{x^2+2x+1}", "(x+1)^2", True, "an expanded polynomial"),
    C(r"\boxed{\frac{x}{2}}", "0.5x", True, "decimal coefficient"),
    C(r"\boxed{a+b}", "b+a", True, "commuted sum"),
    C(r"\boxed{3 + 2i}", "3+2i", True, "a complex number"),
    C(r"\boxed{\infty}", r"\infty", True, "infinity"),
    C(r"\boxed{2^{10}}", "1024", True, "a power"),
    C(r"\boxed{3\!\cdot\!4}", "12", True, "negative space and \\cdot"),
    # -- equations, signs, scientific notation
    C(r"\boxed{x=3}", "3", True, "x = 3 answers with 3"),
    C(r"\boxed{y = 2x + 3}", "y=2x+3", True, "an equation as the answer"),
    C(r"\boxed{-5}", "-5", True, "a negative number"),
    C(r"\boxed{5}", "-5", False, "the sign is wrong"),
    C(r"\boxed{-3}", "\u22123", True, "a Unicode minus in the gold"),
    C(r"\boxed{1.5 \times 10^{3}}", "1500", True, "scientific notation"),
    C(r"\boxed{6.02 \times 10^{23}}", r"6.02\times10^{23}", True, "scientific notation both sides"),
    C(r"\boxed{1e3}", "1000", True, "e-notation",
      mv_judges="ours: math-verify reads 1e3 as 1*e*3 (Euler's e); nobody writes 3e that way"),
    # -- nesting, spacing, matrices
    C(r"\boxed{\frac{a}{b}}", r"\frac{a}{b}", True, "nested braces in a box"),
    C(r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True, "two levels of braces"),
    C(r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", True, "\\dfrac with a root"),
    C(r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \frac{\pi}{2})", True, "\\left( \\right) polar point"),
    C(r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}", True,
      "matrix, spacing (ours dropped the '\\ ' of the row break '\\\\ ': fixed)"),
    C(r"\boxed{\begin{pmatrix} 1 \\ 3 \end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}", False, "another matrix"),
    C(r"\boxed{ 5 }", "5", True, "spaces in the box"),
    C(r"\boxed{5.}", "5", True, "a sentence's period inside the box",
      mv_reads="ours: math-verify gives up on '5.' and keeps it as a string"),
    C(r"\boxed{\frac{1}{2}}", r"\boxed{\frac{1}{2}}", True, "a gold written with its box"),
    # -- box forms and which box counts
    C(r"\boxed 5", "5", True, "\\boxed without braces"),
    C(r"\fbox{5}", "5", True, "\\fbox", mv_reads="ours: math-verify does not read \\fbox"),
    C(r"The answer is $\boxed{10}$.", "10", True, "a box in $...$"),
    C(r"\(\boxed{7}\)", "7", True, "a box in \\(...\\)"),
    C(r"\boxed{3} wait, actually \boxed{4}", "4", True, "the last box is the answer",
      mv_reads="ours: math-verify joins the boxes into the set {3, 4}; the model corrected itself"),
    C(r"\boxed{3} wait, actually \boxed{4}", "3", False, "a superseded box is not the answer"),
    C(r"The sum is 5. \boxed{}", "5", False, "an empty box: no answer",
      mv_reads="ours: math-verify falls back to a number of the working when the box is empty"),
    C(r"\boxed{5} \boxed{}", "5", False, "the last box is empty"),
    C(r"The sum is 5, so \boxed{5", "5", False, "an unclosed box: a cut-off completion, the answer unknown",
      mv_reads="ours: math-verify reads the open box; '5' might have gone on as 5\\sqrt{2}"),
    C(r"so the value is \boxed{\frac{1}{2}", r"\frac{1}{2}", False, "an unclosed box round a closed \\frac",
      mv_reads="ours: the box never closed, so the answer may not be complete"),
    C(r"<think>maybe \boxed{3}</think> The answer is \boxed{5}", "5", True, "a box in the thoughts does not count"),
]  # fmt: skip


def _ours(case: Case) -> bool:
    grader = Grader([{"name": "answer", "steps": CHAINS[case.chain]}], "math")
    return grader.grade(case.completion, case.gold)["answer"].correct


def _math_verify(case: Case) -> bool:
    """The library as documented: the gold in a math environment, the raw completion as it is."""
    return verify(parse(f"${case.gold}$"), parse(case.completion))


def test_table_is_big_and_well_formed():
    assert len(TABLE) >= 60
    assert len({(c.completion, c.gold) for c in TABLE}) == len(TABLE)
    assert sum(c.ok for c in TABLE) > 10 and sum(not c.ok for c in TABLE) > 10
    for c in TABLE:
        assert c.why and not (c.mv_reads and c.mv_judges)
        assert (c.mv_reads or c.mv_judges or "ours: ").startswith("ours: "), "a disagreement says who is right"


@pytest.mark.parametrize("case", TABLE, ids=lambda c: f"{c.completion[:40]}|{c.gold[:20]}")
def test_table(case: Case):
    assert _ours(case) is case.ok, f"ours: {case.why}"
    assert _math_verify(case) is case.mv_ok, f"math-verify: {case.mv_reads or case.mv_judges or case.why}"


@pytest.fixture(scope="module")
def mv() -> MathVerifyComparator:
    comp = make_comparator("math_verify")
    assert isinstance(comp, MathVerifyComparator)
    return comp


@pytest.mark.parametrize("case", TABLE, ids=lambda c: f"{c.completion[:40]}|{c.gold[:20]}")
def test_table_through_the_math_verify_comparator(case: Case, mv):
    """Our extraction, then the `math_verify` comparator: right wherever math-verify's comparison is."""
    grader = Grader([{"name": "answer", "steps": CHAINS[case.chain]}], mv)
    assert grader.grade(case.completion, case.gold)["answer"].correct is (not case.ok if case.mv_judges else case.ok)


def test_math_verify_comparator_keys(mv):
    assert mv.key(r"\frac{1}{2}") == mv.key("0.5") == mv.key(r"\dfrac12") == "0.5"
    assert mv.key("**73**") == "73"  # markdown round a bare answer
    assert mv.key(r"50\%") == "0.5"  # math-verify reads the percent sign as /100
    assert mv.key("") is None and mv.key(r"\frac{1}{") is None and mv.key("$$") is None
    # a raw completion: math-verify finds the answer itself
    assert mv.key(r"The answer is $\boxed{\frac{1}{2}}$.") == "0.5"
    assert mv.equal("The final answer is 7", "7") and not mv.equal("The final answer is 8", "7")
    # keys are not canonical: x=3 and 3 have different keys, and cluster_keys merges them by verify
    assert mv.key("x=3") != mv.key("3") and not mv.keys_are_canonical
    keys = cluster_keys(["x=3", "3", "4", r"\frac{8}{2}"], mv)
    assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]


def test_math_verify_off_the_main_thread(mv):
    """math-verify's own timeouts use signal.alarm, which raises off the main thread; the comparator
    runs it in the sympy worker with those timeouts off, so a grading thread is fine."""
    results: dict[str, object] = {}

    def work() -> None:
        try:
            parse("$1$")
        except ValueError as e:
            results["library"] = str(e)
        results["comparator"] = (mv.equal(r"\sqrt{8}", r"2\sqrt{2}"), mv.key(r"\frac{3}{6}"))

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert "threaded environment" in str(results.get("library"))
    assert results["comparator"] == (True, "0.5")


def test_math_verify_comparator_is_bounded_in_time():
    """A tower of powers makes sympy compute for ever; the call gives up after its timeout and the
    worker goes on answering."""
    worker = MathWorker()
    try:
        comp = MathVerifyComparator(timeout_s=0.5, worker=worker)
        t0 = time.monotonic()
        assert comp.key("10^{10^{10^{10}}}") is None
        assert comp.equal("2^{2^{2^{2^{2^{2}}}}}", "5") is False
        assert time.monotonic() - t0 < 2 * (0.5 + worker.GRACE_S) + 1.0
        assert comp.key(r"\frac{6}{4}") == "1.5"
    finally:
        worker.close()


def test_math_verify_text():
    assert math_verify_text(r"\frac{1}{2}") == r"$\frac{1}{2}$"  # bare LaTeX goes into $...$
    assert math_verify_text(r"\$5") == r"$\$5$"  # an escaped dollar is not a math environment
    assert math_verify_text(r"so $x = 2$") == r"so $x = 2$"  # already delimited
    assert math_verify_text("The final answer is 7") == "The final answer is 7"  # prose
    assert math_verify_text(r"5 \text{ square units}") == r"$5 \text{ square units}$"  # \text{} is not prose
    assert math_verify_text("  ** ") == ""


@pytest.mark.parametrize("comparator", ["math", "math_verify"])
@pytest.mark.parametrize("gold, problem", [
    (r"\frac{1}{", "unclosed {"),
    (r"\frac{1}", "without its two arguments"),
    ("", "nothing left"),
    (r"\boxed{", "never closed"),
    (r"\frac12}", "a } closes a brace never opened"),
])  # fmt: skip
def test_a_gold_that_does_not_parse_is_an_error(comparator, gold, problem):
    grader = Grader([{"name": "answer", "steps": CHAINS["boxed"]}], comparator)
    with pytest.raises(HarnessError, match=f"is not a valid {comparator} answer") as e:
        grader.gold_key(gold)
    if comparator == "math":  # ours names the problem; math-verify only says it parsed nothing
        assert problem in str(e.value)
    else:
        assert "math-verify parses no expression" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("comparator", ["math", "math_verify"])
def test_golds_that_parse(comparator):
    grader = Grader([{"name": "answer", "steps": CHAINS["boxed"]}], comparator)
    for gold in (r"\frac{1}{2}", r"\text{(C)}", "(1, 2]", r"\begin{pmatrix}1\\2\end{pmatrix}", r"\{1, 2\}", "1,000"):
        assert grader.gold_key(gold)


def test_check_docs_names_the_doc_with_a_bad_gold(tmp_path):
    """The run's up-front check: the doc whose gold does not parse is reported by id with the problem."""
    from harness.runs.runner import Prepared, check_docs
    from harness.tasks import load_task

    spec_file = tmp_path / "mathy.yaml"
    spec_file.write_text(
        "task: mathy\ndataset: {name: math}\n"
        "prompt: {template: '{{ problem }}', target: '{{ answer }}'}\n"
        "filters: [{name: strict, steps: [{function: boxed}]}]\n"
        "scoring: {comparator: math}\n"
    )
    spec = load_task(str(spec_file))
    docs = [{"doc_id": "a", "problem": "1/2?", "answer": r"\frac{1}{2}"},
            {"doc_id": "b", "problem": "broken", "answer": r"\frac{1}{"}]
    failures = check_docs(Prepared(spec, Grader.for_spec(spec), docs, None, {}))
    assert [doc_id for doc_id, _ in failures] == ["b"]
    assert "unclosed {" in failures[0][1] and r"\\frac{1}{" in failures[0][1]
