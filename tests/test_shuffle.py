"""The native shuffle of the training rows (cgd._shuffle): a permutation, a function of
its seed and length alone (the same for any thread count and scratch array), and
uniform, both in one Fisher-Yates pass and in the two-pass bucketed form that larger
arrays take; checks that a deliberately biased shuffle fails."""

import itertools
import math
from contextlib import contextmanager

import numpy as np
import pytest
from scipy.stats import chi2

import cgd
from cgd import _shuffle

from _helpers import requires_openmp

SEED = 2**63 + 12345


def _shuffled(n, seed=SEED, n_threads=1, scratch=None, **layout):
    a = np.arange(n, dtype=np.intp)
    _shuffle.shuffle_order(a, seed, n_threads, scratch, **layout)
    return a


@contextmanager
def _test_hook(hook):
    previous = _shuffle._set_test_hook(hook)
    try:
        yield
    finally:
        _shuffle._set_test_hook(previous)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 32, 33, 1000, 70_000])
@pytest.mark.parametrize("bucket_log2", [1, 5, 15])
@pytest.mark.parametrize("chunk_log2", [0, 3, 13])
def test_shuffle_is_a_permutation_and_a_function_of_the_seed(n, bucket_log2, chunk_log2):
    layout = dict(bucket_log2=bucket_log2, chunk_log2=chunk_log2)
    a = _shuffled(n, **layout)
    assert np.array_equal(np.sort(a), np.arange(n))
    assert np.array_equal(a, _shuffled(n, **layout))
    if n >= 33:
        assert not np.array_equal(a, _shuffled(n, SEED + 1, **layout))


@pytest.mark.parametrize("n, bucket_log2, chunk_log2", [
    (40_000, 15, 13),     # two buckets, 5 chunks
    (200_000, 15, 13),    # the default layout of W1 / W2: 8 buckets, 25 chunks
    (300_000, 15, 10),    # 16 buckets, the most chunks (256)
    (100_000, 6, 5),      # 2,048 buckets of ~49 elements, 195 chunks
    (5_000, 2, 0),        # 2,048 buckets of ~2.4 elements, 9 chunks
    (3_001, 1, 0),        # 2,048 buckets, many of them empty, 5 chunks
    (33, 5, 0),           # two buckets, 33 chunks of one element
    (70_000, 1, 0),       # 65,536 buckets of ~1 element, 4 chunks
])
def test_same_permutation_for_any_thread_count_and_scratch(n, bucket_log2, chunk_log2):
    layout = dict(bucket_log2=bucket_log2, chunk_log2=chunk_log2)
    ref = _shuffled(n, **layout)
    assert np.array_equal(np.sort(ref), np.arange(n))
    for n_threads in (1, 2, 3, 4):
        for scratch in (None, np.full(n + 7, -1, dtype=np.intp)):
            assert np.array_equal(_shuffled(n, n_threads=n_threads, scratch=scratch,
                                            **layout), ref), (n_threads, scratch is None)


@requires_openmp
def test_second_pass_waits_for_every_chunk():
    """With the first chunk's pass 30 ms slower than the others (test hook), the other
    threads are long done with theirs: a second pass that did not wait for all of them
    would deal buckets from incomplete counts (a wrong result, or no permutation)."""
    n = 200_000
    ref = _shuffled(n)
    with _test_hook(4):
        for n_threads in (2, 3):
            assert np.array_equal(_shuffled(n, n_threads=n_threads), ref), n_threads


def test_shuffle_permutes_any_contents_the_same_way():
    """The order holds row indices (a subset with early stopping): the shuffle moves
    values without reading them, so any contents go where 0 .. n-1 go."""
    n = 50_000
    values = np.random.default_rng(0).permutation(3 * n)[:n].astype(np.intp)
    a = values.copy()
    _shuffle.shuffle_order(a, SEED, 2)
    assert np.array_equal(a, values[_shuffled(n, n_threads=2)])


def test_shuffle_changes_every_epoch_seed():
    """Nearby seeds (consecutive streams of the chunks and buckets) give unrelated
    permutations: no two of them agree on more positions than chance would allow."""
    n = 100_000
    perms = [_shuffled(n, seed) for seed in range(8)]
    for p, q in itertools.combinations(perms, 2):
        assert np.count_nonzero(p == q) < 20  # expected 1


def _uniformity_stat(n, bucket_log2, chunk_log2, n_threads, per_perm):
    """Chi-square statistic of the counts of each of the n! permutations over
    per_perm * n! fixed seeds, and the 1e-4 critical value of the uniform law."""
    perms = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    draws = per_perm * len(perms)
    counts = np.zeros(len(perms))
    a = np.empty(n, dtype=np.intp)
    for seed in range(draws):
        a[:] = np.arange(n)
        _shuffle.shuffle_order(a, seed * 0x9E3779B97F4A7C15 % 2**64, n_threads,
                               bucket_log2=bucket_log2, chunk_log2=chunk_log2)
        counts[perms[tuple(a)]] += 1
    assert len(perms) == math.factorial(n)
    expected = draws / len(perms)
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, chi2.ppf(1 - 1e-4, len(perms) - 1)


# 4! = 24 (one bucket: Fisher-Yates) up to 6! = 720 permutations in the two-pass form
# (buckets of 1 or 2 elements: some empty, some full; one chunk, or one chunk per
# element or two). Each permutation's count over many seeds against the uniform law:
# chi-square at the 1e-4 level (fixed seeds, so the outcome is fixed; the biased
# variants below land far beyond it).
UNIFORMITY_CASES = [(4, 15, 13, 1), (5, 1, 13, 1), (6, 2, 13, 1), (5, 1, 0, 2), (6, 1, 1, 2)]


@pytest.mark.parametrize("n, bucket_log2, chunk_log2, n_threads", UNIFORMITY_CASES)
def test_shuffle_is_uniform(n, bucket_log2, chunk_log2, n_threads):
    stat, critical = _uniformity_stat(n, bucket_log2, chunk_log2, n_threads, per_perm=120)
    assert stat < critical, stat


@pytest.mark.parametrize("hook, case", [
    (1, (5, 1, 13, 1)),   # an element's bucket shares a bit with the next one's
    (1, (6, 1, 1, 2)),
    (2, (4, 15, 13, 1)),  # Sattolo's algorithm: cyclic permutations only
    (2, (5, 1, 0, 2)),
])
def test_uniformity_check_fails_on_a_biased_shuffle(hook, case):
    """The check above can fail: on bucket draws that depend on each other (their law is
    still uniform: a bias that only a correlation shows), or on a Fisher-Yates pass that
    never leaves an element in place."""
    with _test_hook(hook):
        stat, critical = _uniformity_stat(*case, per_perm=120)
    assert stat > critical, stat


@pytest.mark.parametrize("chunk_log2", [13, 7])
def test_shuffle_position_of_each_element_is_uniform_in_the_bucketed_form(chunk_log2):
    """Where element 0 and the last element land, over many shuffles of 4,096 indices in
    buckets of 64 (one chunk, or 32 of them): uniform over the positions (chi-square
    at the 1e-4 level)."""
    n, draws = 4096, 20_000
    where = np.zeros((2, n))
    a = np.empty(n, dtype=np.intp)
    for seed in range(draws):
        a[:] = np.arange(n)
        _shuffle.shuffle_order(a, seed, bucket_log2=6, chunk_log2=chunk_log2)
        pos = np.argsort(a)
        where[0, pos[0]] += 1
        where[1, pos[-1]] += 1
    # Pool positions in 64 bins so that each expects ~312 counts.
    binned = where.reshape(2, 64, -1).sum(axis=2)
    expected = draws / 64
    for row in binned:
        stat = float(((row - expected) ** 2 / expected).sum())
        assert stat < chi2.ppf(1 - 1e-4, 63), stat


def test_out_of_memory_leaves_the_order_unchanged():
    a = np.arange(100_000, dtype=np.intp)
    with _test_hook(3), pytest.raises(MemoryError, match="shuffle"):
        _shuffle.shuffle_order(a, SEED, 2, np.empty_like(a))
    assert np.array_equal(a, np.arange(100_000))
    # One bucket needs no memory.
    b = np.arange(1000, dtype=np.intp)
    with _test_hook(3):
        _shuffle.shuffle_order(b, SEED)
    assert np.array_equal(b, _shuffled(1000))


def test_arguments_are_checked():
    a = np.arange(100_000, dtype=np.intp)
    with pytest.raises(ValueError, match="bucket_log2"):
        _shuffle.shuffle_order(a[:5], 1, bucket_log2=0)
    with pytest.raises(ValueError, match="chunk_log2"):
        _shuffle.shuffle_order(a[:5], 1, chunk_log2=-1)
    with pytest.raises(ValueError, match="scratch"):
        _shuffle.shuffle_order(a, 1, 1, np.empty(99_999, dtype=np.intp))
    with pytest.raises(ValueError, match="overlaps"):
        _shuffle.shuffle_order(a[:60_000], 1, 1, a[40_000:])
    with pytest.raises(ValueError, match="test hook"):
        _shuffle._set_test_hook(7)
    assert np.array_equal(a, np.arange(100_000))


def test_64_bit_products_agree_on_every_compiler():
    """The bounded draws' high word of a 64 x 64-bit product: the 128-bit form and the
    portable one (compilers without a 128-bit type) equal Python's exact product."""
    rng = np.random.default_rng(0)
    pairs = [(0, 0), (1, 2**64 - 1), (2**64 - 1, 2**64 - 1), (2**32, 2**32),
             (2**32 - 1, 2**64 - 1)]
    pairs += [tuple(int(v) for v in rng.integers(0, 2**64, 2, dtype=np.uint64))
              for _ in range(1000)]
    for a, b in pairs:
        assert _shuffle._mulhi64_agree(a, b) == ((a * b) >> 64, (a * b) >> 64), (a, b)


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


@requires_openmp
@pytest.mark.parametrize("early_stopping", [False, True])
def test_fits_with_the_two_pass_shuffle_do_not_depend_on_n_jobs(early_stopping):
    """70,000 rows: the shuffle takes the bucketed form on the fit's threads (with
    early stopping, over the training subset); the weights are the same bits for any
    n_jobs, and other than without shuffling."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((70_000, 3))
    y = (X @ rng.standard_normal(3) + 0.3 * rng.standard_normal(70_000) > 0).astype(int)

    def fit(n_jobs, shuffle=True):
        est = cgd.SGDClassifier(loss="log_loss", batch_size=64, max_iter=3, tol=None,
                                early_stopping=early_stopping, n_iter_no_change=3,
                                shuffle=shuffle, random_state=0, n_jobs=n_jobs).fit(X, y)
        return np.concatenate([est.coef_.ravel(), est.intercept_])

    ref = fit(1)
    for n_jobs in (2, 3):
        assert np.array_equal(fit(n_jobs), ref), n_jobs
    assert not np.array_equal(fit(1, shuffle=False), ref)
