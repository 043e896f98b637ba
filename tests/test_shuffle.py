"""The native shuffle of the training rows (cgd._shuffle): a permutation, a function of
its seed alone, and uniform, both in one Fisher-Yates pass and in the two-pass bucketed
form that larger arrays take."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chi2

import cgd
from cgd import _shuffle


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 32, 33, 1000, 70_000])
@pytest.mark.parametrize("bucket_log2", [1, 5, 15])
def test_shuffle_is_a_permutation_and_a_function_of_the_seed(n, bucket_log2):
    a = np.arange(n, dtype=np.intp)
    b = a.copy()
    _shuffle.shuffle_order(a, 2**63 + 12345, bucket_log2=bucket_log2)
    _shuffle.shuffle_order(b, 2**63 + 12345, bucket_log2=bucket_log2)
    assert np.array_equal(np.sort(a), np.arange(n))
    assert np.array_equal(a, b)
    if n >= 33:
        c = np.arange(n, dtype=np.intp)
        _shuffle.shuffle_order(c, 2**63 + 12346, bucket_log2=bucket_log2)
        assert not np.array_equal(a, c)


# 4! = 24 (one bucket: Fisher-Yates) and 5! = 120 permutations (buckets of 2: the
# two-pass form with 4 buckets, some empty, some full). Each permutation's count over
# many seeds against the uniform law: chi-square at the 1e-4 level (fixed seeds, so the
# outcome is fixed; a biased shuffle, e.g. a bucket chosen from the wrong bits or a
# modulo-biased draw, lands far beyond it).
@pytest.mark.parametrize("n, bucket_log2", [(4, 15), (5, 1), (6, 2)])
def test_shuffle_is_uniform(n, bucket_log2):
    perms = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    draws = 200 * len(perms)
    counts = np.zeros(len(perms))
    a = np.empty(n, dtype=np.intp)
    for seed in range(draws):
        a[:] = np.arange(n)
        _shuffle.shuffle_order(a, seed * 0x9E3779B97F4A7C15 % 2**64, bucket_log2=bucket_log2)
        counts[perms[tuple(a)]] += 1
    expected = draws / len(perms)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(1 - 1e-4, len(perms) - 1), (stat, counts.min(), counts.max())
    assert len(perms) == math.factorial(n)


def test_shuffle_position_of_each_element_is_uniform_in_the_bucketed_form():
    """Where element 0 and the last element land, over many shuffles of 4,096 indices in
    buckets of 64: uniform over the positions (chi-square at the 1e-4 level)."""
    n, draws = 4096, 40_000
    where = np.zeros((2, n))
    a = np.empty(n, dtype=np.intp)
    for seed in range(draws):
        a[:] = np.arange(n)
        _shuffle.shuffle_order(a, seed, bucket_log2=6)
        pos = np.argsort(a)
        where[0, pos[0]] += 1
        where[1, pos[-1]] += 1
    # Pool positions in 64 bins so that each expects ~625 counts.
    binned = where.reshape(2, 64, -1).sum(axis=2)
    expected = draws / 64
    for row in binned:
        stat = float(((row - expected) ** 2 / expected).sum())
        assert stat < chi2.ppf(1 - 1e-4, 63), stat


def test_bucket_size_is_checked():
    with pytest.raises(ValueError, match="bucket_log2"):
        _shuffle.shuffle_order(np.arange(5, dtype=np.intp), 1, bucket_log2=0)


def test_linear_fits_shuffle_with_their_random_state():
    """A linear fit's shuffles follow random_state: the same seed, the same weights;
    another seed, other weights; shuffle=False visits the rows in order."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 5))
    y = X @ rng.standard_normal(5)
    fit = lambda **kw: cgd.SGDRegressor(max_iter=3, tol=None, **kw).fit(X, y).coef_
    assert np.array_equal(fit(random_state=3), fit(random_state=3))
    assert not np.array_equal(fit(random_state=3), fit(random_state=4))
    assert np.array_equal(fit(shuffle=False, random_state=3), fit(shuffle=False,
                                                                  random_state=4))
