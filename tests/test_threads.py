"""Results do not depend on the number of threads (SPEC.md §1, §3.3)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cgd
from cgd import _openmp_helpers
from cgd import linear_model
from cgd._threads import effective_n_threads

_SAVED_MIN_WORK = linear_model.PARALLEL_MIN_WORK


def setup_module():
    # Small test problems would otherwise run on one thread (see PARALLEL_MIN_WORK):
    # force every multi-chunk batch through the parallel path.
    linear_model.PARALLEL_MIN_WORK = 0


def teardown_module():
    linear_model.PARALLEL_MIN_WORK = _SAVED_MIN_WORK


def _data(dtype, n=3000, d=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y.astype(dtype)


ESTIMATORS = [
    lambda **kw: cgd.SGDRegressor(learning_rate="constant", eta0=0.01, **kw),
    lambda **kw: cgd.SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05, **kw),
    lambda **kw: cgd.SGDClassifier(loss="log_loss", multiclass="multinomial",
                                   learning_rate="constant", eta0=0.05, **kw),
    lambda **kw: cgd.SGDClassifier(loss="hinge", solver="adam", learning_rate="constant",
                                   eta0=0.01, **kw),
]


def _target(i, y):
    if i == 0:
        return y
    if i == 1:
        return (y > 0).astype(int)
    return np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("i", range(len(ESTIMATORS)))
def test_n_jobs_gives_bit_identical_weights(i, dtype):
    X, y = _data(dtype)
    yt = _target(i, y)
    fits = [ESTIMATORS[i](batch_size=256, n_jobs=j, max_iter=4, tol=None, random_state=0,
                          penalty="elasticnet").fit(X, yt) for j in (1, 2, 3)]
    for f in fits[1:]:
        assert np.array_equal(f.coef_, fits[0].coef_)
        assert np.array_equal(f.intercept_, fits[0].intercept_)
        assert f.loss_curve_ == fits[0].loss_curve_


@pytest.mark.skipif(not _openmp_helpers.openmp_enabled(), reason="serial build: one thread only")
def test_omp_num_threads_in_subprocess_gives_same_weights(tmp_path):
    X, y = _data(np.float64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    script = textwrap.dedent(f"""
        import numpy as np, cgd, cgd.linear_model
        cgd.linear_model.PARALLEL_MIN_WORK = 0
        from cgd._threads import effective_n_threads
        assert effective_n_threads(None) == 3, effective_n_threads(None)
        X = np.load({str(tmp_path / 'X.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})
        est = cgd.SGDRegressor(batch_size=256, max_iter=4, tol=None, random_state=0,
                               learning_rate="constant", eta0=0.01).fit(X, y)
        np.save({str(tmp_path / 'coef3.npy')!r}, est.coef_)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    ref = cgd.SGDRegressor(batch_size=256, max_iter=4, tol=None, random_state=0, n_jobs=1,
                           learning_rate="constant", eta0=0.01).fit(X, y)
    assert np.array_equal(np.load(tmp_path / "coef3.npy"), ref.coef_)


def test_n_jobs_identical_at_default_parallel_threshold():
    """A batch large enough to be spread over threads with the shipped threshold."""
    X, y = _data(np.float64, n=6000, d=_SAVED_MIN_WORK // 2048 + 1)
    assert 2048 * X.shape[1] >= _SAVED_MIN_WORK
    saved, linear_model.PARALLEL_MIN_WORK = linear_model.PARALLEL_MIN_WORK, _SAVED_MIN_WORK
    try:
        fits = [cgd.SGDRegressor(batch_size=2048, n_jobs=j, max_iter=3, tol=None, solver="adam",
                                 learning_rate="constant", random_state=0).fit(X, y)
                for j in (1, 2)]
    finally:
        linear_model.PARALLEL_MIN_WORK = saved
    assert np.array_equal(fits[0].coef_, fits[1].coef_)


def test_effective_n_threads():
    assert effective_n_threads(1) == 1
    assert effective_n_threads(5) == (5 if _openmp_helpers.openmp_enabled() else 1)
    assert effective_n_threads(None) >= 1
    assert effective_n_threads(-1) == effective_n_threads(None)
    with pytest.raises(ValueError, match="n_jobs"):
        effective_n_threads(0)


def test_n_jobs_zero_is_rejected_before_training():
    X, y = _data(np.float64, n=50)
    with pytest.raises(ValueError, match="n_jobs"):
        cgd.SGDRegressor(n_jobs=0).fit(X, y)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 300), d=st.integers(1, 17), batch_size=st.integers(1, 400),
       multinomial=st.booleans(), solver=st.sampled_from(["sgd", "adam"]))
def test_thread_independence_for_any_shape(n, d, batch_size, multinomial, solver):
    """Chunk boundaries depend on the batch size only: any shape, any thread count."""
    rng = np.random.default_rng(n * 1000 + d)
    X = rng.standard_normal((n, d))
    if multinomial:
        y = np.arange(n) % 3
        make = lambda j: cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", n_jobs=j,
                                           batch_size=batch_size, solver=solver, max_iter=2,
                                           tol=None, learning_rate="constant", random_state=0)
    else:
        y = rng.standard_normal(n)
        make = lambda j: cgd.SGDRegressor(n_jobs=j, batch_size=batch_size, solver=solver,
                                          max_iter=2, tol=None, learning_rate="constant",
                                          random_state=0)
    a, b = make(1).fit(X, y), make(2).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
