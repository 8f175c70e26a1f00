from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from harness.scoring import metrics
from harness.scoring.metrics import (
    DocSamples,
    compute_metrics,
    default_ks,
    maj_at_k,
    mean_stderr_ci,
    pass_at_k,
    per_problem_scores,
)


def brute_force_maj(keys, correct, k):
    """Majority vote over every size-k subset, written as plainly as possible (the test oracle).
    Ties go to the key that occurs first among all n samples; invalid samples abstain."""
    first_seen = {}
    for i, key in enumerate(keys):
        if key is not None:
            first_seen.setdefault(key, i)
    key_correct = {key: any(c for kk, c in zip(keys, correct) if kk == key) for key in first_seen}
    wins = total = 0
    for subset in itertools.combinations(range(len(keys)), k):
        votes = {}
        for i in subset:
            if keys[i] is not None:
                votes[keys[i]] = votes.get(keys[i], 0) + 1
        total += 1
        if votes:
            winner = max(votes, key=lambda key: (votes[key], -first_seen[key]))
            wins += key_correct[winner]
    return wins / total


def brute_force_pass(correct, k):
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def random_doc(rng: np.random.Generator, n: int, n_keys: int, p_invalid: float):
    keys = [None if rng.random() < p_invalid else f"k{rng.integers(n_keys)}" for _ in range(n)]
    correct_key = f"k{rng.integers(n_keys)}"
    # Several keys may be correct (equivalent answers that were not clustered), and an invalid or a
    # wrong-key sample is never correct.
    also_correct = f"k{rng.integers(n_keys)}" if rng.random() < 0.3 else None
    correct = [k is not None and k in (correct_key, also_correct) for k in keys]
    return keys, correct


CASES = [(seed, n) for n in range(1, 9) for seed in range(6)]


@pytest.fixture(params=["int64", "python-ints"])
def arithmetic(request, monkeypatch):
    """Run a test on both exact arithmetic paths of the maj@k counter (int64 up to n = 66, Python ints above)."""
    if request.param == "python-ints":
        monkeypatch.setattr(metrics, "_INT64_MAX_N", 0)
    metrics._maj_winning_subsets.cache_clear()
    yield request.param
    metrics._maj_winning_subsets.cache_clear()


@pytest.mark.parametrize("seed,n", CASES)
def test_maj_and_pass_match_brute_force(seed, n, arithmetic):
    rng = np.random.default_rng(1000 * n + seed)
    keys, correct = random_doc(rng, n, n_keys=int(rng.integers(1, 5)), p_invalid=[0.0, 0.2, 0.5][seed % 3])
    for k in range(1, n + 1):
        assert maj_at_k(keys, correct, k) == pytest.approx(brute_force_maj(keys, correct, k), abs=1e-12)
        assert pass_at_k(n, sum(correct), k) == pytest.approx(brute_force_pass(correct, k), abs=1e-12)


@pytest.mark.parametrize(
    "keys,correct,k,expected",
    [
        # 2-2 tie in the full set: the key seen first ("b" at index 0) wins.
        (["b", "a", "a", "b"], [False, True, True, False], 4, 0.0),
        (["a", "b", "a", "b"], [True, False, True, False], 4, 1.0),
        # invalid samples abstain: one valid correct vote beats three abstentions
        ([None, None, None, "a"], [False, False, False, True], 4, 1.0),
        # a subset of invalid samples only is wrong: only subsets holding index 3 are right
        ([None, None, None, "a"], [False, False, False, True], 2, 0.5),
        ([None, None], [False, False], 1, 0.0),
        # maj@1 is the mean correctness of single samples
        (["a", "b", "c", "a"], [True, False, False, True], 1, 0.5),
    ],
)
def test_maj_hand_cases(keys, correct, k, expected):
    assert maj_at_k(keys, correct, k) == pytest.approx(expected)
    assert brute_force_maj(keys, correct, k) == pytest.approx(expected)


def test_key_correct_if_any_sample_with_it_is():
    # sample 1 carries the same key as the correct sample 0 but was marked wrong; the key votes as correct
    assert maj_at_k(["a", "a", "b"], [True, False, False], 3) == 1.0


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(10, 0, 1, 0.0), (10, 0, 10, 0.0), (10, 10, 1, 1.0), (10, 10, 10, 1.0), (10, 8, 3, 1.0), (10, 1, 10, 1.0),
     (10, 3, 1, 0.3), (4, 1, 2, 0.5), (200, 1, 100, 0.5), (64, 2, 32, 1 - (32 * 31) / (64 * 63))],
)  # fmt: skip
def test_pass_at_k_edges(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not. Exact value via integers.
    exact = 1 - math.comb(1000 - 7, 500) / math.comb(1000, 500)
    assert pass_at_k(1000, 7, 500) == pytest.approx(exact, rel=1e-12)


def test_maj_n64_k32_is_fast():
    rng = np.random.default_rng(0)
    docs = []
    for n_keys in (1, 2, 3, 8, 16, 64):  # from unanimous to every answer distinct
        keys = [f"k{rng.integers(n_keys)}" if rng.random() > 0.1 else None for _ in range(64)]
        docs.append((keys, [k == "k0" for k in keys]))
    docs.append(([f"k{i % 2}" for i in range(64)], [i % 2 == 1 for i in range(64)]))  # 32-32 ties
    start = time.perf_counter()
    values = [maj_at_k(keys, correct, 32) for keys, correct in docs]
    assert time.perf_counter() - start < 0.5
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values[-1] == pytest.approx(1 - (1 + math.comb(32, 16) ** 2 / math.comb(64, 32)) / 2)


@pytest.mark.parametrize("half", [4, 32, 33, 40, 100])  # n = 66 is the last int64 size; 80 and 200 use Python ints
def test_maj_large_n_exact_against_symmetry(half):
    # two keys with `half` samples each: P(the later key wins) = P(it gets more votes) = (1 - P(tie)) / 2,
    # since ties go to the first key; P(tie) = C(half, k/2)^2 / C(2 half, k) for even k.
    keys = ["a"] * half + ["b"] * half
    for k in sorted({2, 4, half, 2 * half - 2, 2 * half} - {0}):
        p_tie = math.comb(half, k // 2) ** 2 / math.comb(2 * half, k) if k % 2 == 0 else 0.0
        assert maj_at_k(keys, [False] * half + [True] * half, k) == pytest.approx((1 - p_tie) / 2, abs=1e-12)
        assert maj_at_k(keys, [True] * half + [False] * half, k) == pytest.approx((1 + p_tie) / 2, abs=1e-12)


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]


def test_clustered_stderr_by_hand():
    # three problems, n = 2: per-problem mean@2 scores 1.0, 0.5, 0.0 -> mean 0.5, sample std 0.5
    docs = [
        DocSamples("p0", ["1", "1"], [True, True]),
        DocSamples("p1", ["1", "2"], [True, False]),
        DocSamples("p2", ["2", "2"], [False, False]),
    ]
    m = compute_metrics(docs, [1, 2])
    assert m["mean@2"] == pytest.approx(0.5)
    se = 0.5 / math.sqrt(3)
    assert m["mean@2_stderr"] == pytest.approx(se)
    half = 1.959963984540054 * se  # 0.566: the normal interval is clipped to [0, 1]
    assert m["mean@2_ci"] == pytest.approx([max(0.0, 0.5 - half), min(1.0, 0.5 + half)]) == [0.0, 1.0]
    assert mean_stderr_ci([1.0, 0.5, 0.0], clip=None)[2] == pytest.approx([0.5 - half, 0.5 + half])
    # acc uses sample 0 only: scores 1, 1, 0
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["acc_stderr"] == pytest.approx(np.std([1, 1, 0], ddof=1) / math.sqrt(3))
    # maj@2 on p1: the {1, 2} tie goes to "1" (seen first), which is correct
    assert m["maj@2"] == pytest.approx(2 / 3)
    assert m["pass@2"] == pytest.approx(2 / 3)
    # clustered, not per-sample: treating the 6 samples as independent would give a smaller SE
    assert m["mean@2_stderr"] > np.std([1, 1, 1, 0, 0, 0], ddof=1) / math.sqrt(6)


def test_compute_metrics_fields_and_rates():
    docs = [
        DocSamples("a", ["1", None, "1", "2"], [True, False, True, False], ["stop", "length", "stop", "stop"], [10, 512, 20, 30]),
        DocSamples("b", [None, None, "3", "3"], [False, False, False, False], ["length", "length", "stop", "stop"], [512, 512, 5, 7]),
    ]
    m = compute_metrics(docs, [1, 2, 3, 4, 8])
    assert m["n_problems"] == 2 and m["n_samples"] == 4
    assert "maj@8" not in m and "pass@8" not in m  # k > n omitted
    assert {"maj@3", "pass@3", "mean@4", "acc"} <= m.keys()
    assert m["invalid_rate"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert m["truncation_rate"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert m["mean_gen_tokens"] == pytest.approx((np.mean([10, 512, 20, 30]) + np.mean([512, 512, 5, 7])) / 2)
    assert m["median_gen_tokens"] == pytest.approx(np.median([10, 512, 20, 30, 512, 512, 5, 7]))
    assert m["mean_gen_tokens_ci"][1] > 1  # token counts are not clipped to [0, 1]
    for metric in ("acc", "maj@4", "pass@2", "invalid_rate"):
        lo, hi = m[f"{metric}_ci"]
        assert 0.0 <= lo <= m[metric] <= hi <= 1.0
    scores = per_problem_scores(docs, [4])
    assert scores["maj@4"] == {"a": 1.0, "b": 0.0}
    assert scores["acc"] == {"a": 1.0, "b": 0.0}
    for metric in scores:
        assert m[metric] == pytest.approx(np.mean(list(scores[metric].values())))


def test_single_problem_and_empty():
    m = compute_metrics([DocSamples("only", ["1"], [True])], None)
    assert m["acc"] == 1.0 and m["acc_stderr"] == 0.0 and m["acc_ci"] == [1.0, 1.0]
    assert "truncation_rate" not in m and "mean_gen_tokens" not in m  # not given
    assert compute_metrics([], [1]) == {}
    assert mean_stderr_ci([0.0, 1.0], clip=None)[2][0] < 0


def test_missing_samples_are_an_error():
    docs = [DocSamples("a", ["1", "1"], [True, True]), DocSamples("b", ["1"], [True])]
    with pytest.raises(AssertionError, match="every problem needs all n=2 samples; 1 have fewer \\(first: 'b'\\)"):
        compute_metrics(docs, [1])


def test_doc_samples_lengths_must_agree():
    with pytest.raises(AssertionError, match="1 correct for 2 keys"):
        DocSamples("a", ["1", "2"], [True])
