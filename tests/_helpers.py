"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

import os
import signal
import subprocess
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from cgd import _openmp_helpers

# Tests that compare fits on several thread counts prove nothing on a build without
# OpenMP (CGD_DISABLE_OPENMP=1, or a compiler without it): every n_jobs then runs the
# same single thread, so they are skipped there rather than passed trivially.
requires_openmp = pytest.mark.skipif(
    not _openmp_helpers.openmp_enabled(),
    reason="serial build (no OpenMP): every n_jobs runs on one thread, so thread-count "
           "independence is not exercised")

# The grid of the comparisons with scikit-learn's SGD estimators (dense and sparse X).
SGD_CLASSIFIER_LOSSES = (
    "hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron",
    "squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive",
)
SGD_REGRESSOR_LOSSES = ("squared_error", "huber", "epsilon_insensitive",
                        "squared_epsilon_insensitive")
SGD_LOSSES = {"SGDClassifier": SGD_CLASSIFIER_LOSSES, "SGDRegressor": SGD_REGRESSOR_LOSSES}
SGD_SCHEDULES = ("constant", "invscaling", "adaptive")
SGD_PENALTIES = (None, "l2", "l1", "elasticnet")


def central_differences(f, x, h):
    """The gradient of scalar f at x by central differences, one coordinate at a time."""
    fd = np.empty_like(x)
    for j in range(x.size):
        p, q = x.copy(), x.copy()
        p[j] += h
        q[j] -= h
        fd[j] = (f(p) - f(q)) / (2 * h)
    return fd


def run_subprocess(args, timeout, **kwargs):
    """Run ``args`` in a new session and return the CompletedProcess (text output).

    On timeout the whole process group is killed (a stuck child may have started
    threads or processes of its own) and the test fails with what it printed so far.
    """
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args} did not finish within {timeout} s; stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# Fits of cgd's SGD estimators beside scikit-learn's, shared by the dense and the sparse
# comparisons: same parameters (per-sample order, a fixed eta0, 30 epochs unless a test
# says otherwise); a pair agrees when n_iter_ and t_ are equal and every weight is
# within SGD_RTOL of the largest.
SGD_RTOL = 1e-10


def sgd_fit_both(name, X, y, sample_weight=None, **params):
    """(cgd's fit, scikit-learn's fit) of estimator ``name`` on the same data."""
    import warnings

    from sklearn import linear_model as sk_linear
    from sklearn.exceptions import ConvergenceWarning

    import cgd

    params = {"shuffle": False, "eta0": 0.01, "max_iter": 30, **params}
    fits = []
    for module in (cgd, sk_linear):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(getattr(module, name)(**params).fit(X, y, sample_weight=sample_weight))
    return fits


def sgd_mismatch(name, X, y, sample_weight=None, **params):
    """None if cgd and scikit-learn agree on this fit, else a line saying how not."""
    ours, ref = sgd_fit_both(name, X, y, sample_weight, **params)
    w_ours = np.append(np.ravel(ours.coef_), ours.intercept_)
    w_ref = np.append(np.ravel(ref.coef_), ref.intercept_)
    scale = max(np.max(np.abs(w_ref)), np.finfo(float).tiny)
    err = np.max(np.abs(w_ours - w_ref)) / scale
    if ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_ and err <= SGD_RTOL:
        return None
    return (f"{name}({params}): n_iter_ {ours.n_iter_} vs {ref.n_iter_}, t_ {ours.t_} vs "
            f"{ref.t_}, max |coef diff| / max |coef| = {err:.3g}")


def assert_sgd_fits_match(cases):
    """cases: iterable of (name, X, y, sample_weight, params); reports every mismatch."""
    failures = [f for name, X, y, sw, params in cases
                if (f := sgd_mismatch(name, X, y, sample_weight=sw, **params)) is not None]
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures)


# Every solver, batches of one and of several 64-row blocks, early stopping's validation
# split; lbfgs sets its own max_iter. Used by the dense and the CSR MLP tests.
N_JOBS_CASES = [
    dict(solver="adam", batch_size=256),
    dict(solver="sgd", batch_size=700, learning_rate="invscaling"),
    dict(solver="adagrad", batch_size=100, learning_rate_init=0.01),
    dict(solver="lbfgs", max_iter=15),
    dict(solver="adam", batch_size=64, early_stopping=True),
]


def assert_n_jobs_bit_identical(make, X, y, dtype):
    """Fit ``make(n_jobs)`` for n_jobs 1, 2 and 3: weights (of ``dtype``), loss and
    probabilities must be the same bits."""
    fits = []
    for n_jobs in (1, 2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(make(n_jobs).fit(X, y))
    for est in fits[1:]:
        for a, b in zip(est.coefs_ + est.intercepts_, fits[0].coefs_ + fits[0].intercepts_):
            assert a.dtype == dtype and np.array_equal(a, b)
        assert est.loss_ == fits[0].loss_
        np.testing.assert_array_equal(est.predict_proba(X), fits[0].predict_proba(X))
