"""harness.stats against known values: scipy's binomial test, hand-computed bootstrap
distributions, an independent bootstrap loop, and exhaustive sign-flip enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.scoring import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 1), (3, 0), (5, 9), (12, 12), (40, 58), (1, 30), (300, 340), (700, 610)])
def test_mcnemar_matches_scipy_binomtest(a_only, b_only):
    m = a_only + b_only
    expected = scipy_stats.binomtest(a_only, m, 0.5, alternative="two-sided").pvalue if m else 1.0
    assert stats.mcnemar_exact_counts(a_only, b_only) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_from_paired_outcomes():
    a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    b = np.array([0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    r = stats.mcnemar_exact(a, b)
    assert (r.a_only, r.b_only, r.both, r.neither, r.n, r.discordant) == (5, 1, 3, 3, 12, 6)
    # by hand: 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * 7/64
    assert r.p_value == pytest.approx(14 / 64)
    assert r.p_value == pytest.approx(scipy_stats.binomtest(1, 6, 0.5).pvalue)
    with pytest.raises(ValueError):
        stats.mcnemar_exact([1, 0], [1])


def test_binom_half_cdf_exact():
    for m in (1, 7, 40, 1319):
        for k in (-1, 0, m // 3, m // 2, m - 1, m):
            assert stats.binom_half_cdf(k, m) == pytest.approx(scipy_stats.binom.cdf(k, m, 0.5), rel=1e-9, abs=1e-300)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_two_problems_by_hand():
    # d = b - a = [0, 1]: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are exactly 0 and 1.
    r = stats.paired_bootstrap([1, 0], [1, 1], n_boot=4000, seed=0)
    assert (r.n, r.mean_a, r.mean_b, r.diff) == (2, 0.5, 1.0, 0.5)
    assert (r.ci_low, r.ci_high) == (0.0, 1.0)
    means = stats.bootstrap_means([0.0, 1.0], n_boot=4000, seed=0)
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert abs((means == 0.5).mean() - 0.5) < 0.03


def test_bootstrap_three_problems_by_hand():
    # d = [0, 0, 1]: resample mean k/3, k ~ Bin(3, 1/3): P = 8/27, 12/27, 6/27, 1/27 (cumulative
    # .296, .741, .963, 1). 95% CI: 2.5% -> 0, 97.5% -> 1. 90% CI: 5% -> 0, 95% -> 2/3.
    a, b = [1, 1, 0], [1, 1, 1]
    r95 = stats.paired_bootstrap(a, b, n_boot=10_000, seed=1)
    assert (r95.ci_low, r95.ci_high) == (0.0, 1.0)
    r90 = stats.paired_bootstrap(a, b, n_boot=10_000, seed=1, alpha=0.10)
    assert r90.ci_low == 0.0 and r90.ci_high == pytest.approx(2 / 3)
    # the bootstrap standard error approaches the plug-in value sqrt(var(d) / n) = sqrt(2/9 / 3)
    assert r95.se == pytest.approx(math.sqrt(2 / 27), rel=0.05)


def test_bootstrap_matches_an_independent_loop():
    a = np.array([1, 0, 1, 1, 0, 1, 0.5, 0.25, 1, 0, 1])
    b = np.array([1, 1, 0, 1, 0, 0, 0.75, 0.25, 1, 1, 0])
    n_boot, seed = 1500, 42  # not a multiple of the internal chunk size
    rng = np.random.default_rng(seed)
    d = b - a
    means = []
    for _ in range(n_boot):  # one index vector per replicate, straightforwardly
        idx = rng.integers(0, len(d), size=len(d))
        means.append(sum(d[i] for i in idx) / len(d))
    means.sort()

    def quantile(q):  # linear interpolation between order statistics (numpy's default method)
        pos = (len(means) - 1) * q
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (means[hi] - means[lo]) * (pos - lo)

    r = stats.paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    assert r.ci_low == pytest.approx(quantile(0.025), abs=1e-12)
    assert r.ci_high == pytest.approx(quantile(0.975), abs=1e-12)
    assert r.diff == pytest.approx(d.mean())
    assert r.se == pytest.approx(np.std(means, ddof=1))


def test_bootstrap_identical_and_seeded():
    x = np.random.default_rng(3).random(50) < 0.5
    r = stats.paired_bootstrap(x, x, n_boot=500)
    assert (r.diff, r.ci_low, r.ci_high, r.se) == (0.0, 0.0, 0.0, 0.0)
    y = np.random.default_rng(4).random(50) < 0.5
    r1 = stats.paired_bootstrap(x, y, n_boot=800, seed=9)
    r2 = stats.paired_bootstrap(x, y, n_boot=800, seed=9)
    r3 = stats.paired_bootstrap(x, y, n_boot=800, seed=10)
    assert r1 == r2 and (r1.ci_low, r1.ci_high) != (r3.ci_low, r3.ci_high)
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 0], [1])


def test_align_shared_problems_in_id_order():
    ids, x, y = stats.align({"10": 1, "2": 0, "x": 1, "3": 1}, {"3": 0, "10": 1, "2": 1, "y": 0})
    assert ids == ["2", "3", "10"]
    assert x.tolist() == [0, 1, 1] and y.tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------- sign-flip test


def _enumerate(d, alternative):
    d = np.asarray(d, dtype=float)
    T = d.sum()
    sims = [float(np.dot(s, np.abs(d))) for s in itertools.product((-1, 1), repeat=len(d))]
    le = sum(s <= T + 1e-12 for s in sims) / len(sims)
    ge = sum(s >= T - 1e-12 for s in sims) / len(sims)
    return {"less": le, "greater": ge, "two-sided": min(1.0, 2 * min(le, ge))}[alternative]


def test_sign_flip_known_case():
    # 3 problems worse, 997 equal: exactly 1/8 under H0 (all three signs negative)
    d = np.array([-1.0] * 3 + [0.0] * 997)
    r = stats.sign_flip_test(d, "less")
    assert r.p_value == pytest.approx(0.125) and r.method == "exact"
    assert (r.n, r.n_nonzero, r.n_negative, r.n_positive) == (1000, 3, 3, 0)
    # ... whereas a one-sided paired t-test would call this significant (why we do not use it)
    assert scipy_stats.ttest_1samp(d, 0.0, alternative="less").pvalue < 0.05
    assert stats.sign_flip_test(np.zeros(10)).p_value == 1.0


@pytest.mark.parametrize("b_worse,b_better", [(0, 0), (5, 1), (9, 9), (30, 12), (2, 20), (200, 160)])
def test_sign_flip_binary_is_one_sided_mcnemar(b_worse, b_better):
    d = np.array([-1.0] * b_worse + [1.0] * b_better + [0.0] * 50)
    r = stats.sign_flip_test(d, "less")
    m = b_worse + b_better
    expected = scipy_stats.binomtest(b_worse, m, 0.5, alternative="greater").pvalue if m else 1.0
    assert r.p_value == pytest.approx(expected, rel=1e-9)
    assert stats.sign_flip_test(d, "two-sided").p_value == pytest.approx(stats.mcnemar_exact_counts(b_worse, b_better), rel=1e-9)


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
def test_sign_flip_exact_on_a_lattice_matches_enumeration(alternative):
    d = [0.25, -0.5, -0.75, 0.5, -0.25, -1.0, 0.0, 0.125, -0.375, 1 / 3]
    r = stats.sign_flip_test(d, alternative)
    assert r.method == "exact"
    assert r.p_value == pytest.approx(_enumerate(d, alternative), rel=1e-9)


def test_sign_flip_monte_carlo_off_lattice():
    d = np.array([math.sqrt(2), -math.pi / 3, -0.7071, 0.1234567, -1 / math.e, -0.9, 0.333, -0.5 * math.sqrt(3), 0.05, -0.61])
    r = stats.sign_flip_test(d, "less", seed=3, n_resamples=40_000)
    assert r.method.startswith("monte-carlo")
    exact = _enumerate(d, "less")
    assert r.p_value == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 40_000) + 1e-4)
    assert r == stats.sign_flip_test(d, "less", seed=3, n_resamples=40_000)  # seeded
    with pytest.raises(ValueError):
        stats.sign_flip_test(d, "sideways")


def test_sign_flip_large_mean_at_n_is_exact_and_fast():
    rng = np.random.default_rng(0)
    d = (rng.integers(0, 17, 1319) - rng.integers(0, 17, 1319)) / 16  # mean@16 differences
    r = stats.sign_flip_test(d, "less")
    assert r.method == "exact" and 0.0 < r.p_value < 1.0
    # large-sample check against the normal approximation of the permutation distribution
    z = d.sum() / math.sqrt((d ** 2).sum())
    assert r.p_value == pytest.approx(scipy_stats.norm.cdf(z), abs=0.01)


# ----------------------------------------------------------------------------- intervals, buckets


def test_wilson_known_values():
    lo, hi = stats.wilson_ci(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = stats.wilson_ci(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in stats.wilson_ci(0, 0))


def test_length_buckets():
    lens = list(range(100, 200)) + [1000]
    edges = stats.length_bucket_edges(lens, 4)
    assert edges[0] == 100 and edges[-1] == 1001 and edges == sorted(set(edges))
    ok = [x % 2 == 0 for x in lens]
    bks = stats.bucket_accuracy(lens, ok, edges)
    assert sum(b.n for b in bks) == len(lens)
    assert all(b.lo <= min(x for x in lens if b.lo <= x < b.hi) for b in bks if b.n)
    assert bks[0].label == f"100–{edges[1] - 1}"
    assert stats.length_bucket_edges([], 4) == [] and stats.bucket_accuracy([], [], []) == []
    same = stats.length_bucket_edges([7, 7, 7], 5)
    assert same == [7, 8] and stats.bucket_accuracy([7, 7, 7], [1, 0, 1], same)[0].acc == pytest.approx(2 / 3)
