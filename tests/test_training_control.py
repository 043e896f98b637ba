"""partial_fit, warm_start, tol, early stopping, loss curves, dtypes."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning

import cgd
from cgd._fit_loop import validation_split


def _reg(n=400, d=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X.astype(dtype), (X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)).astype(dtype)


def _iris():
    X, y = load_iris(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), y


PARTIAL_CASES = [
    (cgd.SGDRegressor, {}),
    (cgd.SGDRegressor, dict(batch_size=32, solver="adam", learning_rate="constant", eta0=0.01)),
    (cgd.SGDRegressor, dict(penalty="l1", average=True)),
    (cgd.SGDRegressor, dict(batch_size=16, momentum=0.9, nesterovs_momentum=True,
                            learning_rate="invscaling")),
    (cgd.SGDClassifier, dict(loss="log_loss")),
    (cgd.SGDClassifier, dict(loss="hinge", penalty="elasticnet", batch_size=8, solver="adagrad",
                             learning_rate="constant")),
    (cgd.SGDClassifier, dict(loss="log_loss", multiclass="multinomial", average=5)),
]


@pytest.mark.parametrize("cls, kw", PARTIAL_CASES)
def test_two_partial_fits_equal_fit_two_epochs(cls, kw):
    if cls is cgd.SGDRegressor:
        X, y = _reg()
        a = cls(shuffle=False, max_iter=2, tol=None, **kw).fit(X, y)
        b = cls(shuffle=False, **kw)
        b.partial_fit(X, y)
        b.partial_fit(X, y)
    else:
        X, y = _iris()
        a = cls(shuffle=False, max_iter=2, tol=None, **kw).fit(X, y)
        b = cls(shuffle=False, **kw)
        b.partial_fit(X, y, classes=np.unique(y))
        b.partial_fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.t_ == b.t_
    assert a.loss_curve_ == b.loss_curve_


def test_t_counts_updates():
    X, y = _reg(n=100)
    assert cgd.SGDRegressor(max_iter=3, tol=None).fit(X, y).t_ == 1 + 3 * 100
    assert cgd.SGDRegressor(max_iter=3, tol=None, batch_size=32).fit(X, y).t_ == 1 + 3 * 4


@pytest.mark.parametrize("cls", [cgd.SGDRegressor, cgd.SGDClassifier])
def test_warm_start_equals_coef_init(cls):
    X, y = _reg() if cls is cgd.SGDRegressor else _iris()
    first = cls(max_iter=3, tol=None, random_state=0).fit(X, y)
    warm = cls(max_iter=3, tol=None, random_state=1, warm_start=True)
    warm.fit(X, y)
    coef0, b0 = warm.coef_.copy(), warm.intercept_.copy()
    warm.fit(X, y)
    cold = cls(max_iter=3, tol=None, random_state=1).fit(X, y, coef_init=coef0, intercept_init=b0)
    np.testing.assert_array_equal(warm.coef_, cold.coef_)
    np.testing.assert_array_equal(warm.intercept_, cold.intercept_)
    assert warm.t_ == cold.t_ == first.t_  # fit restarts the update counter
    assert not np.array_equal(warm.coef_, coef0)


@pytest.mark.parametrize("max_iter", [1, 7, 23])
def test_tol_none_runs_exactly_max_iter(max_iter):
    X, y = _reg()
    est = cgd.SGDRegressor(tol=None, max_iter=max_iter).fit(X, y)
    assert est.n_iter_ == max_iter
    assert len(est.loss_curve_) == max_iter


def _stop_epoch(values, tol, n_iter_no_change, *, maximize=False, eta0=None):
    """The epoch (from 1) at which scikit-learn's stopping rule ends training, replayed
    on the per-epoch values it watches (mean training objective, or validation score
    with ``maximize``); None if it never does. An epoch counts as no improvement when
    its value is not better than the best so far by ``tol``; ``n_iter_no_change`` such
    epochs in a row stop training, or, with ``eta0`` (the 'adaptive' schedule), divide
    the step by 5 and start counting again while the step is above 1e-6."""
    best, count, eta = (-np.inf if maximize else np.inf), 0, eta0
    for epoch, v in enumerate(values, start=1):
        worse = v < best + tol if maximize else v > best - tol
        count = count + 1 if worse else 0
        best = max(best, v) if maximize else min(best, v)
        if count >= n_iter_no_change:
            if eta is not None and eta > 1e-6:
                eta, count = eta / 5, 0
            else:
                return epoch
    return None


def test_tol_stops_and_warns_when_not_converged():
    X, y = _reg()
    est = cgd.SGDRegressor(tol=1e-3, max_iter=1000, random_state=0).fit(X, y)
    # Stopped at the first epoch where the rule says so, not before nor after.
    assert est.n_iter_ == _stop_epoch(est.loss_curve_, 1e-3, est.n_iter_no_change) < 1000
    with pytest.warns(Warning, match="Maximum number of iteration"):
        cgd.SGDRegressor(tol=1e-3, max_iter=2).fit(X, y)


def test_early_stopping_never_trains_on_validation_rows_regressor():
    X, y = _reg(n=500)
    _, idx_val = validation_split(y, 0.2, 0, stratify=False, sample_weight=np.ones(len(y)))
    y2 = y.copy()
    y2[idx_val] += 1000.0  # if training touched these rows, the weights would move a lot
    kw = dict(early_stopping=True, validation_fraction=0.2, random_state=0, tol=None, max_iter=5)
    a = cgd.SGDRegressor(**kw).fit(X, y)
    b = cgd.SGDRegressor(**kw).fit(X, y2)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.validation_scores_ != b.validation_scores_  # ... but they were scored
    assert len(a.validation_scores_) == 5 and a.best_validation_score_ == max(a.validation_scores_)


def test_early_stopping_never_trains_on_validation_rows_classifier():
    X, y = _iris()
    _, idx_val = validation_split(y, 0.2, 0, stratify=True, sample_weight=np.ones(len(y)))
    X2 = X.copy()
    X2[idx_val] *= -50.0  # the stratified split depends on y only, so it is unchanged
    kw = dict(early_stopping=True, validation_fraction=0.2, random_state=0, tol=None, max_iter=5)
    a = cgd.SGDClassifier(**kw).fit(X, y)
    b = cgd.SGDClassifier(**kw).fit(X2, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_early_stopping_stops_on_validation_score():
    X, y = _reg(n=500)
    est = cgd.SGDRegressor(early_stopping=True, random_state=0, n_iter_no_change=3,
                           tol=1e-3, max_iter=1000).fit(X, y)
    assert est.n_iter_ == _stop_epoch(est.validation_scores_, 1e-3, 3, maximize=True) < 1000
    # The scores are R^2 on the held-out rows, computed here from the published weights
    # (the last epoch's: no averaging).
    _, idx_val = validation_split(y, 0.1, 0, stratify=False, sample_weight=np.ones(len(y)))
    r = y[idx_val] - (X[idx_val] @ est.coef_ + est.intercept_)
    r2 = 1 - np.sum(r ** 2) / np.sum((y[idx_val] - y[idx_val].mean()) ** 2)
    assert est.validation_scores_[-1] == pytest.approx(r2, rel=1e-12)


def test_adaptive_divides_learning_rate_instead_of_stopping():
    X, y = _reg()
    const = cgd.SGDRegressor(learning_rate="constant", eta0=0.05, random_state=0).fit(X, y)
    adapt = cgd.SGDRegressor(learning_rate="adaptive", eta0=0.05, random_state=0).fit(X, y)
    assert const.n_iter_ == _stop_epoch(const.loss_curve_, 1e-3, 5)
    # 'adaptive' went on where the rule alone would have stopped, until the step had
    # been divided by 5 seven times (0.05 / 5**7 < 1e-6).
    assert _stop_epoch(adapt.loss_curve_, 1e-3, 5) < adapt.n_iter_
    assert adapt.n_iter_ == _stop_epoch(adapt.loss_curve_, 1e-3, 5, eta0=0.05) < 1000


@pytest.mark.parametrize("kw", [dict(), dict(batch_size=16, solver="adam", learning_rate="constant"),
                                dict(average=True)])
def test_float32_end_to_end_and_close_to_float64(kw):
    X, y = _reg(n=600)
    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    r64 = cgd.SGDRegressor(random_state=0, max_iter=5, tol=None, **kw).fit(X, y)
    r32 = cgd.SGDRegressor(random_state=0, max_iter=5, tol=None, **kw).fit(X32, y32)
    assert r32.coef_.dtype == np.float32 and r32.intercept_.dtype == np.float32
    assert r32.predict(X32).dtype == np.float32
    # float32 rounding only: measured about 1e-6 of the largest coefficient after 3000
    # updates (a float32 step computed wrongly is off by far more).
    assert np.max(np.abs(r32.coef_ - r64.coef_)) <= 1e-5 * np.max(np.abs(r64.coef_))
    assert np.max(np.abs(r32.intercept_ - r64.intercept_)) <= 1e-5 * np.max(np.abs(r64.coef_))

    Xi, yi = _iris()
    # A moderate constant step: the default 'optimal' schedule starts at steps of
    # alpha**-0.25 = 10, which amplifies any rounding difference chaotically.
    kw = {"learning_rate": "constant", "eta0": 0.01, **kw}
    c64 = cgd.SGDClassifier(loss="log_loss", random_state=0, max_iter=5, tol=None, **kw).fit(Xi, yi)
    c32 = cgd.SGDClassifier(loss="log_loss", random_state=0, max_iter=5, tol=None, **kw).fit(
        Xi.astype(np.float32), yi)
    for a in (c32.coef_, c32.intercept_, c32.decision_function(Xi.astype(np.float32)),
              c32.predict_proba(Xi.astype(np.float32))):
        assert a.dtype == np.float32
    assert np.max(np.abs(c32.coef_ - c64.coef_)) <= 1e-5 * np.max(np.abs(c64.coef_))
    assert np.max(np.abs(c32.intercept_ - c64.intercept_)) <= 1e-5 * np.max(np.abs(c64.coef_))


def test_loss_curve_is_the_mean_objective_of_each_epoch():
    X, y = _reg(n=50)
    est = cgd.SGDRegressor(batch_size=50, shuffle=False, learning_rate="constant", eta0=0.1,
                           penalty=None, max_iter=3, tol=None).fit(X, y)
    w, b = np.zeros(X.shape[1]), 0.0
    for e in range(3):
        r = X @ w + b - y
        assert est.loss_curve_[e] == pytest.approx(0.5 * np.mean(r ** 2), rel=1e-12)
        w, b = w - 0.1 * X.T @ r / 50, b - 0.1 * r.mean()
    assert est.loss_ == est.loss_curve_[-1] and est.best_loss_ == min(est.loss_curve_)


def test_multinomial_with_two_classes_is_binary_logistic():
    Xi, yi = _iris()
    mask = yi < 2
    a = cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", random_state=0).fit(Xi[mask], yi[mask])
    b = cgd.SGDClassifier(loss="log_loss", random_state=0).fit(Xi[mask], yi[mask])
    np.testing.assert_array_equal(a.coef_, b.coef_)


def _proba_reference(kind, D):
    """Class probabilities from decision values, computed here: one-vs-rest log_loss
    normalises the K sigmoids, multinomial takes the softmax, modified_huber
    normalises (clip(d, -1, 1) + 1) / 2 (uniform where all are 0); a binary model
    (log_loss with two classes is one logistic output either way) gives [1 - p, p]."""
    if D.ndim == 1:
        p = 1 / (1 + np.exp(-D)) if kind != "huber" else (np.clip(D, -1, 1) + 1) / 2
        return np.column_stack([1 - p, p])
    if kind == "multinomial":
        e = np.exp(D - D.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    p = 1 / (1 + np.exp(-D)) if kind == "ovr" else (np.clip(D, -1, 1) + 1) / 2
    total = p.sum(axis=1, keepdims=True)
    return np.where(total == 0, 1 / D.shape[1], p / np.where(total == 0, 1, total))


@pytest.mark.parametrize("binary", [False, True])
def test_predict_proba_follows_the_decision_values(binary):
    Xi, yi = _iris()
    if binary:
        Xi, yi = Xi[yi < 2], yi[yi < 2]
    for kind, kw in [("ovr", dict(loss="log_loss")),
                     ("multinomial", dict(loss="log_loss", multiclass="multinomial")),
                     ("huber", dict(loss="modified_huber"))]:
        est = cgd.SGDClassifier(random_state=0, **kw).fit(Xi, yi)
        D = est.decision_function(Xi)
        np.testing.assert_allclose(D, np.squeeze(Xi @ est.coef_.T + est.intercept_),
                                   rtol=1e-12, atol=1e-12)
        p = est.predict_proba(Xi)
        np.testing.assert_allclose(p, _proba_reference(kind, D), rtol=1e-12, atol=1e-15)
        # The predicted class has the largest probability (modified_huber clips at
        # +-1, so several classes can tie at the top).
        pred_idx = np.searchsorted(est.classes_, est.predict(Xi))
        np.testing.assert_array_equal(p[np.arange(len(p)), pred_idx], p.max(axis=1))
        with np.errstate(divide="ignore"):  # modified_huber gives exact zeros
            np.testing.assert_allclose(est.predict_log_proba(Xi), np.log(p))
    with pytest.raises(AttributeError, match="predict_proba"):
        cgd.SGDClassifier(loss="hinge").fit(Xi, yi).predict_proba(Xi)


def test_sparsify_densify_keep_predictions_and_training():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 40))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    clf = cgd.SGDClassifier(penalty="l1", alpha=0.01, random_state=0).fit(X, y)
    pred, dec = clf.predict(X), clf.decision_function(X)
    assert np.sum(clf.coef_ == 0) > 10  # l1 made it worth sparsifying
    clf.sparsify()
    import scipy.sparse as sp
    assert sp.issparse(clf.coef_)
    np.testing.assert_array_equal(clf.predict(X), pred)
    np.testing.assert_allclose(clf.decision_function(X), dec, rtol=1e-12)
    clf.densify()
    assert isinstance(clf.coef_, np.ndarray)
    np.testing.assert_array_equal(clf.decision_function(X), dec)

    # Training goes on from a sparsified coef_ exactly as from the dense one (and
    # publishes a dense coef_ again).
    dense = cgd.SGDClassifier(penalty="l1", alpha=0.01, random_state=0).fit(X, y)
    sparse = cgd.SGDClassifier(penalty="l1", alpha=0.01, random_state=0).fit(X, y).sparsify()
    dense.partial_fit(X, y)
    sparse.partial_fit(X, y)
    np.testing.assert_array_equal(sparse.coef_, dense.coef_)
    np.testing.assert_array_equal(sparse.intercept_, dense.intercept_)
    assert sparse.t_ == dense.t_


def _ovr_blobs():
    rng = np.random.default_rng(5)
    centers = np.array([[4.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])
    y = rng.permutation(np.repeat([0, 1, 2], 200))
    return centers[y] + rng.standard_normal((600, 2)), y


def test_ovr_average_keeps_the_mean_of_a_problem_that_stopped_early():
    """One-vs-rest problems stop on their own; each averages its own iterates from
    update ``average`` on. The reference for problem k is scikit-learn's binary fit of
    y == k (the same problem, step for step with shuffle=False)."""
    from sklearn.linear_model import SGDClassifier as SkSGDClassifier

    X, y = _ovr_blobs()
    n = len(y)
    kw = dict(random_state=0, max_iter=200, shuffle=False)
    epochs = sorted(SkSGDClassifier(**kw).fit(X, y == k).n_iter_ for k in range(3))
    # Averaging starts in the middle one's last epoch: one problem stops before it is
    # reached, the others average over different numbers of updates.
    average = n * epochs[1] - n // 2
    avg = cgd.SGDClassifier(average=average, **kw).fit(X, y)
    refs = [SkSGDClassifier(average=average, **kw).fit(X, y == k) for k in range(3)]
    expected_n = [max(0, ref.n_iter_ * n - average + 1) for ref in refs]
    assert 0 in expected_n and max(expected_n) > n // 2 + 1
    np.testing.assert_array_equal(avg._sgd_state["avg_n"], expected_n)
    for k, ref in enumerate(refs):
        # Averaged rows are the averages; the row whose problem stopped before
        # `average` keeps its last weights (scikit-learn's own one-vs-rest would
        # publish zeros there).
        np.testing.assert_allclose(avg.coef_[k], ref.coef_[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(avg.intercept_[k], ref.intercept_[0], rtol=1e-12,
                                   atol=1e-12)
    assert avg.n_iter_ == epochs[2]


def test_float32_average_does_not_freeze():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((200_000, 5))
    w = rng.standard_normal(5)
    y = X @ w + 0.1 * rng.standard_normal(200_000)
    kw = dict(average=True, max_iter=8, tol=None, random_state=0, learning_rate="constant",
              eta0=0.01)
    e64 = cgd.SGDRegressor(**kw).fit(X, y)
    e32 = cgd.SGDRegressor(**kw).fit(X.astype(np.float32), y.astype(np.float32))
    # The float32 fit follows the float64 one to about 2e-8. A running mean kept in
    # float32 stops moving once (w - mean) / count falls below half an ulp of the mean
    # (from ~1e5 updates on here); emulated in NumPy it ends 5e-4 away from the float64
    # mean after these 1.6e6 updates.
    assert np.max(np.abs(e32.coef_ - e64.coef_)) < 1e-6
    assert np.max(np.abs(e64.coef_ - w)) < 1e-3  # and the average is a good estimate


def _adam_epoch(X, y, w, b, t, lr, alpha, batch_size, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """One epoch of mini-batch Adam on squared error from zero moments, rows in storage
    order, the L2 term on the coefficients only; t is the first update's number."""
    w, b = w.copy(), float(b)
    m, v = np.zeros(w.size + 1), np.zeros(w.size + 1)
    for s in range(0, len(y), batch_size):
        Xb, yb = X[s:s + batch_size], y[s:s + batch_size]
        r = Xb @ w + b - yb
        g = np.append(Xb.T @ r / len(yb) + alpha * w, r.mean())
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        step = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m / (np.sqrt(v) + eps)
        w, b = w - step[:-1], b - step[-1]
        t += 1
    return w, b


def test_changing_solver_between_partial_fits_resets_optimizer_state():
    X, y = _reg(n=2000)
    est = cgd.SGDRegressor(solver="adagrad", learning_rate="constant", eta0=0.1, batch_size=16,
                           shuffle=False, random_state=0)
    for _ in range(5):
        est.partial_fit(X, y)
    w0, b0, t0 = est.coef_.copy(), est.intercept_[0], est.t_
    est.set_params(solver="adam", eta0=0.001)
    est.partial_fit(X, y)
    # Adam from zero moments (not from adagrad's sums of squares), the update counter
    # going on.
    w, b = _adam_epoch(X, y, w0, b0, t0, lr=0.001, alpha=est.alpha, batch_size=16)
    np.testing.assert_allclose(est.coef_, w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(est.intercept_[0], b, rtol=1e-12, atol=1e-14)
    assert est.t_ == t0 + 2000 // 16


def test_partial_fit_continues_from_a_coef_set_by_hand():
    from sklearn.linear_model import SGDRegressor as SkSGDRegressor

    X, y = _reg(n=200)
    fits = []
    for cls in (cgd.SGDRegressor, SkSGDRegressor):
        est = cls(shuffle=False, learning_rate="constant", eta0=1e-4).partial_fit(X, y)
        est.coef_ = np.full_like(est.coef_, 100.0)
        fits.append(est.partial_fit(X, y).coef_)
    # As scikit-learn's: the next epoch starts from the coef_ set by hand.
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-12)
    assert np.all(fits[0] > 90)


def test_scratch_memory_is_sized_to_the_batch():
    import tracemalloc
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 2000))
    y = np.arange(300) % 50  # 50 classes: P = 50 * 2001 parameters (0.8 MB)
    tracemalloc.start()
    cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", max_iter=1, tol=None).fit(X, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Per-sample plain SGD needs no chunk gradient buffers (64 of them would be 51 MB).
    assert peak < 20e6


def test_more_than_256_classes():
    """Class indices beyond one byte: each of the 300 one-vs-rest rows is trained on
    its own class, as scikit-learn's."""
    from sklearn.linear_model import SGDClassifier as SkSGDClassifier

    rng = np.random.default_rng(8)
    y = np.arange(600) % 300
    X = rng.standard_normal((600, 3)) + y[:, None] * 0.01
    est = cgd.SGDClassifier(max_iter=2, tol=None, shuffle=False).fit(X, y)
    ref = SkSGDClassifier(max_iter=2, tol=None, shuffle=False).fit(X, y)
    assert est.coef_.shape == (300, 3)
    scale = np.max(np.abs(ref.coef_))
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=0, atol=1e-12 * scale)


# An interrupt can land between a curve's append and the commit of its epoch (seen in a
# Ctrl-C test: loss_curve_ one entry longer than n_iter_). These inject one there.
class _AppendThenInterrupt(list):
    """A curve whose second append (within the call under test) raises Ctrl-C after
    appending, as a signal arriving just after it would."""

    def __init__(self, items, after=2):
        super().__init__(items)
        self.left = after

    def append(self, x):
        super().append(x)
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_interrupt_between_curve_append_and_commit_keeps_attributes_consistent_mlp():
    X, y = load_iris(return_X_y=True)

    def first_fit():
        est = cgd.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0,
                                early_stopping=True, n_iter_no_change=100, tol=0.0)
        return est.fit(X, y)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = first_fit()
        est.loss_curve_ = _AppendThenInterrupt(est.loss_curve_)
        est.set_params(warm_start=True, max_iter=10)
        with pytest.raises(KeyboardInterrupt):
            est.fit(X, y)
        # Reference: the same warm start stopped after its one committed epoch.
        ref = first_fit().set_params(warm_start=True, max_iter=1).fit(X, y)
    assert list(est.loss_curve_) == ref.loss_curve_
    assert est.validation_scores_ == ref.validation_scores_
    assert est.n_iter_ == ref.n_iter_ and est.loss_ == ref.loss_
    for a, b in zip(est.coefs_, ref.coefs_):
        np.testing.assert_array_equal(a, b)


def test_interrupt_between_curve_append_and_commit_keeps_attributes_consistent_linear():
    X, y = load_iris(return_X_y=True)
    est = cgd.SGDClassifier(max_iter=10, tol=None, random_state=0)
    calls = {"n": 0}
    published = est._published

    def interrupt_on_third_epoch(*args, **kwargs):
        # _published runs inside the commit, after the epoch's loss was appended
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return published(*args, **kwargs)

    est._published = interrupt_on_third_epoch
    with pytest.raises(KeyboardInterrupt):
        est.fit(X, y)
    assert est.n_iter_ == 2
    assert len(est.loss_curve_) == est.n_iter_
    assert est.loss_ == est.loss_curve_[-1]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_decision_values_equal_the_linear_formula(dtype):
    """predict / decision_function of dense X run natively on the fit's threads (not
    through BLAS); they must equal X @ coef_.T + intercept_ for every model shape, memory
    order and thread count, and keep the fallback's dtypes for other inputs."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 40)).astype(dtype)
    y = X @ rng.standard_normal(40)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    models = [
        (cgd.SGDRegressor(max_iter=2, tol=None, random_state=0), y.astype(dtype)),
        (cgd.SGDClassifier(max_iter=2, tol=None, random_state=0), (y > 0).astype(int)),
        (cgd.SGDClassifier(max_iter=2, tol=None, random_state=0), np.digitize(y, [-3, 0, 3])),
    ]
    for est, yy in models:
        for n_jobs in (1, 2, 3):
            est.set_params(n_jobs=n_jobs).fit(X, yy)
            ref = (X.astype(np.float64) @ est.coef_.T.astype(np.float64)
                   + est.intercept_.astype(np.float64))
            ref = ref.ravel() if ref.ndim == 2 and ref.shape[1] == 1 else ref
            f = est.predict if isinstance(est, cgd.SGDRegressor) else est.decision_function
            for Xq in (X, np.asfortranarray(X), X[::2]):
                got = f(Xq)
                r = ref if Xq.shape[0] == X.shape[0] else ref[::2]
                assert got.dtype == dtype and got.shape == r.shape
                np.testing.assert_allclose(got, r, rtol=tol, atol=tol * np.abs(r).max())
            if dtype == np.float32:  # float64 X on a float32 model: float64 values
                assert f(X.astype(np.float64)).dtype == np.float64
