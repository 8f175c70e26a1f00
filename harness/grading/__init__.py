"""Grading: a completion → an answer (filters) → a vote key and correctness (comparators).

    filters       named chains of extraction steps; @register_filter, FILTERS
    numbers       number normalisation ("$1,000.00" → "1000")
    mathtext      \\boxed{} extraction, LaTeX cleaning, LaTeX → sympy text
    math_worker   the sympy subprocess, killed when a call overruns its deadline
    comparators   exact / numeric / math / math_verify (Hugging Face's math-verify); @register_comparator,
                  COMPARATORS; cluster_keys
    verifiers     reasoning_gym: generated tasks graded by their generator's own verifier
    grader        Grader: a task's filters + comparator on one completion
"""

from harness.grading.comparators import (
    COMPARATORS,
    Comparator,
    ExactComparator,
    MathComparator,
    MathVerifyComparator,
    NumericComparator,
    cluster_keys,
    make_comparator,
    register_comparator,
)
from harness.grading.filters import FILTERS, Filter, GradingTimeout, answer_is, build_filters, register_filter, strip_think
from harness.grading import choice as _choice  # noqa: F401  (registers the choice_letter filter step)
from harness.grading import verifiers as _verifiers  # noqa: F401  (registers the reasoning_gym comparator)
from harness.grading.grader import GradeResult, Grader
from harness.grading.math_worker import MathWorker
from harness.grading.mathtext import extract_boxed, normalize_math_text
from harness.grading.numbers import format_fraction, normalize_number

__all__ = [
    "COMPARATORS", "FILTERS", "Comparator", "ExactComparator", "Filter", "GradeResult", "Grader", "GradingTimeout",
    "MathComparator", "MathVerifyComparator", "MathWorker", "NumericComparator", "answer_is", "build_filters",
    "cluster_keys", "extract_boxed", "format_fraction", "make_comparator", "normalize_math_text", "normalize_number",
    "register_comparator", "register_filter", "strip_think",
]  # fmt: skip
