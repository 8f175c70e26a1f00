from __future__ import annotations

import os
import signal
import time

import pytest

from harness import HarnessError
from harness.grading import (
    Filter,
    GradeResult,
    Grader,
    MathComparator,
    MathWorker,
    answer_is,
    build_filters,
    cluster_keys,
    extract_boxed,
    make_comparator,
    normalize_math_text,
    normalize_number,
    strip_think,
)

# lm-eval's GSM8K extraction, verbatim patterns.
STRICT = {"name": "strict", "steps": [
    {"function": "regex", "pattern": r"#### (\-?[0-9\.\,]+)", "group": 1, "select": "first"},
    {"function": "take_first"},
]}  # fmt: skip
FLEXIBLE = {"name": "flexible", "steps": [
    {"function": "regex", "pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)", "select": "last"},
]}  # fmt: skip
BOXED = {"name": "boxed", "steps": [{"function": "boxed"}]}
THINK_THEN_ANSWER = {"name": "think_answer", "steps": [{"function": "strip_think"}, {"function": "answer_is"}]}
GSM8K_FILTERS = [STRICT, FLEXIBLE, BOXED, THINK_THEN_ANSWER]


@pytest.fixture(scope="module")
def gsm8k_filters() -> dict[str, Filter]:
    return build_filters(GSM8K_FILTERS)


# ---- filters on realistic model outputs ------------------------------------------------------

# (completion, filter, expected extraction; None = invalid)
EXTRACTION_CASES = [
    ("Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n#### 72", "strict", "72"),
    ("#### 18", "strict", "18"),
    ("She pays 5 * 2 = 10.\n#### 1,234", "strict", "1,234"),
    ("#### -3\n#### 5", "strict", "-3"),  # select: first
    ("The answer is 18.", "strict", None),  # no #### line
    ("The answer is $1,000.", "flexible", "$1,000."),
    ("3 apples + 5 apples = 8 apples, so 8 in total", "flexible", "8"),  # single digit: the 2nd group
    ("First 12, then 15, finally 27.5 dollars", "flexible", "27.5"),
    ("He owes -15 dollars", "flexible", "-15"),
    ("So the final answer is **73**", "flexible", "73"),
    ("The total is 0.25", "flexible", "0.25"),
    ("I cannot solve this.", "flexible", None),
    ("", "flexible", None),
    (r"So $x = \boxed{\frac{1}{2}}$.", "boxed", r"\frac{1}{2}"),
    (r"\boxed{3} is wrong, it is \boxed{\sqrt{\frac{a}{b}}}", "boxed", r"\sqrt{\frac{a}{b}}"),  # last, nested
    (r"\fbox{42}", "boxed", "42"),
    (r"answer \boxed{\{1, 2\}}", "boxed", r"\{1, 2\}"),  # escaped braces do not close the box
    (r"first \boxed{5} then \boxed{12", "boxed", None),  # truncated last box: no answer
    (r"\boxed{}", "boxed", None),  # empty box is nothing extracted
    ("<think>maybe 3? The answer is 3.</think>The answer is 4.", "think_answer", "4"),
    ("it's 2+2 so 4\n</think>\n\nThe answer is 4.", "think_answer", "4"),  # the prompt opened <think>
    ("<think>The answer is 3. Hmm, let me keep going", "think_answer", None),  # never closed
    ("The answer is: 3.5.", "think_answer", "3.5"),
    ("**Answer:** 42\nThat is all.", "think_answer", "42"),
    ("Answer: 7! Great", "think_answer", "7"),
    ("The final answer is $\\boxed{18}$", "boxed", "18"),
]


@pytest.mark.parametrize("text,filter_name,expected", EXTRACTION_CASES)
def test_extraction(gsm8k_filters, text, filter_name, expected):
    assert gsm8k_filters[filter_name](text) == expected


# (steps, text, expected)
STEP_CASES = [
    ([{"function": "regex", "pattern": r"(\d+)-(\d+)", "group": 2}], "pages 10-20", "20"),
    ([{"function": "regex", "pattern": r"(\d+)-(\d+)", "group": 0}], "pages 10-20", "10-20"),
    ([{"function": "regex", "pattern": r"\d+", "select": 1}], "1 2 3", "2"),
    ([{"function": "regex", "pattern": r"\d+", "select": -1}], "1 2 3", "3"),
    ([{"function": "regex", "pattern": r"\d+", "select": 5}], "1 2 3", None),
    ([{"function": "regex", "pattern": r"(a)|(b)", "group": 1}], "b", None),  # group did not match
    ([{"function": "regex", "pattern": r"(?i)ANSWER: (\w+)"}], "answer: Yes", "Yes"),
    ([{"function": "answer_is"}, {"function": "lowercase"}], "The answer is (B).", "(b)"),
    ([{"function": "last_number"}], "from 1,000 to 2,500.5 units", "2,500.5"),
    ([{"function": "first_number"}], "costs $-3 now, $4 later", "-3"),
    ([{"function": "first_number"}], "no digits here", None),
    ([{"function": "strip"}], "   \n ", None),  # whitespace only: nothing extracted
]


@pytest.mark.parametrize("steps,text,expected", STEP_CASES)
def test_steps(steps, text, expected):
    f = build_filters([{"name": "f", "steps": steps}])["f"]
    assert f(text) == expected


# ---- normalisation ---------------------------------------------------------------------------

NUMBER_CASES = [
    ("$1,000.00", "1000"), ("-3", "-3"), ("3.50", "3.5"), ("73.", "73"), ("**73**", "73"),
    ("1,234", "1234"), ("1/2", "0.5"), ("2/6", "1/3"), ("+5", "5"), ("5%", "5"), ("50\\%", "50"),
    ("10 dollars", "10"), ("-0", "0"), ("0.0", "0"), (".5", "0.5"), ("$-5", "-5"), ("-$5", "-5"),
    ("1{,}000", "1000"), ("18,", "18"), ("\\$18.00", "18"), ("1e3", "1000"), ("1,234,567.890", "1234567.89"),
    ("1.5 million", None), ("3 or 4", None), ("1,00", None), ("...", None), ("$.", None), ("abc", None),
    ("1/0", None), ("", None),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_normalize_number_without_units():
    assert normalize_number("5 x", units=False) is None
    assert normalize_number("5 %", units=False) == "5"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("\\boxed{x = 5}", "5"),
        ("5 \\text{ cm}", "5"),
        ("\\text{(A)}", "(A)"),
        ("\\left( 1, 2 \\right)", "( 1, 2 )"),
        ("90^\\circ", "90"),
        ("y = x + 1 = 2", "y = x + 1 = 2"),
    ],
)
def test_normalize_math_text(text, expected):
    assert normalize_math_text(text) == expected


# ---- comparators -----------------------------------------------------------------------------

COMPARE_CASES = [
    ("numeric", "$1,000.", "1000", True),
    ("numeric", "18.00", "18", True),
    ("numeric", "-7", "7", False),
    ("numeric", "0.333", "1/3", False),  # exact, no tolerance
    ("exact", " Paris ", "Paris", True),
    ("exact", "paris", "Paris", False),
    ("math", "\\frac{1}{2}", "0.5", True),
    ("math", "\\dfrac12", "1/2", True),
    ("math", "2\\sqrt{2}", "\\sqrt{8}", True),
    ("math", "x+1", "1+x", True),
    ("math", "\\frac{\\pi}{2}", "\\dfrac{\\pi}2", True),
    ("math", "0.5x", "\\frac{x}{2}", True),
    ("math", "(x+1)^2", "x^2+2x+1", True),
    ("math", "\\sqrt[3]{8}", "2", True),
    ("math", "(1, 2)", "(1,2)", True),
    ("math", "[1, 2)", "(1, 2)", False),  # interval ends differ
    ("math", "(2, 1)", "(1, 2)", False),  # tuples are ordered
    ("math", "\\left( \\frac{1}{2}, 3 \\right)", "(0.5, 3)", True),
    ("math", "1,000", "1000", True),
    ("math", "2.83", "2\\sqrt{2}", False),  # a rounded value is not the exact one
    ("math", "\\text{(B)}", "B", True),  # brackets around one symbol do not matter
    ("math", "\\text{(B)}", "C", False),
    ("math", "yes", "sey", False),  # unknown words are not split into letter products
    ("math", "x = 3", "3", True),
    ("math", "50\\%", "50", True),
]


@pytest.mark.parametrize("comparator,pred,gold,expected", COMPARE_CASES)
def test_comparator_equal(comparator, pred, gold, expected):
    assert make_comparator(comparator).equal(pred, gold) is expected


@pytest.mark.parametrize(
    "comparator,a,b",
    [("numeric", "$1,000", "1000.0"), ("math", "\\sqrt{8}", "2\\sqrt{2}"), ("math", "\\frac{1}{2}", "0.5"),
     ("math", "x+1", "1+x"), ("exact", "A ", "A")],
)  # fmt: skip
def test_equivalent_answers_share_a_key(comparator, a, b):
    comp = make_comparator(comparator)
    assert comp.key(a) == comp.key(b) is not None


def test_untrusted_answers_are_not_evaluated_as_python():
    comp = make_comparator("math")
    for evil in ("__import__('os').system('touch /tmp/pwned_by_grader')", "input()", "open(0)", "x.subs"):
        assert comp.equal(evil, "1") is False
    assert not os.path.exists("/tmp/pwned_by_grader")


def test_slow_sympy_is_not_equal_within_seconds():
    comp = MathComparator(timeout_s=1.0)
    start = time.monotonic()
    assert comp.equal("10^{10^{10}}", "1") is False
    assert comp.equal("(x+1)^{2}", "x^2+2x+1") is True  # the worker still answers afterwards
    assert time.monotonic() - start < 8


def test_hung_worker_is_killed_and_restarted():
    worker = MathWorker()
    try:
        assert worker.call("equal", "x+1", "1+x", timeout=2.0) is True
        os.kill(worker._proc.pid, signal.SIGSTOP)  # stuck where no signal handler can run (C code)
        start = time.monotonic()
        assert worker.call("equal", "x+1", "1+x", timeout=0.5) is None
        assert time.monotonic() - start < 0.5 + MathWorker.GRACE_S + 1.0
        assert worker.kills == 1
        assert worker.call("equal", "x+1", "1+x", timeout=2.0) is True  # a fresh worker
    finally:
        worker.close()


def test_unknown_comparator():
    with pytest.raises(HarnessError, match="unknown comparator 'fuzzy'"):
        make_comparator("fuzzy")


def test_cluster_keys_merges_equivalent_math_answers():
    comp = make_comparator("math")
    answers = ["0.5x", "\\frac{x}{2}", "1/2", "0.5", None, "y", "x/2"]
    keys = cluster_keys(answers, comp)
    assert keys[0] == keys[1] == keys[6]
    assert keys[2] == keys[3] != keys[0]
    assert keys[4] is None and keys[5] not in (keys[0], keys[2])
    assert cluster_keys(["$5", "5.0", None], "numeric") == ["5", "5", None]


# ---- Grader ----------------------------------------------------------------------------------


def test_grader_gsm8k():
    grader = Grader([STRICT, FLEXIBLE], "numeric")
    out = grader.grade("4 + 14 = 18 eggs.\n#### 18", "18")
    assert out == {"strict": GradeResult("18", "18", True), "flexible": GradeResult("18", "18", True)}
    out = grader.grade("So she has 1,000 left... and that's it...", "1000")
    assert out["strict"] == GradeResult(None, None, False)
    # flexible catches "..." (lm-eval would score it wrong): not a number, so invalid.
    assert out["flexible"] == GradeResult("...", None, False) and out["flexible"].invalid
    out = grader.grade("#### 17", "18")
    assert out["strict"] == GradeResult("17", "17", False) and not out["strict"].invalid
    assert grader.gold_key("1,000") == "1000"
    with pytest.raises(HarnessError, match="gold answer 'n/a' is not a valid numeric answer"):
        grader.gold_key("n/a")


def test_grader_strips_think_first():
    grader = Grader([FLEXIBLE], "numeric")
    assert grader.filter_names == ["flexible"]
    assert grader.grade("<think>is it 12? or 13</think>It is 12 apples.", "12")["flexible"].correct
    assert grader.grade("<think>so far 12, then", "12")["flexible"] == GradeResult(None, None, False)
    raw = Grader([FLEXIBLE], "numeric", strip_think=False)
    assert raw.grade("It is 12.<think>or 13</think>", "12")["flexible"].answer == "13"


def test_grader_math_boxed():
    grader = Grader([BOXED], "math")
    assert grader.grade("so \\boxed{\\dfrac{\\sqrt{8}}{4}}", "\\frac{\\sqrt{2}}{2}")["boxed"].correct
    assert grader.grade("no box", "1")["boxed"] == GradeResult(None, None, False)


# ---- spec validation -------------------------------------------------------------------------

BAD_SPECS = [
    ([{"name": "f", "steps": [{"function": "regx"}]}], r"filters\[0\]\.steps\[0\]: unknown function 'regx' \(choose from answer_is, boxed"),
    ([STRICT, {"name": "g", "steps": [{"function": "take_first"}, {"function": "regex"}]}], r"filters\[1\]\.steps\[1\]: regex needs key 'pattern'"),
    ([{"name": "f", "steps": [{"function": "regex", "pattern": "(a"}]}], r"filters\[0\]\.steps\[0\]\.pattern: bad regex '\(a'"),
    ([{"name": "f", "steps": [{"function": "regex", "pattern": "a", "patern": "b"}]}], r"filters\[0\]\.steps\[0\]: unknown key 'patern' for regex"),
    ([{"name": "f", "steps": [{"function": "regex", "pattern": "(a)", "group": 2}]}], r"\.group: 2 but the pattern has 1 group"),
    ([{"name": "f", "steps": [{"function": "regex", "pattern": "a", "select": "middle"}]}], r"\.select: expected first, last or a match index"),
    ([{"name": "f", "steps": [{"function": "boxed", "pattern": "x"}]}], r"unknown key 'pattern' for boxed"),
    ([{"name": "f", "steps": ["boxed"]}], r"filters\[0\]\.steps\[0\]: expected a mapping"),
    ([{"name": "f", "steps": [{"pattern": "x"}]}], r"filters\[0\]\.steps\[0\]: missing key 'function'"),
    ([{"name": "f", "steps": []}], r"filters\[0\]\.steps: expected a non-empty list"),
    ([{"steps": [{"function": "boxed"}]}], r"filters\[0\]\.name: expected a non-empty string"),
    ([BOXED, BOXED], r"filters\[1\]\.name: duplicate filter name 'boxed'"),
    ([{"name": "f", "steps": [{"function": "boxed"}], "stepz": []}], r"filters\[0\]: unknown key 'stepz'"),
    ([], r"filters: expected a non-empty list"),
    ([{"name": "f", "steps": [{"function": ["regex"]}]}], r"unknown function \['regex'\]"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS)
def test_bad_filter_specs(spec, message):
    with pytest.raises(HarnessError, match=message) as info:
        build_filters(spec)
    assert "\n" not in str(info.value)


def test_helpers_directly():
    assert extract_boxed("\\boxed 5$ done") == "5"
    assert strip_think("no thinking at all") == "no thinking at all"
    assert answer_is("nothing here") is None
