"""cgd.MLPRegressor / cgd.MLPClassifier: arithmetic, threads, dtypes and training control.

1. One full-batch ``sgd`` step from given weights equals a NumPy back-propagation
   written here, for every hidden activation x output (regression, binary, multiclass,
   multilabel, Poisson), to 1e-10; the lbfgs objective's gradient equals central finite
   differences for every activation x output with 1, 2 and 3 hidden layers and L2.
2. ``n_jobs`` 1, 2 and 3 give bit-identical ``coefs_`` (BLAS included: every GEMM
   runs single-threaded on fixed row blocks) for sgd, adam, adagrad and lbfgs.
3. float32 input keeps float32 parameters and predictions; results follow float64.
4. 100 ``partial_fit`` calls equal ``fit(max_iter=100, shuffle=False)``; warm_start;
   early stopping restores the best weights; stopping rule, verbose, warnings.
5. Bad input and divergence for the MLPs: bad input, divergence naming the epoch with nothing
   lost, Ctrl-C within a second, pickling.
"""

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import cgd
from _helpers import (N_JOBS_CASES, assert_n_jobs_bit_identical, central_differences,
                      requires_openmp)
from cgd import _mlp
from cgd._compat import InvalidParameterError

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
F = {"identity": lambda h: h, "logistic": expit, "tanh": np.tanh,
     "relu": lambda h: np.maximum(h, 0)}
DF = {"identity": lambda a: np.ones_like(a), "logistic": lambda a: a * (1 - a),
      "tanh": lambda a: 1 - a ** 2, "relu": lambda a: (a > 0).astype(a.dtype)}
TASKS = ["regression", "binary", "multiclass", "multilabel", "poisson"]


def _task_data(task, n=60, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    z = X @ rng.standard_normal((d, 3))
    if task == "regression":
        y = z[:, :2] + 0.1 * rng.standard_normal((n, 2))
    elif task == "poisson":
        y = rng.poisson(np.exp(0.3 * z[:, 0]))
    elif task == "binary":
        y = (z[:, 0] > 0).astype(int)
    elif task == "multiclass":
        y = np.argmax(z, axis=1)
    else:
        y = (z > 0).astype(int)
    return X, y


def _make(task, **kw):
    if task in ("regression", "poisson"):
        return cgd.MLPRegressor(loss="poisson" if task == "poisson" else "squared_error", **kw)
    return cgd.MLPClassifier(**kw)


def _targets(task, y):
    """The output-layer targets of the NumPy reference."""
    if task == "multiclass":
        return np.eye(3)[y]
    return np.asarray(y, dtype=float).reshape(len(y), -1)


def _numpy_gradient(X, Y, sw, coefs, intercepts, act, task):
    """The delta rule written out: forward, delta = y_hat - y, backwards."""
    A = [X]
    for l, (W, b) in enumerate(zip(coefs, intercepts)):
        h = A[-1] @ W + b
        if l < len(coefs) - 1:
            A.append(F[act](h))
        else:
            A.append({"regression": h, "poisson": np.exp(np.minimum(h, 50)),
                      "multiclass": softmax(h, axis=1)}.get(task, expit(h)))
    delta = sw[:, None] * (A[-1] - Y)
    gW, gb = [None] * len(coefs), [None] * len(coefs)
    for l in range(len(coefs) - 1, -1, -1):
        gW[l], gb[l] = A[l].T @ delta, delta.sum(axis=0)
        if l > 0:
            delta = (delta @ coefs[l].T) * DF[act](A[l])
    return gW, gb


# ------------------------------------------------------------- 1. arithmetic
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_one_full_batch_sgd_step_equals_numpy_backprop(task, act):
    X, y = _task_data(task)
    sw = np.random.default_rng(1).uniform(0.5, 1.5, X.shape[0])
    lr, alpha = 0.05, 0.3
    est = _make(task, hidden_layer_sizes=(5, 3), activation=act, solver="sgd", momentum=0.0,
                learning_rate="constant", learning_rate_init=lr, alpha=alpha,
                batch_size=X.shape[0], shuffle=False, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y, sample_weight=sw)
        # "given weights": set by hand, then one warm-started epoch from them
        rng = np.random.default_rng(2)
        est.coefs_ = [rng.uniform(-0.5, 0.5, c.shape) for c in est.coefs_]
        est.intercepts_ = [rng.uniform(-0.5, 0.5, b.shape) for b in est.intercepts_]
        W0 = [c.copy() for c in est.coefs_]
        b0 = [b.copy() for b in est.intercepts_]
        est.set_params(warm_start=True).fit(X, y, sample_weight=sw)
    gW, gb = _numpy_gradient(X, _targets(task, y), sw, W0, b0, act, task)
    S = sw.sum()
    for l in range(len(W0)):
        # w1 = w0 - eta * (sum_i s_i grad_i + alpha W) / sum_i s_i (scikit-learn's MLP)
        np.testing.assert_allclose(est.coefs_[l], W0[l] - lr * (gW[l] + alpha * W0[l]) / S,
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(est.intercepts_[l], b0[l] - lr * gb[l] / S,
                                   rtol=0, atol=1e-10)
    assert est.t_ == 2 * X.shape[0] and est.n_iter_ == 1


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("hidden", [(4,), (4, 3), (4, 3, 3)])
def test_objective_gradient_equals_finite_differences(task, act, hidden):
    """The native loss-and-gradient lbfgs minimises, with L2, in float64 (eps=1e-5)."""
    X, y = _task_data(task, n=30, seed=3)
    est = _make(task, hidden_layer_sizes=hidden, activation=act, solver="lbfgs", max_iter=1,
                alpha=0.5, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    Y = est._binarize(y, X.dtype) if task in ("binary", "multiclass", "multilabel") \
        else np.ascontiguousarray(np.reshape(y, (len(y), -1)), dtype=float)
    sw = np.random.default_rng(4).uniform(0.5, 1.5, X.shape[0])
    units = est._layer_units()
    sizes = np.array(units, dtype=np.intp)
    rows = np.arange(X.shape[0], dtype=np.intp)
    cfg = est._kernel_config(1, X.shape[0])
    # shift pre-activations away from relu's kink for a meaningful difference quotient
    params = est._pack(np.float64) + 0.05

    def objective(p):
        grad = np.empty(p.size)
        _, loss, _ = _mlp.mlp_objective(X.ravel(), None, None, X.shape[1], Y, sw, rows, sizes, p,
                                        grad, cfg)
        return loss, grad

    _, grad = objective(params)
    fd = central_differences(lambda p: objective(p)[0], params, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------- 2. threads
def _thread_data(n=700, d=60, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.argmax(X @ rng.standard_normal((d, 4)), axis=1)
    return X, y


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", N_JOBS_CASES)
def test_n_jobs_gives_bit_identical_weights(dtype, kw):
    """Blocks of 64 rows and parameter segments large enough to run in parallel
    (hidden (300,) gives > 32768 parameters)."""
    X, y = _thread_data()
    assert_n_jobs_bit_identical(
        lambda n_jobs: cgd.MLPClassifier(hidden_layer_sizes=(300,), random_state=0,
                                         n_jobs=n_jobs, **{"max_iter": 4, **kw}),
        X.astype(dtype), y, dtype)


# ------------------------------------------------------------- 3. dtypes
@pytest.mark.parametrize("task", ["regression", "multiclass", "binary"])
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_float32_end_to_end_follows_float64(task, solver):
    X, y = _task_data(task, n=200, d=6, seed=6)
    kw = dict(hidden_layer_sizes=(16,), activation="tanh", solver=solver, max_iter=20,
              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        e64 = _make(task, **kw).fit(X, y)
        e32 = _make(task, **kw).fit(X.astype(np.float32), y)
    for a32, a64 in zip(e32.coefs_ + e32.intercepts_, e64.coefs_ + e64.intercepts_):
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-3, atol=1e-3)
    X32 = X.astype(np.float32)
    if task == "regression":
        p32, p64 = e32.predict(X32), e64.predict(X)
    else:
        p32, p64 = e32.predict_proba(X32), e64.predict_proba(X)
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    np.testing.assert_allclose(p32, p64, rtol=1e-3, atol=1e-3)
    assert isinstance(e32.loss_, float)


# ------------------------------------------------------------- 4. training control
@pytest.mark.parametrize("task, kw", [
    ("multiclass", dict(solver="adam")),
    ("regression", dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.05)),
    ("binary", dict(solver="sgd", learning_rate="adaptive", tol=0.5, n_iter_no_change=2)),
    ("multilabel", dict(solver="adagrad", learning_rate_init=0.05)),
])
def test_100_partial_fits_equal_fit_of_100_epochs(task, kw):
    X, y = _task_data(task, n=90, seed=7)
    base = dict(hidden_layer_sizes=(8,), batch_size=32, random_state=0, shuffle=False)
    base.update(kw)
    base.setdefault("tol", 0.0)
    base.setdefault("n_iter_no_change", 1000)
    fitted = _make(task, max_iter=100, **base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted.fit(X, y)
    stream = _make(task, **base)
    extra = {"classes": np.unique(y)} if task in ("binary", "multiclass") else {}
    for _ in range(fitted.n_iter_):
        stream.partial_fit(X, y, **extra)
    assert fitted.n_iter_ == 100 or kw.get("learning_rate") == "adaptive"
    for a, b in zip(stream.coefs_ + stream.intercepts_, fitted.coefs_ + fitted.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert stream.t_ == fitted.t_
    assert stream.loss_curve_ == fitted.loss_curve_


def test_warm_start_continues_from_previous_weights():
    X, y = _task_data("multiclass", n=120, seed=8)
    kw = dict(hidden_layer_sizes=(10,), solver="sgd", momentum=0.0, max_iter=3, tol=0.0,
              n_iter_no_change=100, random_state=0, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = cgd.MLPClassifier(**kw).fit(X, y)
        a.set_params(warm_start=True).fit(X, y)
        b = cgd.MLPClassifier(**{**kw, "max_iter": 6}).fit(X, y)
    # plain SGD has no optimizer state, so 3 + 3 warm-started epochs = 6 epochs
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert a.t_ == b.t_ and a.loss_curve_ == b.loss_curve_ and a.n_iter_ == 3


def test_early_stopping_restores_best_weights_and_never_trains_on_validation_rows():
    X, y = _task_data("regression", n=300, seed=9)
    y = y[:, 0]
    kw = dict(hidden_layer_sizes=(30,), solver="adam", learning_rate_init=0.05,
              early_stopping=True, n_iter_no_change=3, tol=0.0, max_iter=200, random_state=0)
    est = cgd.MLPRegressor(**kw).fit(X, y)
    assert est.n_iter_ < 200 and est.best_loss_ is None
    best = int(np.argmax(est.validation_scores_))
    assert est.best_validation_score_ == est.validation_scores_[best]
    # Refitting for exactly best + 1 epochs gives the published (best) weights.
    ref = cgd.MLPRegressor(**{**kw, "early_stopping": True, "max_iter": best + 1,
                              "n_iter_no_change": 10**6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(X, y)
    for a, b in zip(est.coefs_, ref.coefs_):
        np.testing.assert_array_equal(a, b)
    # Changing the validation rows' targets does not change training before the scores.
    from sklearn.model_selection import train_test_split
    _, idx_val = train_test_split(np.arange(300), random_state=_after_init_rng(kw, X, y),
                                  test_size=0.1)
    y2 = y.copy()
    y2[idx_val] += 100.0
    est2 = cgd.MLPRegressor(**{**kw, "max_iter": 2, "n_iter_no_change": 10**6})
    est1 = cgd.MLPRegressor(**{**kw, "max_iter": 2, "n_iter_no_change": 10**6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est1.fit(X, y)
        est2.fit(X, y2)
    assert est1.loss_curve_ == est2.loss_curve_
    assert est1.validation_scores_ != est2.validation_scores_


def _after_init_rng(kw, X, y):
    """The random stream as the split sees it: after the initial weights are drawn."""
    rng = np.random.RandomState(kw["random_state"])
    units = [X.shape[1], *kw["hidden_layer_sizes"], 1]
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        rng.uniform(size=(fan_in, fan_out))
        rng.uniform(size=fan_out)
    return rng


def test_stopping_rule_verbose_and_convergence_warning(capsys):
    X, y = _task_data("binary", n=100, seed=10)
    est = cgd.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, tol=0.0,
                            n_iter_no_change=100, verbose=True, random_state=0)
    with pytest.warns(ConvergenceWarning, match=r"Stochastic Optimizer: Maximum iterations "
                      r"\(3\) reached and the optimization hasn't converged yet\."):
        est.fit(X, y)
    out = capsys.readouterr().out
    for i, loss in enumerate(est.loss_curve_, start=1):
        assert f"Iteration {i}, loss = {loss:.8f}" in out
    # A huge tol: after the first epoch (which improves on an infinite best loss) no
    # epoch improves by it, so training stops once n_iter_no_change + 1 epochs in a row
    # have not: after n_iter_no_change + 2 epochs, with scikit-learn's message.
    est = cgd.MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, tol=10.0,
                            n_iter_no_change=2, verbose=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ == 4
    assert ("Training loss did not improve more than tol=10.000000 for 2 consecutive "
            "epochs. Stopping.") in capsys.readouterr().out


def test_adaptive_learning_rate_is_divided_by_five():
    X, y = _task_data("binary", n=100, seed=10)
    est = cgd.MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", learning_rate="adaptive",
                            learning_rate_init=0.1, max_iter=9, tol=10.0, n_iter_no_change=2,
                            random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    # Epoch 1 improves on an infinite best loss; epochs 4 and 7 are each the third
    # epoch in a row without improvement (> n_iter_no_change): each cuts the rate.
    assert est._optimizer_state["lr"] == pytest.approx(0.1 / 25)
    assert est.n_iter_ == 9


# ------------------------------------------------ 5. bad input and divergence
BAD = {
    "X_nan": (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 3, np.nan, X), y),
              r"NaN"),
    "X_inf": (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y),
              r"infinity"),
    "y_nan": (lambda X, y: (X, np.where(np.arange(y.size) == 2, np.nan, y)), r"NaN"),
    "y_short": (lambda X, y: (X, y[:-1]), r"inconsistent numbers of samples"),
    "empty": (lambda X, y: (X[:0], y[:0]), r"0 sample"),
    "X_3d": (lambda X, y: (X[:, :, None], y), r"dim(ension)? 3|3.?D|3 dim"),
    "X_strings": (lambda X, y: (np.full(X.shape, "abc"), y), r"string"),
}


def _weights(est):
    return [a.copy() for a in est.coefs_ + est.intercepts_]


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_bad_data_raises_before_training_and_loses_nothing(task, case):
    X, y = _task_data(task)
    y = y[:, 0] if task == "regression" else y
    make_bad, match = BAD[case]
    Xb, yb = make_bad(X, y)
    with pytest.raises(ValueError, match=match):
        _make(task, max_iter=2).fit(Xb, yb)
    est = _make(task, hidden_layer_sizes=(4,), max_iter=2, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    before, pred = _weights(est), est.predict(X)
    for call in (est.fit, est.partial_fit):
        with pytest.raises(ValueError, match=match):
            call(Xb, yb)
        for a, b in zip(_weights(est), before):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(est.predict(X), pred)


def test_other_bad_input():
    X, y = _task_data("multiclass")
    with pytest.raises(ValueError, match="negative"):
        cgd.MLPRegressor(loss="poisson").fit(X, -np.ones(len(y)))
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        cgd.MLPClassifier(hidden_layer_sizes=(3, 0)).fit(X, y)
    with pytest.raises(InvalidParameterError):
        cgd.MLPClassifier(solver="newton").fit(X, y)
    with pytest.raises(InvalidParameterError):
        cgd.MLPRegressor(n_jobs=1.5).fit(X, y)
    with pytest.raises(ValueError, match="validation set is too small"):
        cgd.MLPClassifier(early_stopping=True, validation_fraction=0.01).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        cgd.MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="not supported for partial_fit"):
        cgd.MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(AttributeError, match="partial_fit"):
        cgd.MLPClassifier(solver="lbfgs").partial_fit
    with pytest.raises(NotFittedError):
        cgd.MLPClassifier().predict(X)
    est = cgd.MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    with pytest.raises(ValueError, match=r"4 features.*expecting 4|features"):
        est.predict(X[:, :3])
    est.set_params(hidden_layer_sizes=(5,))
    with pytest.raises(ValueError, match="layer sizes"):
        est.fit(X, y)
    with pytest.raises(ValueError, match="same classes"):
        est.set_params(hidden_layer_sizes=(3,)).fit(X, np.where(y == 2, 1, y))


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_caller_arrays_are_not_modified(task):
    X, y = _task_data(task)
    X = np.asfortranarray(X)
    X.flags.writeable = False
    sw = np.ones(X.shape[0])
    copies = [a.copy() for a in (X, y, sw)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _make(task, max_iter=2, early_stopping=True).fit(X, y, sample_weight=sw)
    for a, c in zip((X, y, sw), copies):
        assert a.tobytes() == c.tobytes()


def _diverging(task):
    X, y = _task_data(task, n=80, seed=11)
    return X, (y * 1e30 if task == "regression" else y)


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_divergence_names_the_epoch_and_keeps_finite_weights(how):
    X, y = _task_data("regression", n=80, seed=11)
    est = cgd.MLPRegressor(hidden_layer_sizes=(6,), solver="sgd", max_iter=3, random_state=0,
                           warm_start=how == "warm_start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    before, n_curve = _weights(est), len(est.loss_curve_)
    est.set_params(learning_rate_init=1e6)
    # (y_hat - y)^2 overflows in the first batch of the next epoch
    with pytest.raises(ValueError, match=rf"diverged at epoch {n_curve + 1}\b.*learning_rate_init"):
        if how == "warm_start":
            est.fit(X, y * 1e200)
        else:
            est.partial_fit(X, y * 1e200)
    for a, b in zip(_weights(est), before):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    assert len(est.loss_curve_) == n_curve


def test_divergence_mid_fit_keeps_last_finite_epoch():
    """An epoch that overflows after earlier epochs completed: the error names it, the
    estimator holds the last finite epoch (finite, usable)."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((64, 3)).astype(np.float32)
    y = (X @ np.ones(3)).astype(np.float32) * 1e3
    est = cgd.MLPRegressor(hidden_layer_sizes=(8,), activation="identity", solver="sgd",
                           momentum=0.0, learning_rate_init=0.05, batch_size=64,
                           max_iter=500, tol=0.0, n_iter_no_change=1000, random_state=0)
    with pytest.raises(ValueError, match=r"diverged at epoch (\d+)") as info:
        est.fit(X, y)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert est.n_iter_ >= 1 and len(est.loss_curve_) == est.n_iter_
    # finite weights (their float32 predictions may well overflow: it was diverging)
    assert all(np.isfinite(a).all() for a in _weights(est))
    assert epoch == est.n_iter_ + 1


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import numpy as np
    import cgd

    solver = sys.argv[1]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 100))
    y = np.argmax(X @ rng.standard_normal((100, 5)), axis=1)
    est = cgd.MLPClassifier(hidden_layer_sizes=(200, 100), solver=solver, max_iter=10**6,
                            max_fun=10**9, tol=0.0, n_iter_no_change=10**9,
                            random_state=0, n_jobs=2)

    def watch():
        # The kernels release the GIL, so this sees each committed epoch (or lbfgs
        # iteration): the parent signals only once there is one to keep, however
        # loaded the machine is.
        while est.__dict__.get("n_iter_", 0) < 1:
            time.sleep(0.01)
        print("epoch", flush=True)

    threading.Thread(target=watch, daemon=True).start()
    print("started", flush=True)
    try:
        est.fit(X, y)
        sys.exit(3)
    except KeyboardInterrupt:
        # The signal may land inside a verbose print, after its text and before its
        # newline: start a line of our own.
        print("\\ninterrupted", flush=True)
    ok = hasattr(est, "coefs_") and all(np.isfinite(c).all() for c in est.coefs_)
    ok = ok and np.isfinite(est.predict_proba(X[:5])).all()
    print("RESULT", ok, est.n_iter_, flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_ctrl_c_stops_within_a_second(solver):
    """SIGINT during a long fit: KeyboardInterrupt within 1 s, and the estimator keeps
    the finite weights of its last completed epoch / iteration."""
    import queue
    import threading

    from test_input_validation import _expect, _reader
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-P", "-c", CHILD, solver], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    q = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    try:
        _expect(q, "started", timeout=60)
        _expect(q, "epoch", timeout=120)
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        t_int, _ = _expect(q, "interrupted", timeout=15)
        assert t_int - t_kill < 1.0, f"KeyboardInterrupt {t_int - t_kill:.2f} s after SIGINT"
        _, line = _expect(q, "RESULT", timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert line.split()[1] == "True" and int(line.split()[2]) >= 1


@pytest.mark.parametrize("task, kw", [
    ("multiclass", dict(solver="adam")),
    ("multilabel", dict(solver="sgd")),
    ("regression", dict(solver="adagrad", learning_rate_init=0.01)),
    ("binary", dict(solver="lbfgs")),
])
def test_pickle_round_trip_and_plain_state(task, kw):
    from test_input_validation import _plain
    X, y = _task_data(task)
    est = _make(task, hidden_layer_sizes=(6,), max_iter=5, random_state=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    for name, value in vars(est).items():
        _plain(value, name)
    est2 = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est2.predict(X), est.predict(X))
    if kw["solver"] != "lbfgs":
        est.partial_fit(X, y)
        est2.partial_fit(X, y)
        for a, b in zip(_weights(est), _weights(est2)):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- review regressions
def test_failed_call_truncates_curves_grown_in_place():
    """The curves grow in place; a call that fails before committing an epoch must cut
    them back to their length before the call."""
    from cgd._fit_loop import TransactionMixin

    class Toy(TransactionMixin):
        pass

    toy = Toy()
    toy.loss_curve_ = [1.0, 2.0]

    def train():
        toy.loss_curve_.append(3.0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        toy._transaction(train)
    assert toy.loss_curve_ == [1.0, 2.0]


def test_concurrent_predictions_restore_blas_threads():
    import threading

    from threadpoolctl import threadpool_info
    X, y = _task_data("multiclass", n=300)
    est = cgd.MLPClassifier(hidden_layer_sizes=(20,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    before = sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                    if i["user_api"] == "blas")
    ref = est.predict_proba(X)

    def work():
        for _ in range(100):
            np.testing.assert_array_equal(est.predict_proba(X), ref)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                   if i["user_api"] == "blas")
    assert after == before


def test_early_stopping_keeps_best_weights_when_training_diverges():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((200, 3))
    y = X @ np.ones(3) * 1e3
    est = cgd.MLPRegressor(hidden_layer_sizes=(8,), activation="identity", solver="sgd",
                           momentum=0.0, learning_rate_init=0.05, batch_size=200,
                           max_iter=500, tol=0.0, n_iter_no_change=1000, random_state=0,
                           early_stopping=True)
    # as scikit-learn's MLPs: no error, a warning, the best validated weights
    with pytest.warns(ConvergenceWarning, match=r"diverged at epoch \d+.*best validated"):
        est.fit(X, y)
    assert est.n_iter_ >= 1 and len(est.validation_scores_) == est.n_iter_
    best = est._unpack(est._best_params, est._layer_units())
    for a, b in zip(est.coefs_ + est.intercepts_, best[0] + best[1]):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(est.predict(X)).all()


def test_negative_sample_weights_are_refused():
    X, y = _task_data("binary")
    with pytest.raises(ValueError, match="[Nn]egative"):
        cgd.MLPClassifier().fit(X, y, sample_weight=-np.ones(len(y)))


def test_plain_sgd_weight_decay_is_not_clamped_as_in_scikit_learn():
    """lr * alpha / batch > 1: scikit-learn's MLP flips the weights' signs; so does cgd."""
    from sklearn.neural_network import MLPRegressor
    X, y = _task_data("regression", n=40)
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, alpha=300.0,
              learning_rate_init=0.3, batch_size=40, shuffle=False, max_iter=2,
              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = cgd.MLPRegressor(**kw).fit(X, y)
        theirs = MLPRegressor(**kw).fit(X, y)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


MLP_BAD_PARAMS = [
    dict(hidden_layer_sizes=-1), dict(activation="softmax"), dict(solver="newton"),
    dict(alpha=-1.0), dict(batch_size=0), dict(batch_size="big"),
    dict(learning_rate="optimal"), dict(learning_rate_init=0.0), dict(power_t=-0.5),
    dict(max_iter=0), dict(shuffle="yes"), dict(random_state="seed"), dict(tol=-1.0),
    dict(verbose="loud"), dict(warm_start="yes"), dict(momentum=1.5),
    dict(nesterovs_momentum="yes"), dict(early_stopping="yes"), dict(validation_fraction=1.0),
    dict(beta_1=1.0), dict(beta_2=-0.1), dict(epsilon=0.0), dict(n_iter_no_change=0),
    dict(max_fun=0), dict(n_jobs=1.5),
]


@pytest.mark.parametrize("params", MLP_BAD_PARAMS + [dict(class_weight="uniform")],
                         ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_bad_parameter_values_raise_invalid_parameter_error(params):
    X, y = _task_data("multiclass")
    for cls in (cgd.MLPClassifier, cgd.MLPRegressor):
        if "class_weight" in params and cls is cgd.MLPRegressor:
            continue
        with pytest.raises(InvalidParameterError):
            cls(**params).fit(X, y)
    with pytest.raises(InvalidParameterError):
        cgd.MLPRegressor(loss="log_loss").fit(X, y)
