"""cgd's MLPs as drop-in replacements for scikit-learn 1.9's ``sklearn.neural_network``.

1. scikit-learn's own estimator checks (``parametrize_with_checks``), with no expected
   failures: scikit-learn marks none for its own MLPs.
2. Exact equivalence with ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``
   (float64, same ``random_state``): ``coefs_`` / ``intercepts_`` equal to 1e-9 relative
   to the largest weight, the same ``n_iter_`` and ``t_``, the same ``loss_curve_``,
   ``loss_``, ``best_loss_``, ``validation_scores_`` and ``best_validation_score_``.
   Covered: sgd (Nesterov momentum, classical momentum, no momentum; constant,
   invscaling and adaptive schedules) and adam; every hidden activation; one and two
   hidden layers; binary, multiclass and multilabel classification; single- and
   multi-output squared-error and Poisson regression; sample_weight; early stopping;
   the training-loss stopping rule; batch sizes not dividing n; shuffle on and off;
   warm_start; sequences of partial_fit calls; the ConvergenceWarning; lbfgs (looser
   tolerance). Then predict / predict_proba / predict_log_proba / score on held-out data.
3. Held-out scores on scikit-learn's bundled digits, breast_cancer (accuracy) and
   diabetes (R^2, standardised y) within 0.02 of scikit-learn's, with scikit-learn's
   defaults and with a classic architecture (sigmoid network, mini-batch SGD); and
   float32 input scoring within 0.02 of scikit-learn's float64 fit.
4. ``class_weight`` (cgd's addition): a dict or 'balanced' trains exactly as the
   corresponding ``sample_weight`` does (in cgd and in scikit-learn).
"""

import functools
import re
import warnings

import numpy as np
import pytest
import sklearn.neural_network as sk_nn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

import cgd

# Both libraries do the same arithmetic on the same numbers; only the order of the
# summations differs (scikit-learn's GEMMs go through BLAS, cgd's kernel blocks its own
# sums), so the weights differ by a few ulps per step. Measured, that stays ~1e-15
# relative after 200 epochs; 1e-9 leaves a wide margin while any real difference (a
# missing 1/sum(sw), an alpha on the biases, a schedule off by one epoch, another
# shuffle) moves the weights by far more than that within one epoch.
RTOL = 1e-9
# L-BFGS's line searches and curvature pairs amplify last-bit differences in the
# objective (measured on diabetes: 1e-15 after 10 iterations, 6e-9 after 50, 0.4 after
# 200, when a trial step is accepted by one library and rejected by the other):
# checked with a looser tolerance over at most 30 iterations.
LBFGS_RTOL = 1e-6
MAX_ITER_MESSAGE = ("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                    "optimization hasn't converged yet.")


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """scikit-learn's small GEMMs run far faster on one BLAS thread (OpenBLAS's spinning
    threads cost seconds per fit when another process holds a core); cgd caps BLAS
    itself. Only the rounding of scikit-learn's sums can depend on this."""
    with threadpool_limits(1, user_api="blas"):
        yield


# ------------------------------------------------------------ 1. scikit-learn's checks
# sklearn/utils/_test_common/instance_generator.py lists no PER_ESTIMATOR_XFAIL_CHECKS
# for MLPClassifier / MLPRegressor, so none are expected here either. Both declare
# sparse input (input_tags.sparse), so the checks include scikit-learn's sparse ones.
@parametrize_with_checks([cgd.MLPClassifier(max_iter=100), cgd.MLPRegressor(max_iter=100)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------ data
@functools.cache
def _digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@functools.cache
def _breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@functools.cache
def _diabetes():
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _standardise(y):
    return (y - y.mean(axis=0)) / y.std(axis=0)


@functools.cache
def _task(task):
    """(X, y) of one learning task, all from the bundled data sets."""
    if task == "binary":
        return _breast_cancer()
    if task == "multiclass":
        return _digits()
    if task == "multilabel":  # indicator matrix: even, >= 5, multiple of 3
        X, y = _digits()
        return X, np.column_stack([y % 2 == 0, y >= 5, y % 3 == 0]).astype(int)
    X, y = _diabetes()
    if task == "regression":
        return X, _standardise(y)
    if task == "multioutput":
        return X, _standardise(np.column_stack([y, np.log(y)]))
    if task == "poisson":  # counts, zeros included
        return X, np.floor(y / 50.0)
    raise ValueError(task)


def _estimator_name(task):
    return "MLPClassifier" if task in ("binary", "multiclass", "multilabel") else "MLPRegressor"


def _random_weights(n, seed=0):
    return np.random.RandomState(seed).uniform(0.2, 2.0, n)


# ------------------------------------------------------------ 2. exact equivalence
def _fit_pair(name, params, train, n_jobs=1):
    """A cgd and a scikit-learn estimator built with ``params``, each trained by
    ``train(estimator)``; ConvergenceWarnings (short runs) silenced.

    cgd runs single-threaded (n_jobs=1) unless told otherwise: its fits are bit-for-bit
    the same for every n_jobs (tests/test_mlp_training.py), and OpenMP threads that
    spin-wait at every mini-batch cost seconds per fit on a shared 2-core machine."""
    fitted = []
    for module in (cgd, sk_nn):
        est = getattr(module, name)(**params)
        if module is cgd:
            est.set_params(n_jobs=n_jobs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            train(est)
        fitted.append(est)
    return fitted


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _rel_err(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), np.finfo(float).tiny))


def _close(a, b, rtol):
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=1e-12)


def _mismatches(ours, ref, rtol=RTOL):
    """Every fitted attribute on which cgd's estimator differs from scikit-learn's."""
    out = [f"{attr}: {getattr(ours, attr)!r} vs {getattr(ref, attr)!r}"
           for attr in ("n_iter_", "n_layers_", "n_outputs_", "out_activation_")
           if getattr(ours, attr) != getattr(ref, attr)]
    if hasattr(ref, "classes_") and not np.array_equal(ours.classes_, ref.classes_):
        out.append(f"classes_: {ours.classes_} vs {ref.classes_}")
    shapes = [[a.shape for a in est.coefs_ + est.intercepts_] for est in (ours, ref)]
    if shapes[0] != shapes[1]:
        return out + [f"weight shapes {shapes[0]} vs {shapes[1]}"]
    err = _rel_err(_flat(ours.coefs_ + ours.intercepts_), _flat(ref.coefs_ + ref.intercepts_))
    if not err <= rtol:
        out.append(f"max |weight diff| / max |weight| = {err:.3g}")
    if ref.solver == "lbfgs":
        if not _close(ours.loss_, ref.loss_, rtol):
            out.append(f"loss_: {ours.loss_!r} vs {ref.loss_!r}")
        return out
    if ours.t_ != ref.t_:
        out.append(f"t_: {ours.t_} vs {ref.t_}")
    for attr in ("loss_", "best_loss_", "loss_curve_", "validation_scores_",
                 "best_validation_score_"):
        a, b = getattr(ours, attr), getattr(ref, attr)
        if not _close(a, b, rtol):
            out.append(f"{attr}: {a!r} vs {b!r}")
    return out


def _assert_matches(task, sample_weight=None, train=None, **params):
    """Fit both libraries on ``task`` with ``params``; assert they agree; return them."""
    X, y = _task(task)
    params = {"hidden_layer_sizes": (12,), "max_iter": 15, "random_state": 0, **params}
    if train is None:
        def train(est):
            est.fit(X, y, sample_weight=sample_weight)
    ours, ref = _fit_pair(_estimator_name(task), params, train)
    mismatches = _mismatches(ours, ref)
    assert not mismatches, f"{task} {params}:\n" + "\n".join(mismatches)
    return ours, ref


SGD = dict(solver="sgd", learning_rate_init=0.02)
ADAM = dict(solver="adam", learning_rate_init=0.005)
SOLVERS = {
    "sgd-nesterov": SGD,
    "sgd-momentum": {**SGD, "nesterovs_momentum": False},
    "sgd-no-momentum": {**SGD, "momentum": 0.0},
    "sgd-invscaling": {**SGD, "learning_rate": "invscaling", "learning_rate_init": 0.1,
                       "power_t": 0.25},
    "sgd-invscaling-no-momentum": {**SGD, "learning_rate": "invscaling", "momentum": 0.0,
                                   "learning_rate_init": 0.1, "power_t": 0.25},
    "adam": ADAM,
}


@pytest.mark.parametrize("task", ["multiclass", "regression"])
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_matches_sklearn_solvers(task, solver):
    _assert_matches(task, **SOLVERS[solver])


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_matches_sklearn_adaptive_schedule(task):
    # A large tol makes every epoch a "plateau": the step is cut by 5 every
    # n_iter_no_change + 1 epochs, and no_improvement_count restarts after each cut.
    _, ref = _assert_matches(task, **SGD, learning_rate="adaptive", tol=0.5,
                             n_iter_no_change=2, max_iter=12)
    assert ref._optimizer.learning_rate < ref.learning_rate_init / 5  # cut at least twice
    assert ref.n_iter_ == 12


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_matches_sklearn_adaptive_schedule_stops_when_step_too_small(task):
    # 1e-5 -> 2e-6 -> 4e-7, and the third plateau at a step <= 1e-6 stops the fit.
    _, ref = _assert_matches(task, **{**SGD, "learning_rate_init": 1e-5},
                             learning_rate="adaptive", tol=0.5, n_iter_no_change=1,
                             max_iter=30)
    assert ref.n_iter_ < 30


@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_matches_sklearn_training_loss_stopping_rule(task, solver):
    params = SGD if solver == "sgd" else ADAM
    _, ref = _assert_matches(task, **params, tol=0.02, n_iter_no_change=2, max_iter=30)
    assert ref.n_iter_ < 30  # the stopping rule, not max_iter, ended the fit


@pytest.mark.parametrize("hidden", [(10,), (10, 7)], ids=["1-layer", "2-layers"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("task, solver", [("binary", "adam"), ("multiclass", "sgd"),
                                          ("regression", "sgd"), ("multioutput", "adam")])
def test_matches_sklearn_activations(task, solver, activation, hidden):
    params = SGD if solver == "sgd" else ADAM
    _assert_matches(task, **params, activation=activation, hidden_layer_sizes=hidden,
                    max_iter=8)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression",
                                  "multioutput", "poisson"])
def test_matches_sklearn_targets(task, solver):
    params = SGD if solver == "sgd" else ADAM
    if task == "poisson":
        params = {**params, "loss": "poisson", "learning_rate_init": 0.002}
    _assert_matches(task, **params, hidden_layer_sizes=(12, 6))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression",
                                  "multioutput", "poisson"])
def test_matches_sklearn_sample_weight(task, solver):
    params = SGD if solver == "sgd" else ADAM
    if task == "poisson":
        params = {**params, "loss": "poisson", "learning_rate_init": 0.002}
    X, _ = _task(task)
    _assert_matches(task, sample_weight=_random_weights(len(X)), **params, alpha=0.01)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [37, 1000, 5000])
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_matches_sklearn_batches(task, batch_size, shuffle):
    # digits: 1797 = 48 * 37 + 21, diabetes: 442 = 11 * 37 + 35; 1000 leaves a
    # remainder batch on digits and is clipped to n (with a warning) on diabetes; 5000
    # is clipped on both.
    X, _ = _task(task)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Got `batch_size` less than 1")
        _assert_matches(task, **SGD, batch_size=batch_size, shuffle=shuffle,
                        sample_weight=_random_weights(len(X)), max_iter=6)


@pytest.mark.parametrize("sample_weight", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("task, solver", [("binary", "adam"), ("multiclass", "sgd"),
                                          ("multilabel", "adam"), ("regression", "sgd"),
                                          ("multioutput", "adam")])
def test_matches_sklearn_early_stopping(task, solver, sample_weight):
    params = SGD if solver == "sgd" else ADAM
    X, _ = _task(task)
    sw = _random_weights(len(X)) if sample_weight else None
    _assert_matches(task, **params, early_stopping=True, validation_fraction=0.2,
                    tol=0.01, n_iter_no_change=3, max_iter=25, sample_weight=sw)


def test_early_stopping_really_stops_and_restores_best_weights():
    # Guard for the test above: with these settings scikit-learn stops before max_iter
    # and the best epoch is not the last, so the restored weights are really checked.
    ours, ref = _assert_matches("multiclass", **SGD, early_stopping=True,
                                validation_fraction=0.2, tol=0.01, n_iter_no_change=3,
                                max_iter=25)
    assert ref.n_iter_ < 25
    assert np.argmax(ref.validation_scores_) < ref.n_iter_ - 1


@pytest.mark.parametrize("second", ["same-data", "subset"])
@pytest.mark.parametrize("task, solver", [("multiclass", "sgd"), ("multiclass", "adam"),
                                          ("regression", "sgd"), ("regression", "adam")])
def test_matches_sklearn_warm_start(task, solver, second):
    X, y = _task(task)
    params = {**(SGD if solver == "sgd" else ADAM), "warm_start": True, "max_iter": 6}

    def train(est):
        est.fit(X, y)
        est.set_params(max_iter=4, learning_rate_init=params["learning_rate_init"] / 2)
        if second == "subset":
            est.fit(X[::2], y[::2], sample_weight=_random_weights(len(X[::2])))
        else:
            est.fit(X, y)

    _assert_matches(task, train=train, **params)


def _warm_start_early_stopping(task, solver):
    """Two early-stopping fits, the second warm-started with half the step; returns
    (cgd, scikit-learn, scikit-learn's weights after the first fit)."""
    X, y = _task(task)
    params = {**(SGD if solver == "sgd" else ADAM), "hidden_layer_sizes": (12,),
              "random_state": 0, "warm_start": True, "max_iter": 2,
              "early_stopping": True, "n_iter_no_change": 4, "tol": 0.01}
    after_first = []

    def train(est):
        est.fit(X, y)
        if isinstance(est, (sk_nn.MLPRegressor, sk_nn.MLPClassifier)):
            after_first.append(_flat(est.coefs_ + est.intercepts_))
        est.set_params(max_iter=8, learning_rate_init=params["learning_rate_init"] / 2)
        est.fit(X, y)

    ours, ref = _fit_pair(_estimator_name(task), params, train)
    return ours, ref, after_first[0]


@pytest.mark.parametrize("task, solver", [("multiclass", "sgd"), ("multiclass", "adam"),
                                          ("regression", "adam")])
def test_matches_sklearn_warm_start_early_stopping(task, solver):
    # The second fit draws its validation split afresh (from the start of the stream,
    # as no initial weights are drawn) and keeps the first fit's best score to beat.
    ours, ref, _ = _warm_start_early_stopping(task, solver)
    assert not (mismatches := _mismatches(ours, ref)), "\n".join(mismatches)
    # guard: the second fit beat the first's best score, so its best weights are kept
    # (see the next test for the other case)
    assert ref.best_validation_score_ > max(ref.validation_scores_[:2])


def test_warm_start_early_stopping_without_improvement_keeps_first_best_weights():
    # When the second fit never beats the first fit's best validation score, the
    # weights to restore are those the first fit ended with. scikit-learn 1.9 instead
    # ends with the second fit's last weights: its first fit leaves coefs_ aliased to
    # _best_coefs (coefs_ = _best_coefs), which the second fit's in-place updates then
    # overwrite. cgd restores the first fit's best weights; all else matches.
    ours, ref, after_first = _warm_start_early_stopping("regression", "sgd")
    assert ref.best_validation_score_ == max(ref.validation_scores_[:2])  # no improvement
    ref_weights = _flat(ref.coefs_ + ref.intercepts_)
    assert _rel_err(ref_weights, after_first) > 1e-3  # scikit-learn's aliasing at work
    assert _rel_err(_flat(ours.coefs_ + ours.intercepts_), after_first) <= RTOL
    mismatches = [m for m in _mismatches(ours, ref) if not m.startswith("max |weight")]
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("task, solver", [("multiclass", "sgd"), ("multiclass", "adam"),
                                          ("multilabel", "sgd"), ("regression", "adam"),
                                          ("poisson", "sgd")])
def test_matches_sklearn_partial_fit(task, solver, shuffle):
    X, y = _task(task)
    params = {**(SGD if solver == "sgd" else ADAM), "shuffle": shuffle}
    if task == "poisson":
        params.update(loss="poisson", learning_rate_init=0.002)
    if task == "multiclass":
        y = np.array(list("abcdefghij"))[y]  # string labels
    chunks = np.array_split(np.arange(len(X)), 4)
    sw = _random_weights(len(X))

    def train(est):
        for epoch in range(2):
            for i, rows in enumerate(chunks):
                kw = {"sample_weight": sw[rows]} if i % 2 else {}
                if epoch == i == 0 and task == "multiclass":
                    kw["classes"] = np.unique(y)
                elif epoch == i == 0 and task == "multilabel":  # scikit-learn wants them
                    kw["classes"] = np.arange(y.shape[1])
                est.partial_fit(X[rows], y[rows], **kw)

    _assert_matches(task, train=train, **params)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_matches_sklearn_partial_fit_after_fit(task):
    # partial_fit continues the optimizer state (momentum, adam moments) left by fit.
    X, y = _task(task)

    def train(est):
        est.fit(X, y)
        est.partial_fit(X[:300], y[:300])
        est.partial_fit(X[100:], y[100:])

    for params in (SGD, ADAM):
        _assert_matches(task, train=train, **params, max_iter=5)


@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("activation", ["logistic", "tanh"])
def test_matches_sklearn_lbfgs(task, activation):
    X, y = _task(task)
    ours, ref = _fit_pair(
        _estimator_name(task),
        dict(solver="lbfgs", hidden_layer_sizes=(8,), activation=activation, max_iter=30,
             random_state=0),
        lambda est: est.fit(X, y))
    mismatches = _mismatches(ours, ref, rtol=LBFGS_RTOL)
    assert not mismatches, "\n".join(mismatches)


def test_lbfgs_multioutput_loss_as_sklearn_reports_it():
    # Multi-output lbfgs is not compared with scikit-learn's: scikit-learn hands
    # L-BFGS-B the squared error averaged over the outputs with the gradient of its sum
    # over them, so its line searches differ from cgd's (whose pair is consistent).
    # cgd's loss_ is still reported as scikit-learn defines it.
    X, Y = _task("multioutput")
    alpha = 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = cgd.MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), alpha=alpha,
                                max_iter=10, random_state=0, n_jobs=1).fit(X, Y)
    # scikit-learn's squared_loss plus its L2 term, at cgd's weights
    H = np.maximum(X @ ours.coefs_[0] + ours.intercepts_[0], 0)
    P = H @ ours.coefs_[1] + ours.intercepts_[1]
    np.testing.assert_allclose(P, ours.predict(X), rtol=1e-12)
    l2 = sum(np.sum(W ** 2) for W in ours.coefs_)
    expected = 0.5 * np.mean((Y - P) ** 2) + 0.5 * alpha * l2 / len(X)
    assert ours.loss_ == pytest.approx(expected, rel=1e-10)


def test_matches_sklearn_default_n_jobs():
    # Everything else runs cgd single-threaded (see _fit_pair); the default n_jobs
    # (all cores) must give the same fit.
    X, y = _task("multiclass")
    ours, ref = _fit_pair("MLPClassifier", dict(hidden_layer_sizes=(12,), max_iter=3,
                                                random_state=0, **ADAM),
                          lambda est: est.fit(X, y), n_jobs=None)
    assert ours.n_jobs is None
    assert not (mismatches := _mismatches(ours, ref)), "\n".join(mismatches)


def test_convergence_warning_as_sklearn():
    X, y = _task("binary")
    params = dict(hidden_layer_sizes=(5,), max_iter=7, random_state=0)
    message = re.escape(MAX_ITER_MESSAGE % 7)
    for module in (sk_nn, cgd):  # scikit-learn first: the wording is its own
        with pytest.warns(ConvergenceWarning, match=message):
            module.MLPClassifier(**params).fit(X, y)
    # and no warning when the stopping rule ends the fit before max_iter
    for module in (sk_nn, cgd):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            est = module.MLPClassifier(**params, tol=1.0, n_iter_no_change=1).fit(X, y)
        assert est.n_iter_ < 7


# ---------------------------------------------- predictions on held-out data
@functools.cache
def _split(dataset):
    loader = {"diabetes": load_diabetes, "breast_cancer": load_breast_cancer,
              "digits": load_digits}[dataset]
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=None if dataset == "diabetes" else y)
    scaler = StandardScaler().fit(X_train)
    if dataset == "diabetes":  # standardised with the training statistics
        mean, std = y_train.mean(), y_train.std()
        y_train, y_test = (y_train - mean) / std, (y_test - mean) / std
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


_PREDICT_CASES = {
    "binary": ("breast_cancer", lambda y: y, {}),
    "multiclass": ("digits", lambda y: y, {}),
    "multilabel": ("digits", lambda y: np.column_stack([y % 2 == 0, y >= 5]).astype(int), {}),
    "regression": ("diabetes", lambda y: y, {}),
    "multioutput": ("diabetes", lambda y: np.column_stack([y, y ** 2]), {}),
    "poisson": ("diabetes", lambda y: np.floor(2 * (y - y.min())), {"loss": "poisson"}),
}


@pytest.mark.parametrize("task", list(_PREDICT_CASES))
def test_predictions_match_sklearn(task):
    dataset, target, extra = _PREDICT_CASES[task]
    X_train, X_test, y_train, y_test = _split(dataset)
    y_train, y_test = target(y_train), target(y_test)
    ours, ref = _fit_pair(
        _estimator_name(task),
        dict(hidden_layer_sizes=(16,), max_iter=20, random_state=1, **ADAM, **extra),
        lambda est: est.fit(X_train, y_train))
    assert not (mismatches := _mismatches(ours, ref)), "\n".join(mismatches)
    methods = ["predict", "predict_proba", "predict_log_proba"]
    for method in methods if hasattr(ref, "predict_proba") else methods[:1]:
        a, b = getattr(ours, method)(X_test), getattr(ref, method)(X_test)
        assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, method
        if method == "predict" and _estimator_name(task) == "MLPClassifier":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12, err_msg=method)
    if task != "poisson":  # scikit-learn's score: accuracy / R^2 (needs y_test >= 0 only)
        assert ours.score(X_test, y_test) == pytest.approx(ref.score(X_test, y_test),
                                                            rel=RTOL, abs=1e-12)


# ------------------------------------------------------------ 3. held-out scores
SETTINGS = {
    # scikit-learn's defaults: relu, adam, hidden_layer_sizes=(100,), max_iter=200
    "defaults": {},
    # the classic architecture: a sigmoid network trained by mini-batch SGD
    "seeds": dict(activation="logistic", solver="sgd", hidden_layer_sizes=(64,),
                  batch_size=32, learning_rate_init=0.1),
}
SEEDS = (0,)


@functools.cache
def _mean_score(module_name, dataset, setting, dtype=np.float64):
    """Held-out score averaged over SEEDS (each library's fit is stochastic)."""
    module = {"cgd": cgd, "sklearn": sk_nn}[module_name]
    X_train, X_test, y_train, y_test = _split(dataset)
    params = dict(SETTINGS[setting])
    if dataset == "diabetes" and setting == "seeds":
        params["learning_rate_init"] = 0.01  # 0.1 with momentum 0.9 overshoots on R^2
    name = "MLPRegressor" if dataset == "diabetes" else "MLPClassifier"
    scores = []
    for seed in SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = getattr(module, name)(random_state=seed, **params)
            if module is cgd:
                est.set_params(n_jobs=1)
            est.fit(X_train.astype(dtype), y_train)
        scores.append(est.score(X_test.astype(dtype), y_test))
    return float(np.mean(scores))


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("dataset", ["digits", "breast_cancer", "diabetes"])
def test_held_out_score_close_to_sklearn(dataset, setting):
    ours = _mean_score("cgd", dataset, setting)
    ref = _mean_score("sklearn", dataset, setting)
    assert abs(ours - ref) <= 0.02, f"cgd {ours:.4f} vs sklearn {ref:.4f}"


@pytest.mark.parametrize("dataset", ["digits", "diabetes"])
def test_float32_held_out_score_close_to_sklearn_float64(dataset):
    ours = _mean_score("cgd", dataset, "defaults", np.float32)
    ref = _mean_score("sklearn", dataset, "defaults")
    assert abs(ours - ref) <= 0.02, f"cgd float32 {ours:.4f} vs sklearn float64 {ref:.4f}"


# ------------------------------------------------------------ 4. class_weight
def _class_weight_cases():
    yield "binary", {0: 2.5, 1: 0.7}
    yield "multiclass", {0: 3.0, 4: 0.25, 7: 1.5}  # classes not listed weigh 1
    yield "binary", "balanced"
    yield "multiclass", "balanced"


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("with_sample_weight", [False, True])
@pytest.mark.parametrize("task, class_weight", list(_class_weight_cases()))
def test_class_weight_is_sample_weight(task, class_weight, with_sample_weight,
                                       early_stopping):
    X, y = _task(task)
    classes = np.unique(y)
    if class_weight == "balanced":
        per_class = compute_class_weight("balanced", classes=classes, y=y)
    else:
        per_class = np.array([class_weight.get(c, 1.0) for c in classes])
    sw = _random_weights(len(y), seed=3) if with_sample_weight else None
    equivalent_sw = per_class[np.searchsorted(classes, y)] * (1.0 if sw is None else sw)
    params = dict(hidden_layer_sizes=(12,), max_iter=10, random_state=0,
                  early_stopping=early_stopping, **SGD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = cgd.MLPClassifier(class_weight=class_weight, n_jobs=1, **params).fit(
            X, y, sample_weight=sw)
        ours = cgd.MLPClassifier(n_jobs=1, **params).fit(X, y, sample_weight=equivalent_sw)
        ref = sk_nn.MLPClassifier(**params).fit(X, y, sample_weight=equivalent_sw)
        unweighted = cgd.MLPClassifier(n_jobs=1, **params).fit(X, y, sample_weight=sw)
    assert not (m := _mismatches(weighted, ours)), "\n".join(m)
    assert not (m := _mismatches(weighted, ref)), "\n".join(m)
    # and the weights did matter
    assert _rel_err(_flat(weighted.coefs_), _flat(unweighted.coefs_)) > 1e-3


# ------------------------------------------------ scikit-learn's messages and behaviour
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_nonfinite_weights_message_keeps_sklearn_words(solver):
    # scikit-learn's own test of this message: inputs near the largest float
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    y = rng.standard_normal(size=10)
    sklearn_words = ("Solver produced non-finite parameter weights. The input data may "
                     "contain large values and need to be preprocessed.")
    for module in (sk_nn, cgd):  # scikit-learn first: the words are its own
        est = module.MLPRegressor(solver=solver, random_state=0)
        with warnings.catch_warnings():
            # scikit-learn's overflows, and its 200 epochs of NaN before it checks
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", ConvergenceWarning)
            with pytest.raises(ValueError, match=re.escape(sklearn_words)) as info:
                est.fit(X, y)
    # cgd stops at the epoch that overflowed and says so; nothing half-fitted is kept
    assert re.search(r"diverged at epoch 1\b.*learning_rate_init", str(info.value))
    assert not hasattr(est, "coefs_")


@pytest.mark.parametrize("learning_rate_init", [0.05, 1e100])
def test_early_stopping_divergence_keeps_best_weights_as_sklearn(learning_rate_init):
    # Raw diabetes targets (~150): plain SGD with momentum overflows within a few
    # epochs at 0.05, in the first at 1e100. scikit-learn's MLP does not raise then: it
    # runs its remaining epochs on NaN (which never score best) and restores the best
    # validated weights (its initial weights when no epoch validated); it warns that
    # max_iter was reached. cgd stops at the overflowing epoch, warns, and ends on the
    # same weights.
    X, y = _diabetes()
    params = dict(hidden_layer_sizes=(12,), solver="sgd", learning_rate_init=learning_rate_init,
                  early_stopping=True, random_state=0, max_iter=30)
    fitted = []
    for module in (sk_nn, cgd):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scikit-learn's overflows
            with pytest.warns(ConvergenceWarning) as record:
                fitted.append(module.MLPRegressor(**params).fit(X, y))
    ref, ours = fitted
    messages = [str(w.message) for w in record if w.category is ConvergenceWarning]
    assert any(f"diverged at epoch {ours.n_iter_ + 1}:" in m for m in messages), messages
    weights = _flat(ours.coefs_ + ours.intercepts_)
    assert np.isfinite(weights).all() and np.isfinite(ours.predict(X)).all()
    assert _rel_err(weights, _flat(ref.coefs_ + ref.intercepts_)) <= RTOL
    # cgd's curve is scikit-learn's up to the overflow, with the same best score
    assert _close(ours.validation_scores_, ref.validation_scores_[:ours.n_iter_], RTOL)
    assert _close(ours.best_validation_score_, ref.best_validation_score_, RTOL)
    if learning_rate_init == 0.05:
        # guard: finite epochs after the best one, so the restore is really checked
        assert 0 <= np.argmax(ours.validation_scores_) < ours.n_iter_ - 1
        assert "best validated weights" in messages[-1]
    else:
        assert ours.n_iter_ == 0 and "no epoch was validated" in messages[-1]


@pytest.mark.parametrize("how", ["adam", "lbfgs", "early_stopping", "partial_fit"])
def test_single_class_as_sklearn(how):
    # scikit-learn's MLPClassifier accepts a target with one class: one logistic
    # output trained towards 0, predict returns that class, predict_proba has the
    # columns [1 - p, p].
    X, _ = _task("binary")
    y = np.array(["only"] * len(X), dtype=object)
    params = dict(hidden_layer_sizes=(6,), max_iter=8, random_state=0, **ADAM)
    if how == "lbfgs":
        params.update(solver="lbfgs")
    train = (lambda est: est.partial_fit(X, y, classes=["only"])) if how == "partial_fit" \
        else (lambda est: est.fit(X, y))
    if how == "early_stopping":
        params.update(early_stopping=True)
    ours, ref = _fit_pair("MLPClassifier", params, train)
    tol = LBFGS_RTOL if how == "lbfgs" else RTOL
    assert not (mismatches := _mismatches(ours, ref, tol)), "\n".join(mismatches)
    np.testing.assert_array_equal(ours.classes_, ["only"])
    np.testing.assert_array_equal(ours.predict(X[:7]), ref.predict(X[:7]))
    proba = ours.predict_proba(X[:7])
    assert proba.shape == ref.predict_proba(X[:7]).shape == (7, 2)
    np.testing.assert_allclose(proba, ref.predict_proba(X[:7]), rtol=1e-6)
    assert ours.score(X, y) == ref.score(X, y) == 1.0


def test_stratified_split_error_names_the_users_labels():
    # One sample of a class cannot be stratified into a training and a validation
    # set. scikit-learn's MLP says so in words code may match on, but names its encoded
    # label ('True'); cgd keeps the words and names the user's label.
    X, _ = _task("binary")
    y = np.array(["common"] * (len(X) - 1) + ["rare"], dtype=object)
    words = "The least populated classes? in y ha(s|ve) only 1 member"
    messages = []
    for module in (sk_nn, cgd):  # scikit-learn first: the words are its own
        with pytest.raises(ValueError, match=words) as info:
            module.MLPClassifier(early_stopping=True, max_iter=2).fit(X, y)
        messages.append(str(info.value))
    assert "['True']" in messages[0]
    assert "'rare'" in messages[1] and "True" not in messages[1]
