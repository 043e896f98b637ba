"""MLPRegressor / MLPClassifier on scipy.sparse X.

1. A CSR fit equals the fit of the dense copy of the same data (every solver, early
   stopping, both estimators, float64 and float32), and scikit-learn's MLP on the same
   CSR, including CSR with unsorted indices and duplicate entries.
2. Formats and types: CSR matrix / array used as they are, other formats converted,
   int32 and int64 indices, float32 kept; the caller's matrix never modified; X never
   densified (tracemalloc).
3. n_jobs 1, 2, 3 give bit-identical weights on CSR.
4. Predictions on CSR equal the dense ones; partial_fit over a stream of CSR blocks;
   pickling mid-stream.
"""

import pickle
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn.neural_network as sk_nn
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

import cgd
from _helpers import requires_openmp
from _helpers import N_JOBS_CASES, assert_n_jobs_bit_identical
from cgd import _mlp

RTOL = 1e-9          # float64: CSR vs dense, cgd vs scikit-learn (relative to max |weight|)
RTOL32 = 1e-6        # float32: CSR vs dense after the same float32 training


def _sparse_task(task, n=240, d=70, density=0.08, seed=0, dtype=np.float64):
    """TF-IDF-like CSR (non-negative values, some empty rows) and a target from a
    linear teacher."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", dtype=np.float64, random_state=seed,
                  data_rvs=lambda k: rng.exponential(1.0, k))
    Z = X @ rng.standard_normal((d, 3))
    if task == "multiclass":
        y = np.argmax(Z, axis=1)
    elif task == "binary":
        y = (Z[:, 0] > np.median(Z[:, 0])).astype(int)
    elif task == "multilabel":
        y = (Z > 0).astype(int)
    elif task == "regression":
        y = (Z[:, 0] - Z[:, 0].mean()) / Z[:, 0].std()
    else:
        raise ValueError(task)
    return X.astype(dtype), y


def _estimator(task, **params):
    cls = cgd.MLPRegressor if task == "regression" else cgd.MLPClassifier
    params = {"hidden_layer_sizes": (12, 5), "max_iter": 15, "random_state": 0,
              "n_jobs": 1, **params}
    return cls(**params)


def _fit(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


def _weights(est):
    return np.concatenate([np.ravel(a) for a in est.coefs_ + est.intercepts_])


def _rel_err(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _assert_same_fit(ours, ref, rtol):
    """The same training run: iterations, samples, curves and weights to rtol."""
    assert ours.n_iter_ == ref.n_iter_
    assert _rel_err(_weights(ours), _weights(ref)) <= rtol
    if ref.solver == "lbfgs":
        assert ours.loss_ == pytest.approx(ref.loss_, rel=rtol)
        return
    assert ours.t_ == ref.t_
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=rtol)
    if ref.early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_, rtol=rtol)


def _assert_bit_identical(a, b):
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert u.dtype == v.dtype and np.array_equal(u, v)


SOLVERS = {
    "sgd-nesterov": dict(solver="sgd", learning_rate_init=0.05, batch_size=100),
    "sgd-adaptive": dict(solver="sgd", learning_rate_init=0.05, learning_rate="adaptive",
                         momentum=0.0, batch_size=70),
    "adam": dict(solver="adam", learning_rate_init=0.01, batch_size=100),
    "adagrad": dict(solver="adagrad", learning_rate_init=0.05, batch_size=150),
    "lbfgs": dict(solver="lbfgs", max_iter=30),
    "adam-early-stopping": dict(solver="adam", learning_rate_init=0.01, early_stopping=True,
                                validation_fraction=0.2, n_iter_no_change=3),
}


# ------------------------------------------------------------ 1. the same fit as dense X
@pytest.mark.parametrize("task", ["multiclass", "regression", "multilabel"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_csr_fit_equals_dense_fit(task, solver):
    X, y = _sparse_task(task)
    sw = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0])
    ours = _fit(_estimator(task, **SOLVERS[solver]), X, y, sample_weight=sw)
    ref = _fit(_estimator(task, **SOLVERS[solver]), X.toarray(), y, sample_weight=sw)
    _assert_same_fit(ours, ref, RTOL)
    for u, v in zip(ours.coefs_, ref.coefs_):
        assert u.dtype == v.dtype == np.float64


@pytest.mark.parametrize("case", ["poisson", "binary-one-layer", "all-zero-x"])
def test_csr_fit_equals_dense_fit_other_outputs_and_shapes(case):
    X, y = _sparse_task("binary")
    if case == "poisson":
        y = np.random.default_rng(2).poisson(np.exp(X @ np.linspace(-0.5, 0.5, X.shape[1])))
        make = lambda: cgd.MLPRegressor(loss="poisson", hidden_layer_sizes=(9,), max_iter=10,
                                        random_state=0, n_jobs=1)
    else:
        if case == "all-zero-x":
            X = sp.csr_matrix(X.shape)
        make = lambda: _estimator("binary", hidden_layer_sizes=(6,), batch_size=64)
    _assert_same_fit(_fit(make(), X, y), _fit(make(), X.toarray(), y), RTOL)


@pytest.mark.parametrize("solver", ["adam", "sgd-nesterov", "lbfgs"])
def test_float32_csr_fit_equals_dense_float32_fit(solver):
    """float32 CSR trains in float32. The stochastic solvers stay within a few float32
    roundings of the dense float32 fit; L-BFGS amplifies rounding (float32 and float64
    fits end 1e-2 apart here), so there the CSR fit must stay ten times closer to the
    dense float32 fit than float32 is to float64."""
    X, y = _sparse_task("multiclass", dtype=np.float32)
    ours = _fit(_estimator("multiclass", **SOLVERS[solver]), X, y)
    ref = _fit(_estimator("multiclass", **SOLVERS[solver]), X.toarray(), y)
    assert all(c.dtype == np.float32 for c in ours.coefs_ + ours.intercepts_)
    assert ours.predict_proba(X).dtype == np.float32
    assert ours.n_iter_ == ref.n_iter_
    err = _rel_err(_weights(ours), _weights(ref))
    if solver == "lbfgs":
        ref64 = _fit(_estimator("multiclass", **SOLVERS[solver]),
                     X.astype(np.float64).toarray(), y)
        assert err <= 0.1 * _rel_err(_weights(ref), _weights(ref64))
    else:
        assert err <= RTOL32


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_batches_of_more_than_one_wave_of_blocks(solver):
    """1,100 rows in one batch: 18 blocks of 64 rows, more than the 16 the kernel runs
    at a time, so the block buffers are folded between waves."""
    X, y = _sparse_task("binary", n=1100, d=40, density=0.1)
    kw = dict(solver=solver, batch_size=1100, max_iter=5, hidden_layer_sizes=(8,))
    ours = _fit(_estimator("binary", **kw), X, y)
    ref = _fit(_estimator("binary", **kw), X.toarray(), y)
    _assert_same_fit(ours, ref, RTOL)


@pytest.mark.parametrize("name,params", [
    ("MLPClassifier", dict(solver="adam", learning_rate_init=0.01)),
    ("MLPClassifier", dict(solver="sgd", learning_rate_init=0.05, batch_size=64)),
    ("MLPRegressor", dict(solver="adam", learning_rate_init=0.01, early_stopping=True,
                          validation_fraction=0.2)),
])
def test_matches_sklearn_on_csr(name, params):
    """scikit-learn's MLP on the same CSR matrix (its first layer through scipy's sparse
    products), shuffled, with the same random_state."""
    X, y = _sparse_task("regression" if name == "MLPRegressor" else "multiclass")
    params = {"hidden_layer_sizes": (12,), "max_iter": 15, "random_state": 0, **params}
    ours = getattr(cgd, name)(n_jobs=1, **params)
    ref = getattr(sk_nn, name)(**params)
    with threadpool_limits(1, user_api="blas"):
        _fit(ours, X, y)
        _fit(ref, X, y)
    _assert_same_fit(ours, ref, RTOL)
    if name == "MLPClassifier":
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-9,
                                   atol=1e-12)
    else:
        np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-9, atol=1e-12)


def _non_canonical(X, seed=0):
    """X with each row's indices shuffled and some entries split into two duplicates
    (their values add up to the original), as CSR arrays built by hand."""
    rng = np.random.default_rng(seed)
    data, indices, indptr = [], [], [0]
    for i in range(X.shape[0]):
        row = X.getrow(i)
        cols, vals = list(row.indices), list(row.data)
        for k in range(len(cols)):
            if rng.random() < 0.3:
                part = rng.uniform(0.2, 0.8) * vals[k]
                vals[k] -= part
                cols.append(cols[k])
                vals.append(part)
        perm = rng.permutation(len(cols))
        indices += [cols[p] for p in perm]
        data += [vals[p] for p in perm]
        indptr.append(len(indices))
    Xn = sp.csr_matrix((np.array(data), np.array(indices, dtype=np.int32),
                        np.array(indptr, dtype=np.int32)), shape=X.shape)
    assert not Xn.has_canonical_format
    return Xn


def test_unsorted_indices_and_duplicates_as_sklearn():
    X, y = _sparse_task("multiclass")
    Xn = _non_canonical(X)
    before = [a.copy() for a in (Xn.data, Xn.indices, Xn.indptr)]
    params = dict(hidden_layer_sizes=(12,), solver="adam", learning_rate_init=0.01,
                  max_iter=10, random_state=0)
    ours = cgd.MLPClassifier(n_jobs=1, **params)
    ref = sk_nn.MLPClassifier(**params)
    with threadpool_limits(1, user_api="blas"):
        _fit(ours, Xn, y)
        _fit(ref, Xn, y)
    _assert_same_fit(ours, ref, RTOL)
    np.testing.assert_allclose(ours.predict_proba(Xn), ref.predict_proba(Xn), rtol=1e-9)
    # the caller's matrix is untouched (canonicalised on a copy)
    for a, b in zip((Xn.data, Xn.indices, Xn.indptr), before):
        assert np.array_equal(a, b)
    assert not Xn.has_canonical_format
    # and the fit is that of the canonical matrix (duplicates summed), to rounding
    canon = _fit(cgd.MLPClassifier(n_jobs=1, **params), X, y)
    assert _rel_err(_weights(ours), _weights(canon)) <= RTOL


# ------------------------------------------------------------ 2. formats, types, memory
def _as(X, kind):
    if kind == "csr_matrix":
        return sp.csr_matrix(X)
    if kind == "csr_array":
        return sp.csr_array(X)
    if kind == "csr_int64":
        X = sp.csr_matrix(X, copy=True)
        X.indices = X.indices.astype(np.int64)
        X.indptr = X.indptr.astype(np.int64)
        return X
    return {"csc": sp.csc_matrix, "coo": sp.coo_matrix, "lil": sp.lil_matrix,
            "dok": sp.dok_matrix, "csc_array": sp.csc_array}[kind](X)


@pytest.mark.parametrize("kind", ["csr_array", "csr_int64", "csc", "coo", "lil", "dok",
                                  "csc_array"])
def test_formats_and_index_types_give_the_same_fit(kind):
    X, y = _sparse_task("multiclass")
    params = dict(solver="adam", learning_rate_init=0.01, batch_size=100, max_iter=5)
    ref = _fit(_estimator("multiclass", **params), sp.csr_matrix(X), y)
    Xk = _as(X, kind)
    ours = _fit(_estimator("multiclass", **params), Xk, y)
    _assert_bit_identical(ours, ref)
    np.testing.assert_array_equal(ours.predict_proba(Xk), ref.predict_proba(X))
    assert ours.score(Xk, y) == ref.score(X, y)


def test_int64_indices_used_as_they_are(monkeypatch):
    """int64 (and int32) index arrays reach the kernels without a cast."""
    X, y = _sparse_task("binary")
    seen = []
    real = _mlp.mlp_epoch

    def spy(data, indices, indptr, *args):
        seen.append((indices.dtype, indptr.dtype))
        return real(data, indices, indptr, *args)

    monkeypatch.setattr(_mlp, "mlp_epoch", spy)
    for kind in ("csr_matrix", "csr_int64"):
        _fit(_estimator("binary", max_iter=1), _as(X, kind), y)
    assert seen == [(np.int32, np.int32), (np.int64, np.int64)]


def test_csr_is_never_densified():
    """2^20 columns: a dense block of just 64 rows would take 256 MiB of float32; the
    whole fit (early stopping, predictions) must stay far below that."""
    rng = np.random.default_rng(0)
    n, d = 600, 2 ** 20
    X = sp.csr_matrix((rng.uniform(0.1, 1.0, n * 20).astype(np.float32),
                       (np.repeat(np.arange(n), 20), rng.integers(0, d, n * 20))),
                      shape=(n, d))
    y = (X @ rng.standard_normal(d) > 0).astype(int)
    est = cgd.MLPClassifier(hidden_layer_sizes=(1,), max_iter=2, batch_size=200,
                            early_stopping=True, validation_fraction=0.2, random_state=0)
    tracemalloc.start()
    try:
        _fit(est, X, y)
        proba = est.predict_proba(X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est.coefs_[0].shape == (d, 1) and est.coefs_[0].dtype == np.float32
    assert proba.shape == (n, 2) and np.all(np.isfinite(proba))
    dense_block = 64 * d * 4
    assert peak < dense_block / 3, f"peak {peak / 2**20:.0f} MiB"


def test_malformed_csr_arrays_are_refused_by_the_kernel():
    X, y = _sparse_task("binary")
    est = _fit(_estimator("binary", max_iter=1, hidden_layer_sizes=(4,)), X, y)
    params = est._pack(np.float64)
    sizes = np.array(est._layer_units(), dtype=np.intp)
    rows = np.arange(X.shape[0], dtype=np.intp)
    out = np.empty((X.shape[0], 1))
    bad = X.indices.copy()
    bad[3] = X.shape[1]
    with pytest.raises(ValueError, match="out of range"):
        _mlp.mlp_forward(X.data, bad, X.indptr, X.shape[1], rows, sizes, params, 3, 1, out, 1)
    with pytest.raises(ValueError, match="indptr"):
        _mlp.mlp_forward(X.data, X.indices, X.indptr[::-1].copy(), X.shape[1], rows, sizes,
                         params, 3, 1, out, 1)
    with pytest.raises(ValueError, match="both indices and indptr"):
        _mlp.mlp_forward(X.data, X.indices, None, X.shape[1], rows, sizes, params, 3, 1, out,
                         1)
    # dense X (indices and indptr None) must hold n_rows * n_features values
    with pytest.raises(ValueError, match="n_rows \\* n_features"):
        _mlp.mlp_objective(X.toarray().ravel()[:-1], None, None, X.shape[1],
                           np.zeros((X.shape[0], 1)), np.ones(X.shape[0]), rows, sizes,
                           params, np.empty(params.size), est._kernel_config(1, X.shape[0]))


# ------------------------------------------------------------ 3. thread counts
@requires_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", N_JOBS_CASES)
def test_n_jobs_gives_bit_identical_weights_on_csr(dtype, kw):
    """1,500 features x 24 hidden units: W_0 alone has > 32768 parameters, so its rows
    are stepped in parallel tasks, and batches hold several blocks."""
    X, y = _sparse_task("multiclass", n=800, d=1500, density=0.01, dtype=dtype)
    assert_n_jobs_bit_identical(
        lambda n_jobs: _estimator("multiclass", hidden_layer_sizes=(24,), n_jobs=n_jobs,
                                  **{"max_iter": 3, **kw}),
        X, y, dtype)


# ------------------------------------------------------------ 4. predictions, streams
@pytest.mark.parametrize("task", ["multiclass", "binary", "regression", "multilabel"])
def test_predictions_on_csr_equal_dense_predictions(task):
    X, y = _sparse_task(task, n=600)   # more than one block of 256 prediction rows
    est = _fit(_estimator(task, solver="adam", learning_rate_init=0.01), X, y)
    D = X.toarray()
    for n_jobs in (1, 2):
        est.set_params(n_jobs=n_jobs)
        np.testing.assert_allclose(est.predict(X), est.predict(D), rtol=1e-12, atol=1e-14)
        assert est.score(X, y) == pytest.approx(est.score(D, y), rel=1e-12)
        if task != "regression":
            np.testing.assert_allclose(est.predict_proba(X), est.predict_proba(D),
                                       rtol=1e-12, atol=1e-14)
            if task != "multilabel":
                np.testing.assert_allclose(est.predict_log_proba(X),
                                           est.predict_log_proba(D), rtol=1e-12)
    # a float32 model predicts float64 CSR (and the reverse) as it does dense input
    est32 = _fit(_estimator(task, solver="adam", learning_rate_init=0.01),
                 X.astype(np.float32), y)
    np.testing.assert_allclose(est32.predict(X), est32.predict(D), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(est.predict(X.astype(np.float32)),
                               est.predict(D.astype(np.float32)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_partial_fit_over_a_stream_of_csr_blocks(task):
    """A stream of CSR blocks of mixed formats and index types equals the same stream
    of dense blocks; pickling the model mid-stream changes nothing."""
    X, y = _sparse_task(task, n=600)
    kinds = ["csr_matrix", "csr_int64", "coo", "csr_array", "csc", "csr_matrix"]
    bounds = np.linspace(0, X.shape[0], len(kinds) + 1).astype(int)
    extra = {"classes": np.unique(y)} if task != "regression" else {}

    def stream(est, dense, pickle_at=None):
        for i, kind in enumerate(kinds):
            block = X[bounds[i]:bounds[i + 1]]
            block = block.toarray() if dense else _as(block, kind)
            est.partial_fit(block, y[bounds[i]:bounds[i + 1]], **extra)
            if i == pickle_at:
                est = pickle.loads(pickle.dumps(est))
        return est

    kw = dict(solver="adam", learning_rate_init=0.01, batch_size=64)
    ours = stream(_estimator(task, **kw), dense=False)
    ref = stream(_estimator(task, **kw), dense=True)
    _assert_same_fit(ours, ref, RTOL)
    assert ours.t_ == X.shape[0]
    resumed = stream(_estimator(task, **kw), dense=False, pickle_at=2)
    _assert_bit_identical(resumed, ours)
    restored = pickle.loads(pickle.dumps(ours))
    np.testing.assert_array_equal(restored.predict(X), ours.predict(X))
