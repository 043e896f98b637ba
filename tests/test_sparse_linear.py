"""SGDRegressor and SGDClassifier on scipy.sparse input.

1. Per-sample SGD on CSR equals scikit-learn's sparse SGD (``shuffle=False``): same
   ``n_iter_``, ``t_`` and coefficients to 1e-10, for every loss, penalty, schedule,
   averaging, weighting, one-vs-rest; unsorted indices and duplicate entries too.
2. Formats, index and value types: CSC / COO / LIL / DOK / csr_array give the CSR
   result; int32 and int64 indices; float32 kept; the caller's matrix untouched; a
   matrix of 2**22 columns is never densified.
3. Mini-batches: plain SGD on CSR equals the dense fit of the same data without an
   intercept; momentum / Adam / Adagrad follow the documented lazy rule (NumPy
   reference); lazy L1 and the averaged iterates too; bits independent of n_jobs.
4. Early stopping, partial_fit over CSR blocks, pickling, prediction methods.
"""

import functools
import itertools
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn.linear_model as sk_linear
from sklearn.datasets import (load_breast_cancer, load_diabetes, load_digits, load_iris,
                              load_wine)
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

import cgd
from _helpers import assert_sgd_fits_match as _assert_all_match
from _helpers import requires_openmp
from _helpers import (SGD_CLASSIFIER_LOSSES, SGD_LOSSES, SGD_PENALTIES,
                      SGD_REGRESSOR_LOSSES, SGD_RTOL, SGD_SCHEDULES)
from _helpers import sgd_fit_both as _fit_both
from cgd._fit_loop import validation_split

CLASSIFIER_LOSSES, REGRESSOR_LOSSES = SGD_CLASSIFIER_LOSSES, SGD_REGRESSOR_LOSSES
LOSSES, SCHEDULES, PENALTIES, RTOL = SGD_LOSSES, SGD_SCHEDULES, SGD_PENALTIES, SGD_RTOL
SPARSE_INTERCEPT_DECAY = 0.01  # scikit-learn's, which cgd follows on sparse X

# Short fits (max_iter of a few epochs) are the point of several comparisons here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _with_zeros(X, seed, fraction=0.5):
    """X with about `fraction` of its entries set to zero, as CSR."""
    X = X.copy()
    X[np.random.RandomState(seed).rand(*X.shape) < fraction] = 0.0
    return sp.csr_matrix(X)


@functools.cache
def _data(name):
    if name == "regression":
        X, y = load_diabetes(return_X_y=True)
        return _with_zeros(StandardScaler().fit_transform(X), 0), (y - y.mean()) / y.std()
    if name == "binary":
        X, y = load_breast_cancer(return_X_y=True)
        return _with_zeros(StandardScaler().fit_transform(X), 1), y
    if name == "iris":
        X, y = load_iris(return_X_y=True)
        return _with_zeros(StandardScaler().fit_transform(X), 2, fraction=0.3), y
    # digits: naturally sparse (half its pixels are 0); 500 rows keep the grid fast
    X, y = load_digits(return_X_y=True)
    return sp.csr_matrix(X[:500] / 16.0), y[:500]


def _default_data(name):
    return _data("binary" if name == "SGDClassifier" else "regression")


# ------------------------------------------------------------ 1. scikit-learn's sparse SGD
@pytest.mark.parametrize("name", ["SGDClassifier", "SGDRegressor"])
@pytest.mark.parametrize("learning_rate", SCHEDULES)
def test_matches_sklearn_sparse_sgd(name, learning_rate):
    X, y = _default_data(name)
    _assert_all_match((name, X, y, None, dict(loss=loss, learning_rate=learning_rate,
                                               penalty=pen))
                      for loss in LOSSES[name] for pen in PENALTIES)


# As in the dense comparison: 'optimal' amplifies last-bit differences of the smooth
# losses at the default alpha, so those are checked at a larger alpha.
_OPTIMAL = ([("SGDClassifier", loss, 1e-4) for loss in ("hinge", "perceptron")]
            + [("SGDRegressor", "epsilon_insensitive", 1e-4),
               ("SGDClassifier", "log_loss", 0.01), ("SGDClassifier", "modified_huber", 0.1),
               ("SGDClassifier", "squared_hinge", 0.1), ("SGDRegressor", "squared_error", 0.1),
               ("SGDRegressor", "huber", 0.1)])


@pytest.mark.parametrize("name, loss, alpha", _OPTIMAL)
def test_matches_sklearn_sparse_sgd_optimal_schedule(name, loss, alpha):
    X, y = _default_data(name)
    _assert_all_match((name, X, y, None, dict(loss=loss, learning_rate="optimal",
                                               alpha=alpha, penalty=pen))
                      for pen in PENALTIES)


# average with penalty None / "l2" only: scikit-learn's averaged weights do not see its
# L1 truncations (see test_sklearn_compat.py); cgd averages the truncated iterates.
@pytest.mark.parametrize("name", ["SGDClassifier", "SGDRegressor"])
@pytest.mark.parametrize("average", [True, 7])
def test_matches_sklearn_sparse_sgd_average(name, average):
    X, y = _default_data(name)
    _assert_all_match((name, X, y, None, dict(loss=loss, learning_rate=lr, penalty=pen,
                                               average=average))
                      for loss in LOSSES[name] for lr in SCHEDULES for pen in (None, "l2"))


@pytest.mark.parametrize("name", ["SGDClassifier", "SGDRegressor"])
def test_matches_sklearn_sparse_sgd_no_intercept(name):
    X, y = _default_data(name)
    _assert_all_match((name, X, y, None, dict(loss=loss, learning_rate=lr, penalty=pen,
                                               fit_intercept=False))
                      for loss in LOSSES[name] for lr in ("constant", "invscaling")
                      for pen in PENALTIES)


@pytest.mark.parametrize("dataset", ["iris", "digits"])
@pytest.mark.parametrize("learning_rate", SCHEDULES)
def test_matches_sklearn_sparse_sgd_one_vs_rest(dataset, learning_rate):
    X, y = _data(dataset)
    losses = CLASSIFIER_LOSSES if dataset == "iris" else ("hinge", "log_loss", "modified_huber")
    _assert_all_match(("SGDClassifier", X, y, None, dict(loss=loss, learning_rate=learning_rate,
                                                         penalty=pen))
                      for loss in losses for pen in PENALTIES)


# Several outputs run on a column-major copy of the coefficients; the scale and the
# averaging constants are folded back at the end of each epoch (and mid-epoch when the
# scale gets tiny: a large alpha at a constant rate gets there within an epoch).
@pytest.mark.parametrize("dataset", ["iris", "digits"])
def test_matches_sklearn_sparse_sgd_one_vs_rest_average_and_scale_fold(dataset):
    X, y = _data(dataset)
    # ('optimal' amplifies last-bit differences of the smooth losses at the default
    # alpha, as above: log-loss runs at a constant rate.)
    cases = [("SGDClassifier", X, y, None, dict(loss=loss, learning_rate=lr, penalty=pen,
                                                average=avg))
             for loss, lr in (("hinge", "optimal"), ("log_loss", "constant"))
             for pen in (None, "l2") for avg in (True, 7)]
    cases += [("SGDClassifier", X, y, None, dict(loss="hinge", learning_rate="constant",
                                                 eta0=0.5, alpha=0.1, penalty="l2",
                                                 max_iter=3))]
    _assert_all_match(cases)


@pytest.mark.parametrize("name, weighting", [("SGDClassifier", "sample_weight"),
                                             ("SGDClassifier", "class_weight"),
                                             ("SGDRegressor", "sample_weight")])
@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_matches_sklearn_sparse_sgd_weighted(name, weighting, learning_rate):
    X, y = _data("iris") if weighting == "class_weight" else _default_data(name)
    sw = (np.random.RandomState(0).uniform(0.2, 2.0, X.shape[0])
          if weighting == "sample_weight" else None)
    cw = {"class_weight": "balanced"} if weighting == "class_weight" else {}
    _assert_all_match((name, X, y, sw, dict(loss=loss, learning_rate=learning_rate,
                                             penalty=pen, **cw))
                      for loss in LOSSES[name] for pen in PENALTIES)


def _messy(X, seed=0):
    """The same matrix with shuffled column order within rows and half of each row's
    entries split into two duplicate entries."""
    rng = np.random.RandomState(seed)
    data, indices, indptr = [], [], [0]
    for i in range(X.shape[0]):
        a, b = X.indptr[i], X.indptr[i + 1]
        cols, vals = list(X.indices[a:b]), list(X.data[a:b])
        for e in range(len(cols) // 2):
            f = rng.uniform(0.2, 0.8)
            cols.append(cols[e])
            vals.append(vals[e] * (1 - f))
            vals[e] *= f
        p = rng.permutation(len(cols))
        indices += [cols[q] for q in p]
        data += [vals[q] for q in p]
        indptr.append(len(indices))
    M = sp.csr_matrix((np.array(data), np.array(indices, dtype=np.int32), np.array(indptr)),
                      shape=X.shape)
    assert not M.has_canonical_format
    return M


@pytest.mark.parametrize("dataset", ["regression", "binary", "iris"])
def test_unsorted_and_duplicate_entries_match_sklearn(dataset):
    X, y = _data(dataset)
    M = _messy(X)
    before = (M.data.copy(), M.indices.copy(), M.indptr.copy())
    name = "SGDRegressor" if dataset == "regression" else "SGDClassifier"
    _assert_all_match((name, M, y, None, dict(loss=loss, penalty=pen, average=avg,
                                               learning_rate="invscaling"))
                      for loss in LOSSES[name][:2] for pen in PENALTIES
                      for avg in (False, True) if not (avg and pen in ("l1", "elasticnet")))
    # The caller's matrix is left as it was (cgd reads it in place).
    for a, b in zip(before, (M.data, M.indices, M.indptr)):
        np.testing.assert_array_equal(a, b)
    assert not M.has_canonical_format


def test_unsorted_rows_are_read_in_place():
    # Rows with unsorted indices (as a sparse product leaves them) are trained on as
    # they are: no sorted copy of X, whose arrays would be the largest allocation.
    rng = np.random.RandomState(0)
    n, d, nnz = 20_000, 1_000, 20
    indices = np.concatenate([rng.choice(d, nnz, replace=False) for _ in range(n)])
    X = sp.csr_matrix((rng.rand(n * nnz), indices.astype(np.int32),
                       np.arange(0, n * nnz + 1, nnz)), shape=(n, d))
    assert not X.has_sorted_indices
    y = (X @ rng.randn(d) > 0).astype(int)
    x_bytes = X.data.nbytes + X.indices.nbytes
    for params in (dict(), dict(batch_size=16)):
        tracemalloc.start()
        try:
            est = cgd.SGDClassifier(max_iter=2, tol=None, random_state=0, **params).fit(X, y)
            est.predict(X)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.5 * x_bytes, (params, peak, x_bytes)
        assert not X.has_sorted_indices
        # and the fit is that of the sorted matrix, to rounding
        Xs = X.copy()
        Xs.sort_indices()
        ref = cgd.SGDClassifier(max_iter=2, tol=None, random_state=0, **params).fit(Xs, y)
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-9, atol=1e-12)


def test_loss_curve_is_the_objective_and_stopping_follows_sklearn():
    # Per-sample SGD on CSR records the true objective (as the dense fit of the same
    # data, where the trajectories agree) while its stopping rule reads scikit-learn's
    # sparse objective, so n_iter_ is scikit-learn's.
    X, y = _data("binary")
    kw = dict(fit_intercept=False, penalty="l2", alpha=0.01, shuffle=False,
              max_iter=8, tol=None, learning_rate="invscaling", eta0=0.01)
    sparse_fit = cgd.SGDClassifier(**kw).fit(X, y)
    dense_fit = cgd.SGDClassifier(**kw).fit(X.toarray(), y)
    np.testing.assert_allclose(sparse_fit.loss_curve_, dense_fit.loss_curve_, rtol=1e-10)
    ours, ref = _fit_both("SGDClassifier", X, y, loss="modified_huber", penalty="l1",
                          learning_rate="constant")
    assert ours.n_iter_ == ref.n_iter_


# ------------------------------------------------------------ 2. formats and types
def _as_int64(X):
    X = X.copy()
    X.indices = X.indices.astype(np.int64)
    X.indptr = X.indptr.astype(np.int64)
    return X


_FORMATS = {
    "csr_matrix int64": _as_int64,
    "csr_array": sp.csr_array,
    "csr_array int64": lambda X: sp.csr_array(_as_int64(X)),
    "csc": sp.csc_matrix,
    "coo": sp.coo_matrix,
    "lil": sp.lil_matrix,
    "dok": sp.dok_matrix,
}


@pytest.mark.parametrize("params", [
    dict(),
    dict(batch_size=16, solver="adam", learning_rate="constant", average=True,
         penalty="elasticnet"),
    dict(multiclass="multinomial", loss="log_loss", batch_size=8),
])
def test_every_format_and_index_type_gives_the_csr_result(params):
    X, y = _data("iris")
    assert X.indices.dtype == np.int32
    ref = cgd.SGDClassifier(random_state=0, max_iter=20, **params).fit(X, y)
    for fmt, convert in _FORMATS.items():
        M = convert(X)
        if "int64" in fmt:
            assert M.indices.dtype == np.int64
        est = cgd.SGDClassifier(random_state=0, max_iter=20, **params).fit(M, y)
        np.testing.assert_array_equal(est.coef_, ref.coef_, err_msg=fmt)
        np.testing.assert_array_equal(est.intercept_, ref.intercept_, err_msg=fmt)
        np.testing.assert_array_equal(est.decision_function(M), ref.decision_function(X))


def test_float32_csr_trains_in_float32():
    X, y = _data("iris")
    X32 = X.astype(np.float32)
    # alpha=1e-3: at the default 1e-4 the 'optimal' schedule's first steps (~alpha^-1/4)
    # amplify rounding chaotically (float32 and float64 fits then end 2e-4 to 2e-3 apart,
    # depending on the shuffle); here they stay within a few float32 ulps' worth.
    est = cgd.SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0, max_iter=20).fit(
        X32, y)
    ref = cgd.SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0, max_iter=20).fit(
        X, y)
    assert est.coef_.dtype == est.intercept_.dtype == np.float32
    for method in ("decision_function", "predict_proba"):
        assert getattr(est, method)(X32).dtype == np.float32
    # Same steps in float32 arithmetic: close to the float64 fit.
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-5 * np.abs(ref.coef_).max())
    reg = cgd.SGDRegressor(batch_size=8, solver="adagrad", random_state=0).fit(
        *_data("regression")[:1], _data("regression")[1])
    assert reg.coef_.dtype == np.float64


def test_nan_in_sparse_data_is_refused():
    X, y = _data("iris")
    X = X.copy()
    X.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cgd.SGDClassifier().fit(X, y)


def test_wide_csr_is_never_densified():
    # 400 rows of 2**22 columns: a dense copy would take 12.5 GiB.
    rng = np.random.RandomState(0)
    n, d, per_row = 400, 2 ** 22, 20
    cols = rng.randint(0, d, size=n * per_row)
    X = sp.csr_matrix((rng.randn(n * per_row), (np.repeat(np.arange(n), per_row), cols)),
                      shape=(n, d))
    y = (X @ rng.randn(d) > 0).astype(int)
    dense_bytes = n * d * 8
    for params in (dict(), dict(batch_size=32, penalty="elasticnet", average=True),
                   dict(early_stopping=True, validation_fraction=0.25)):
        tracemalloc.start()
        try:
            est = cgd.SGDClassifier(max_iter=3, tol=None, random_state=0, **params).fit(X, y)
            est.predict(X)
            est.score(X, y)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # O(n_features) state (a few parameter-sized arrays), nothing of size n * d.
        assert peak < 0.05 * dense_bytes, (params, peak)
        assert est.coef_.shape == (1, d)


# ------------------------------------------------------------ 2b. failed epochs
@pytest.mark.parametrize("n_classes", [2, 3])
def test_interrupted_csr_epoch_keeps_the_last_completed_one(monkeypatch, n_classes):
    # The CSR kernel writes an epoch into buffers the estimator does not hold (its
    # parameters and coef_): an epoch that fails half-way (here: those buffers
    # scribbled with NaN, then Ctrl-C) leaves the estimator at the last completed
    # epoch, without a copy of the parameters per epoch.
    from cgd import _linear

    X, y = _text_like(600, 300, 8, 3, 1)
    y = y % n_classes
    kw = dict(max_iter=6, tol=None, random_state=0)
    real = _linear.linear_epoch_csr
    calls = {"n": 0}

    def fail_in_epoch_3(*args):
        calls["n"] += 1
        out = real(*args)
        if calls["n"] == 3:
            params_out, coef_out = args[11], args[12]  # after X, y, weights, order, ...
            params_out[...] = np.nan
            coef_out[...] = np.nan
            raise KeyboardInterrupt
        return out

    est = cgd.SGDClassifier(**kw)
    monkeypatch.setattr(_linear, "linear_epoch_csr", fail_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    monkeypatch.setattr(_linear, "linear_epoch_csr", real)
    ref = cgd.SGDClassifier(**{**kw, "max_iter": 2}).fit(X, y)
    assert est.n_iter_ == 2 and len(est.loss_curve_) == 2
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)
    # and a later partial_fit goes on from there as it would from the 2-epoch fit
    est.partial_fit(X, y)
    ref.partial_fit(X, y)
    np.testing.assert_array_equal(est.coef_, ref.coef_)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_diverging_csr_fit_keeps_the_previous_weights(n_classes):
    X, y = _text_like(300, 200, 8, 3, 2)
    y = y % n_classes
    est = cgd.SGDClassifier(warm_start=True, max_iter=3, tol=None, random_state=0).fit(X, y)
    coef, intercept = est.coef_.copy(), est.intercept_.copy()
    with pytest.raises(ValueError, match=r"epoch \d+"):
        est.fit(X * 1e300, y)
    np.testing.assert_array_equal(est.coef_, coef)
    np.testing.assert_array_equal(est.intercept_, intercept)
    held = [v for v in list(vars(est).values()) + list(est._sgd_state.values())
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    assert all(np.isfinite(v).all() for v in held)


# ------------------------------------------------------------ 3. mini-batches
def _random_csr(n, d, density, seed, empty_rows=()):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d) * (rng.rand(n, d) < density)
    X[list(empty_rows)] = 0.0
    return sp.csr_matrix(X)


@pytest.mark.parametrize("name", ["SGDRegressor", "SGDClassifier"])
@pytest.mark.parametrize("penalty", [None, "l2"])
def test_plain_minibatch_csr_equals_dense_without_intercept(name, penalty):
    X = _random_csr(300, 40, 0.2, 0)
    w = np.random.RandomState(1).randn(40)
    y = X @ w if name == "SGDRegressor" else (X @ w > 0).astype(int)
    for batch_size, lr, average in itertools.product(
            (1, 7, 64, 300), ("invscaling", "adaptive"), (False, True)):
        kw = dict(fit_intercept=False, penalty=penalty, batch_size=batch_size,
                  learning_rate=lr, average=average, max_iter=20, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            a = getattr(cgd, name)(**kw).fit(X.toarray(), y)
            b = getattr(cgd, name)(**kw).fit(X, y)
        assert a.n_iter_ == b.n_iter_, kw
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=RTOL * np.abs(a.coef_).max(),
                                   err_msg=str(kw))


def test_multinomial_csr_equals_dense_without_intercept():
    X, y = _data("digits")
    for batch_size in (1, 16):
        kw = dict(multiclass="multinomial", loss="log_loss", fit_intercept=False,
                  batch_size=batch_size, max_iter=5, tol=None, random_state=0,
                  learning_rate="invscaling", eta0=0.05)
        a = cgd.SGDClassifier(**kw).fit(X.toarray(), y)
        b = cgd.SGDClassifier(**kw).fit(X, y)
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=RTOL * np.abs(a.coef_).max())


def test_fully_stored_csr_equals_dense_for_every_solver():
    # With every entry stored, each batch touches every column, so the lazy rule is
    # the dense one.
    rng = np.random.RandomState(0)
    Xd = rng.randn(120, 9)
    y = Xd @ rng.randn(9)
    full = sp.csr_matrix((Xd.ravel(), np.tile(np.arange(9), 120), np.arange(0, 120 * 9 + 1, 9)),
                         shape=Xd.shape)
    for solver, extra in [("adam", {}), ("adagrad", {}), ("sgd", {"momentum": 0.9}),
                          ("sgd", {"momentum": 0.9, "nesterovs_momentum": True})]:
        for penalty, average in [("l2", False), ("elasticnet", True)]:
            kw = dict(solver=solver, penalty=penalty, average=average, batch_size=16,
                      learning_rate="constant", eta0=0.01, max_iter=5, tol=None,
                      fit_intercept=False, random_state=0, **extra)
            a = cgd.SGDRegressor(**kw).fit(Xd, y)
            b = cgd.SGDRegressor(**kw).fit(full, y)
            np.testing.assert_allclose(b.coef_, a.coef_, rtol=0,
                                       atol=RTOL * np.abs(a.coef_).max(), err_msg=str(kw))


def _step(solver, w, g, s0, s1, lr, t, mu=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8):
    """One dense optimizer step on the given coordinates (NumPy reference)."""
    if solver == "sgd":
        v = mu * s0 - lr * g
        return (w + mu * v - lr * g if nesterov else w + v), v, s1
    if solver == "adam":
        s0 = b1 * s0 + (1 - b1) * g
        s1 = b2 * s1 + (1 - b2) * g * g
        lr_t = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        return w - lr_t * s0 / (np.sqrt(s1) + eps), s0, s1
    s0 = s0 + g * g
    return w - lr * g / (np.sqrt(s0) + eps), s0, s1


def _lazy_reference(X, y, sw, solver, *, eta, l2, batch, epochs, nesterov=False):
    """The documented rule: each batch updates only the columns its rows store (their
    gradient plus their L2 term); the others keep their value, velocity and moments.
    The intercept steps with eta * 0.01."""
    n, d = X.shape
    w, s0, s1 = np.zeros(d), np.zeros(d), np.zeros(d)
    b, b0, b1 = np.zeros(1), np.zeros(1), np.zeros(1)
    t = 1
    for _ in range(epochs):
        for start in range(0, n, batch):
            Xb = X[start:start + batch]
            m = Xb.shape[0]
            dl = (Xb @ w + b[0] - y[start:start + batch]) * sw[start:start + batch]
            cols = np.unique(Xb.indices)
            g = (Xb.T @ dl)[cols] / m + l2 * w[cols]
            w[cols], s0[cols], s1[cols] = _step(solver, w[cols], g, s0[cols], s1[cols], eta, t,
                                                nesterov=nesterov)
            b, b0, b1 = _step(solver, b, np.array([dl.sum() / m]), b0, b1,
                              eta * SPARSE_INTERCEPT_DECAY, t, nesterov=nesterov)
            t += 1
    return w, b


@pytest.mark.parametrize("solver, extra", [
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterovs_momentum=True)),
    ("adam", {}),
    ("adagrad", {}),
])
# 40: batches of two chunks (and a last one of 20 rows), whose sums are reduced
@pytest.mark.parametrize("batch_size", [1, 8, 40])
def test_lazy_solvers_match_numpy_reference(solver, extra, batch_size):
    X = _random_csr(60, 30, 0.1, 3, empty_rows=(4, 17)).tocoo()
    assert X.tocsr()[5, 7] == 0
    # A stored zero: its column counts as touched.
    X = sp.csr_matrix((np.append(X.data, 0.0), (np.append(X.row, 5), np.append(X.col, 7))),
                      shape=X.shape)
    assert 0.0 in X.data
    rng = np.random.RandomState(4)
    y = X @ rng.randn(30) + 0.5
    sw = rng.uniform(0.5, 2.0, 60)
    est = cgd.SGDRegressor(solver=solver, penalty="l2", alpha=0.05, learning_rate="constant",
                           eta0=0.05, batch_size=batch_size, shuffle=False, **extra)
    for _ in range(3):
        est.partial_fit(X, y, sample_weight=sw)
    w, b = _lazy_reference(X, y, sw, solver, eta=0.05, l2=0.05, batch=batch_size, epochs=3,
                           nesterov=extra.get("nesterovs_momentum", False))
    np.testing.assert_allclose(est.coef_, w, rtol=0, atol=RTOL * np.abs(w).max())
    np.testing.assert_allclose(est.intercept_, b, rtol=0, atol=RTOL * np.abs(b).max())


def _plain_reference(X, y, *, eta0, power_t, l1, l2, batch, epochs):
    """Plain SGD on CSR as documented: the L2 decay of every coefficient, the gradient
    step of the touched ones, the cumulative L1 penalty of the touched ones only, and
    the mean of the iterates (truncations included) over all updates."""
    n, d = X.shape
    w, q, u = np.zeros(d), np.zeros(d), 0.0
    b = 0.0
    avg, avg_b, count = np.zeros(d), 0.0, 0
    t = 1
    for _ in range(epochs):
        for start in range(0, n, batch):
            Xb = X[start:start + batch]
            m = Xb.shape[0]
            eta = eta0 / t ** power_t
            dl = Xb @ w + b - y[start:start + batch]
            cols = np.unique(Xb.indices)
            w *= max(0.0, 1 - eta * l2)
            w[cols] -= eta * (Xb.T @ dl)[cols] / m
            b -= eta * SPARSE_INTERCEPT_DECAY * dl.sum() / m
            count += 1
            avg += (w - avg) / count
            avg_b += (b - avg_b) / count
            u += l1 * eta
            for j in cols:
                z = w[j]
                if z > 0:
                    w[j] = max(0.0, z - (u + q[j]))
                elif z < 0:
                    w[j] = min(0.0, z + (u - q[j]))
                q[j] += w[j] - z
            t += 1
    return w, b, avg, avg_b


@pytest.mark.parametrize("batch_size", [1, 5, 40])
def test_lazy_l1_and_averaging_match_numpy_reference(batch_size):
    X = _random_csr(50, 25, 0.15, 5, empty_rows=(9,))
    y = X @ np.random.RandomState(6).randn(25) - 0.3
    alpha, l1_ratio = 0.05, 0.5
    kw = dict(penalty="elasticnet", alpha=alpha, l1_ratio=l1_ratio, learning_rate="invscaling",
              eta0=0.1, power_t=0.3, batch_size=batch_size, shuffle=False)
    last = cgd.SGDRegressor(**kw)
    averaged = cgd.SGDRegressor(average=True, **kw)
    for _ in range(3):
        last.partial_fit(X, y)
        averaged.partial_fit(X, y)
    w, b, avg, avg_b = _plain_reference(X, y, eta0=0.1, power_t=0.3, l1=alpha * l1_ratio,
                                        l2=alpha * (1 - l1_ratio), batch=batch_size, epochs=3)
    assert np.any(w == 0) and np.any(w != 0)
    for got, want in ((last.coef_, w), (last.intercept_, [b]), (averaged.coef_, avg),
                      (averaged.intercept_, [avg_b])):
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    np.testing.assert_array_equal(last.coef_ == 0, w == 0)


@pytest.mark.parametrize("batch_size", [5, 40])
@pytest.mark.parametrize("average", [False, True])
def test_plain_l2_minibatch_with_intercept_matches_numpy_reference(batch_size, average):
    # Plain SGD without an L1 part steps row by row after the batch's derivatives (no
    # per-column sums): the same update as the reference's, intercept decay included.
    X = _random_csr(90, 25, 0.15, 7, empty_rows=(3,))
    y = X @ np.random.RandomState(8).randn(25) + 0.7
    kw = dict(penalty="l2", alpha=0.02, learning_rate="invscaling", eta0=0.1, power_t=0.3,
              batch_size=batch_size, shuffle=False, average=average)
    est = cgd.SGDRegressor(**kw)
    for _ in range(3):
        est.partial_fit(X, y)
    w, b, avg, avg_b = _plain_reference(X, y, eta0=0.1, power_t=0.3, l1=0.0, l2=0.02,
                                        batch=batch_size, epochs=3)
    if average:
        w, b = avg, avg_b
    np.testing.assert_allclose(est.coef_, w, rtol=0, atol=RTOL * np.abs(w).max())
    np.testing.assert_allclose(est.intercept_, [b], rtol=0, atol=RTOL * abs(b))


@pytest.mark.parametrize("multiclass", ["ovr", "multinomial"])
def test_plain_minibatch_csr_equals_dense_with_several_outputs(multiclass):
    # K outputs held column-major during a CSR epoch; batches of 1 to 3 chunks.
    X, y = _data("digits")
    for batch_size in (7, 33, 90):
        kw = dict(multiclass=multiclass, loss="log_loss", fit_intercept=False,
                  batch_size=batch_size, max_iter=4, tol=None, random_state=0,
                  learning_rate="invscaling", eta0=0.05, alpha=1e-3)
        a = cgd.SGDClassifier(**kw).fit(X.toarray(), y)
        b = cgd.SGDClassifier(**kw).fit(X, y)
        np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=RTOL * np.abs(a.coef_).max(),
                                   err_msg=str(kw))


def _text_like(n, d, per_row, n_classes, seed):
    rng = np.random.RandomState(seed)
    p = 1.0 / np.arange(1, d + 1) ** 1.1
    cols = rng.permutation(d)[rng.choice(d, size=n * per_row, p=p / p.sum())]
    X = sp.csr_matrix((rng.rand(n * per_row), (np.repeat(np.arange(n), per_row), cols)),
                      shape=(n, d))
    y = np.argmax(X @ rng.randn(d, n_classes), axis=1)
    return X, y


@requires_openmp
@pytest.mark.parametrize("params", [
    dict(solver="sgd"),
    dict(solver="sgd", average=True, loss="log_loss", multiclass="multinomial"),
    dict(solver="sgd", penalty="elasticnet", average=True),
    dict(solver="adam", learning_rate="constant", eta0=0.01),
    dict(multiclass="multinomial", loss="log_loss", solver="adagrad", learning_rate="constant",
         eta0=0.1),
])
def test_minibatch_bits_do_not_depend_on_n_jobs(params):
    # Batches of 512 and 4000 rows of ~40 entries, 3 outputs: enough stored entries
    # for the chunks to be spread over threads.
    X, y = _text_like(4000, 5000, 40, 3, 0)
    for batch_size in (512, 4000):
        fits = [cgd.SGDClassifier(batch_size=batch_size, n_jobs=n_jobs, max_iter=3, tol=None,
                                  random_state=0, **params).fit(X, y)
                for n_jobs in (1, 2, 3)]
        for est in fits[1:]:
            np.testing.assert_array_equal(est.coef_, fits[0].coef_)
            np.testing.assert_array_equal(est.intercept_, fits[0].intercept_)


# ------------------------------------------------------------ 4. training control
@pytest.mark.parametrize("name, dataset", [("SGDRegressor", "regression"),
                                           ("SGDClassifier", "binary"),
                                           ("SGDClassifier", "iris")])
def test_early_stopping_on_csr_matches_sklearn(name, dataset):
    X, y = _data(dataset)
    for penalty, average in ((None, False), ("l2", True)):
        ours, ref = _fit_both(name, X, y, penalty=penalty, average=average,
                              early_stopping=True, random_state=0, n_iter_no_change=3,
                              learning_rate="invscaling")
        assert ours.n_iter_ == ref.n_iter_
        np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0,
                                   atol=RTOL * np.abs(ref.coef_).max())


@pytest.mark.parametrize("dataset", ["binary", "wine"])
def test_early_stopping_on_csr_matches_sklearn_classes_and_weights(dataset):
    # One validation split for all one-vs-rest problems, each stopping on its own
    # weighted binary accuracy, class weights in the updates only, n_iter_ the largest
    # problem's, t_ = 1 + n_iter_ * n_samples. No L2 term: with one, scikit-learn scores
    # its weight array without the lazy scale (a model it never has) and cgd does not.
    if dataset == "wine":
        X, y = load_wine(return_X_y=True)
        X, y = _with_zeros(StandardScaler().fit_transform(X), 4, fraction=0.4), y
    else:
        X, y = _data(dataset)
    sw = np.random.RandomState(3).uniform(0.2, 2.0, len(y))
    cases = [("SGDClassifier", X, y, weights, dict(
                early_stopping=True, validation_fraction=0.2, random_state=0,
                n_iter_no_change=3, class_weight=cw, penalty=pen, learning_rate=lr))
             for cw, weights, pen, lr in itertools.product(
                 (None, "balanced"), (None, sw), (None, "l1"), ("optimal", "invscaling"))]
    _assert_all_match(cases)
    n_iter = [_fit_both(name, X_, y_, w, **p)[0].n_iter_ for name, X_, y_, w, p in cases[:4]]
    assert min(n_iter) < 30, "no case stopped early: the test would not test stopping"
    # With the default L2 term n_iter_ may differ from scikit-learn's, t_'s rule not.
    est = cgd.SGDClassifier(early_stopping=True, random_state=0, shuffle=False,
                            class_weight="balanced").fit(X, y, sample_weight=sw)
    assert est.t_ == 1 + est.n_iter_ * X.shape[0]


def test_early_stopping_on_csr_never_trains_on_validation_rows():
    X, y = _data("regression")
    _, idx_val = validation_split(y, 0.2, 0, stratify=False, sample_weight=np.ones(len(y)))
    y2 = y.copy()
    y2[idx_val] += 1000.0
    kw = dict(early_stopping=True, validation_fraction=0.2, random_state=0, tol=None,
              max_iter=5)
    a = cgd.SGDRegressor(**kw).fit(X, y)
    b = cgd.SGDRegressor(**kw).fit(X, y2)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.validation_scores_ != b.validation_scores_
    r = y2[idx_val] - (X[idx_val] @ b.coef_ + b.intercept_)
    r2 = 1 - np.sum(r ** 2) / np.sum((y2[idx_val] - y2[idx_val].mean()) ** 2)
    assert b.validation_scores_[-1] == pytest.approx(r2, rel=1e-10)


def _blocks(X, y, size):
    return [(X[i:i + size], y[i:i + size]) for i in range(0, X.shape[0], size)]


def test_partial_fit_over_csr_blocks():
    X, y = _data("iris")
    classes = np.unique(y)
    # Plain SGD without an intercept: the dense blocks' fit, to rounding.
    for kw in (dict(batch_size=4), dict(average=True, penalty="l2")):
        kw = dict(fit_intercept=False, random_state=0, **kw)
        sparse_est, dense_est = cgd.SGDClassifier(**kw), cgd.SGDClassifier(**kw)
        for _ in range(3):
            for Xb, yb in _blocks(X, y, 40):
                sparse_est.partial_fit(Xb, yb, classes=classes)
                dense_est.partial_fit(Xb.toarray(), yb, classes=classes)
        np.testing.assert_allclose(sparse_est.coef_, dense_est.coef_, rtol=0,
                                   atol=RTOL * np.abs(dense_est.coef_).max())
    # Per-sample SGD with an intercept: scikit-learn's partial_fit on the same blocks.
    # (Not with averaging: scikit-learn's partial_fit then starts each call from a
    # stale intercept, its ``_standard_intercept``, which is not updated once the
    # average is published.)
    for dataset in ("binary", "iris"):
        X, y = _data(dataset)
        classes = np.unique(y)
        kw = dict(shuffle=False, penalty="l2", learning_rate="invscaling", eta0=0.05)
        ours, ref = cgd.SGDClassifier(**kw), sk_linear.SGDClassifier(**kw)
        for _ in range(2):
            for Xb, yb in _blocks(X, y, 40):
                ours.partial_fit(Xb, yb, classes=classes)
                ref.partial_fit(Xb, yb, classes=classes)
        assert ours.t_ == ref.t_
        for a, b in ((ours.coef_, ref.coef_), (ours.intercept_, ref.intercept_)):
            np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * np.abs(ref.coef_).max())


def test_csr_model_pickles_and_continues():
    X, y = _data("iris")
    blocks = _blocks(X, y, 50)
    kw = dict(solver="adam", batch_size=8, penalty="elasticnet", average=True,
              learning_rate="constant", eta0=0.01, random_state=0)
    a, b = cgd.SGDClassifier(**kw), cgd.SGDClassifier(**kw)
    for Xb, yb in blocks[:2]:
        a.partial_fit(Xb, yb, classes=np.unique(y))
        b.partial_fit(Xb, yb, classes=np.unique(y))
    b = pickle.loads(pickle.dumps(b))
    np.testing.assert_array_equal(b.decision_function(X), a.decision_function(X))
    a.partial_fit(*blocks[2])
    b.partial_fit(*blocks[2])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)


@pytest.mark.parametrize("params", [
    dict(loss="log_loss"),
    dict(loss="modified_huber"),
    dict(loss="log_loss", multiclass="multinomial"),
])
@pytest.mark.parametrize("dataset", ["binary", "iris"])
def test_prediction_methods_on_csr(params, dataset):
    X, y = _data(dataset)
    est = cgd.SGDClassifier(random_state=0, max_iter=10, tol=None, **params).fit(X, y)
    Xd = X.toarray()
    for method in ("decision_function", "predict_proba", "predict_log_proba"):
        with np.errstate(divide="ignore"):  # log(0) of modified_huber's probabilities
            np.testing.assert_allclose(getattr(est, method)(X), getattr(est, method)(Xd),
                                       rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(est.predict(X), est.predict(Xd))
    assert est.score(X, y) == est.score(Xd, y)
    est.sparsify()
    np.testing.assert_allclose(est.decision_function(X), est.decision_function(Xd),
                               rtol=1e-12, atol=1e-12)


def test_regressor_predict_and_score_on_csr():
    X, y = _data("regression")
    est = cgd.SGDRegressor(random_state=0).fit(X, y)
    np.testing.assert_allclose(est.predict(X), est.predict(X.toarray()), rtol=1e-12, atol=1e-12)
    assert est.score(X, y) == pytest.approx(est.score(X.toarray(), y), rel=1e-12)
    with pytest.raises(ValueError, match="features"):
        est.predict(sp.csr_matrix(np.ones((2, X.shape[1] + 1))))
