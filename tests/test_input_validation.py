"""Bad input gives a clear error before training, and loses nothing.

Covers invalid data (NaN / inf / shapes / strings / one class / wrong number of
features), invalid and unsupported parameters, divergence, unusual but valid input
layouts (read-only, memory-mapped, Fortran, strided, big-endian, int, bool), Ctrl-C
during a long fit, and pickling.
"""

import json
import os
import pickle
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from cgd._compat import InvalidParameterError

import cgd


N, D = 40, 3


# ---------------------------------------------------------------------- helpers
def _data(kind, n=N, d=D, seed=0):
    """Small well-scaled (X, y, sample_weight) for 'reg' or 'clf' (three classes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    sw = rng.uniform(0.5, 2.0, n)
    if kind == "reg":
        y = X @ np.arange(1.0, d + 1) + 0.1 * rng.standard_normal(n)
    else:
        y = np.digitize(X[:, 0] + 0.3 * X[:, 1], [-0.4, 0.4])  # labels 0, 1, 2
    return X, y, sw


def _make(kind, **kw):
    base = dict(random_state=0, tol=None, max_iter=3)
    base.update(kw)
    if kind == "reg":
        return cgd.SGDRegressor(**base)
    return cgd.SGDClassifier(**{"loss": "log_loss", **base})


def _snapshot(est):
    """What a fitted estimator must not lose: weights and predictions."""
    X, _, _ = _data("reg" if isinstance(est, cgd.SGDRegressor) else "clf", seed=99)
    return {
        "coef": est.coef_.copy(),
        "intercept": est.intercept_.copy(),
        "predict": est.predict(X).copy(),
        "X": X,
    }


def _assert_unchanged(est, snap):
    np.testing.assert_array_equal(est.coef_, snap["coef"])
    np.testing.assert_array_equal(est.intercept_, snap["intercept"])
    assert np.isfinite(est.coef_).all() and np.isfinite(est.intercept_).all()
    np.testing.assert_array_equal(est.predict(snap["X"]), snap["predict"])


KINDS = ["reg", "clf"]


# ------------------------------------------------------- 1. invalid data → ValueError
def _with(arr, i, j, value):
    arr = np.array(arr, dtype=np.float64, copy=True)
    if j is None:
        arr[i] = value
    else:
        arr[i, j] = value
    return arr


# name -> (function (X, y, sw) -> (X, y, sw), message regex)
BAD_DATA = {
    "X_nan": (lambda X, y, sw: (_with(X, 3, 1, np.nan), y, sw), r"NaN"),
    "X_inf": (lambda X, y, sw: (_with(X, 5, 0, np.inf), y, sw), r"infinity"),
    "X_neginf": (lambda X, y, sw: (_with(X, 0, 2, -np.inf), y, sw), r"infinity"),
    "y_nan": (lambda X, y, sw: (X, _with(y, 7, None, np.nan), sw), r"(?i)\by\b.*NaN"),
    "y_inf": (lambda X, y, sw: (X, _with(y, 2, None, np.inf), sw), r"(?i)\by\b.*infinity"),
    "sw_nan": (lambda X, y, sw: (X, y, _with(sw, 1, None, np.nan)),
               r"sample_weight.*NaN"),
    "sw_inf": (lambda X, y, sw: (X, y, _with(sw, 4, None, np.inf)),
               r"sample_weight.*infinity"),
    "y_too_short": (lambda X, y, sw: (X, y[:-1], sw), r"inconsistent numbers of samples"),
    "sw_too_short": (lambda X, y, sw: (X, y, sw[:-3]), r"sample_weight"),
    "sw_2d": (lambda X, y, sw: (X, y, sw.reshape(-1, 1)[:, [0, 0]]), r"(?i)sample.?weight"),
    "zero_samples": (lambda X, y, sw: (X[:0], y[:0], None), r"0 sample"),
    "zero_features": (lambda X, y, sw: (X[:, :0], y, sw), r"0 feature"),
    "X_3d": (lambda X, y, sw: (X.reshape(X.shape[0], X.shape[1], 1), y, sw),
             r"dim(ension)? 3|3.?D|3 dim"),
    "X_1d": (lambda X, y, sw: (X[:, 0], y, sw), r"2D array"),
    "X_strings": (lambda X, y, sw: (np.full(X.shape, "abc"), y, sw), r"string"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_fresh_fit_raises(kind, case):
    make_bad, match = BAD_DATA[case]
    X, y, sw = make_bad(*_data(kind))
    est = _make(kind)
    with pytest.raises(ValueError, match=match):
        est.fit(X, y, sample_weight=sw)
    assert not hasattr(est, "coef_")


@pytest.mark.parametrize("case", sorted(BAD_DATA))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_warm_start_fit_loses_nothing(kind, case):
    make_bad, match = BAD_DATA[case]
    X, y, sw = _data(kind)
    est = _make(kind, warm_start=True).fit(X, y)
    snap = _snapshot(est)
    Xb, yb, swb = make_bad(X, y, sw)
    with pytest.raises(ValueError, match=match):
        est.fit(Xb, yb, sample_weight=swb)
    _assert_unchanged(est, snap)


@pytest.mark.parametrize("case", sorted(BAD_DATA))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_data_partial_fit_loses_nothing(kind, case):
    """A refused partial_fit changes nothing: the next good partial_fit gives exactly
    what it gives on an estimator that never saw the bad call."""
    make_bad, match = BAD_DATA[case]
    X, y, sw = _data(kind)
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    est = _make(kind)
    ref = _make(kind)
    est.partial_fit(X, y, **extra)
    ref.partial_fit(X, y, **extra)
    snap = _snapshot(est)
    Xb, yb, swb = make_bad(X, y, sw)
    with pytest.raises(ValueError, match=match):
        est.partial_fit(Xb, yb, sample_weight=swb)
    _assert_unchanged(est, snap)
    est.partial_fit(X, y, sample_weight=sw)
    ref.partial_fit(X, y, sample_weight=sw)
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)
    assert est.t_ == ref.t_


def test_single_class_fresh_fit_raises():
    X, _, _ = _data("clf")
    with pytest.raises(ValueError, match=r"class"):
        _make("clf").fit(X, np.zeros(N, dtype=int))
    with pytest.raises(ValueError, match=r"class"):
        _make("clf").partial_fit(X, np.zeros(N, dtype=int), classes=[0])


@pytest.mark.parametrize("warm_start", [False, True])
def test_single_class_refit_loses_nothing(warm_start):
    """fit() with one class on an already fitted classifier must leave it usable:
    same classes_, coef_, predictions."""
    X, y, _ = _data("clf")
    est = _make("clf", warm_start=warm_start).fit(X, y)
    classes = est.classes_.copy()
    snap = _snapshot(est)
    with pytest.raises(ValueError, match=r"class"):
        est.fit(X, np.full(N, 2))
    np.testing.assert_array_equal(est.classes_, classes)
    _assert_unchanged(est, snap)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_bad_data_on_fitted_estimator_without_warm_start_loses_nothing(kind):
    """Even a cold refit that is refused before training keeps the fitted model."""
    X, y, _ = _data(kind)
    est = _make(kind).fit(X, y)
    snap = _snapshot(est)
    with pytest.raises(ValueError, match=r"NaN"):
        est.fit(_with(X, 0, 0, np.nan), y)
    _assert_unchanged(est, snap)


def test_partial_fit_label_not_in_classes_raises_and_loses_nothing():
    X, y, _ = _data("clf")
    est = _make("clf")
    est.partial_fit(X, y, classes=[0, 1, 2])
    snap = _snapshot(est)
    with pytest.raises(ValueError, match=r"classes"):
        est.partial_fit(X, np.where(y == 2, 7, y))
    _assert_unchanged(est, snap)


REG_METHODS = ["predict", "score", "partial_fit"]
CLF_METHODS = ["predict", "decision_function", "predict_proba", "predict_log_proba",
               "score", "partial_fit"]


@pytest.mark.parametrize(
    "kind, method",
    [("reg", m) for m in REG_METHODS] + [("clf", m) for m in CLF_METHODS],
)
@pytest.mark.parametrize("d_wrong", [D - 1, D + 2])
def test_wrong_number_of_features_after_fit(kind, method, d_wrong):
    X, y, _ = _data(kind)
    est = _make(kind).fit(X, y)
    snap = _snapshot(est)
    Xw, _, _ = _data(kind, d=d_wrong, seed=5)
    args = (Xw, y) if method in ("score", "partial_fit") else (Xw,)
    with pytest.raises(ValueError, match=rf"{d_wrong} features.*expecting {D} features"):
        getattr(est, method)(*args)
    _assert_unchanged(est, snap)
    assert est.n_features_in_ == D


@pytest.mark.parametrize("kind", KINDS)
def test_predict_before_fit_is_not_fitted_error(kind):
    X, _, _ = _data(kind)
    with pytest.raises(NotFittedError):
        _make(kind).predict(X)


# ----------------------------------------------- 2. bad / unsupported parameter values
BAD_PARAMS_COMMON = [
    dict(alpha=-1),
    dict(alpha="0.1"),
    dict(batch_size=0),
    dict(batch_size=-5),
    dict(batch_size=2.5),
    dict(solver="bogus"),
    dict(momentum=2),
    dict(momentum=-0.1),
    dict(n_iter_no_change=0),
    dict(max_iter=0),
    dict(tol=-1.0),
    dict(eta0=0.0),
    dict(eta0=-0.01),
    dict(l1_ratio=1.5),
    dict(penalty="l3"),
    dict(learning_rate="bogus"),
    dict(validation_fraction=1.0),
    dict(validation_fraction=0.0),
    dict(beta_1=1.0),
    dict(beta_2=-0.5),
    dict(average=-1),
    dict(epsilon=-0.1),
    dict(shuffle="yes"),
    dict(nesterovs_momentum="yes"),
    dict(n_jobs=1.5),
    dict(loss="bogus"),
]
BAD_PARAMS = (
    [("reg", p) for p in BAD_PARAMS_COMMON + [dict(loss="hinge")]]
    + [("clf", p) for p in BAD_PARAMS_COMMON
       + [dict(multiclass="bogus"), dict(multiclass=None), dict(class_weight="bogus")]]
)


def _ids(cases):
    return [f"{k}-{'-'.join(f'{a}={b!r}' for a, b in p.items())}" for k, p in cases]


@pytest.mark.parametrize("kind, params", BAD_PARAMS, ids=_ids(BAD_PARAMS))
def test_invalid_parameter_error(kind, params):
    X, y, _ = _data(kind)
    name = next(iter(params))
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    # Fresh estimator: fit and partial_fit both refuse.
    with pytest.raises(InvalidParameterError, match=rf"'{name}' parameter"):
        _make(kind, **params).fit(X, y)
    with pytest.raises(InvalidParameterError, match=rf"'{name}' parameter"):
        _make(kind, **params).partial_fit(X, y, **extra)
    # Fitted estimator with a bad parameter set afterwards: fit refuses, nothing lost.
    est = _make(kind, warm_start=True).fit(X, y)
    snap = _snapshot(est)
    est.set_params(**params)
    with pytest.raises(InvalidParameterError, match=rf"'{name}' parameter"):
        est.fit(X, y)
    _assert_unchanged(est, snap)


# scikit-learn's _fit_context skips parameter validation in partial_fit once the
# estimator is fitted. Bad parameter values still raise InvalidParameterError: a bad value
# set between partial_fit calls must not crash with a KeyError deep inside, nor be
# silently trained with (momentum=2 blows the weights up; penalty='l3' trains as
# elastic net; alpha=-1 trains with a negative penalty).
LATER_BAD_PARAMS = [
    ("reg", dict(alpha=-1)),
    ("reg", dict(momentum=2)),
    ("reg", dict(penalty="l3")),
    ("reg", dict(solver="bogus")),
    ("reg", dict(learning_rate="bogus")),
    ("reg", dict(batch_size=0)),
    ("clf", dict(loss="bogus")),
    ("clf", dict(beta_1=1.0, solver="adam", learning_rate="constant")),
    ("clf", dict(multiclass="bogus")),
]


@pytest.mark.parametrize("kind, params", LATER_BAD_PARAMS, ids=_ids(LATER_BAD_PARAMS))
def test_invalid_parameter_error_on_later_partial_fit(kind, params):
    X, y, _ = _data(kind)
    name = next(iter(params))
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    est = _make(kind)
    est.partial_fit(X, y, **extra)
    snap = _snapshot(est)
    est.set_params(**params)
    with pytest.raises(InvalidParameterError, match=rf"'{name}' parameter"):
        est.partial_fit(X, y)
    _assert_unchanged(est, snap)


UNSUPPORTED = [
    ("reg", dict(learning_rate="pa1"), r"pa1.*not supported"),
    ("reg", dict(learning_rate="pa2"), r"pa2.*not supported"),
    ("clf", dict(learning_rate="pa1"), r"pa1.*not supported"),
    ("clf", dict(multiclass="multinomial", loss="hinge"), r"multinomial.*log_loss"),
    ("clf", dict(multiclass="multinomial", loss="modified_huber"), r"multinomial.*log_loss"),
    ("reg", dict(solver="adam", momentum=0.5, learning_rate="constant"), r"momentum"),
    ("clf", dict(solver="adagrad", momentum=0.5, learning_rate="constant"), r"momentum"),
    ("reg", dict(nesterovs_momentum=True), r"momentum"),
    ("reg", dict(learning_rate="optimal", alpha=0.0), r"alpha"),
    ("clf", dict(alpha=0.0), r"alpha"),  # the classifier's default schedule is 'optimal'
    ("reg", dict(penalty="elasticnet", l1_ratio=None), r"l1_ratio"),
    ("reg", dict(n_jobs=0), r"n_jobs"),
]


@pytest.mark.parametrize("kind, params, match", UNSUPPORTED, ids=_ids(
    [(k, p) for k, p, _ in UNSUPPORTED]))
def test_unsupported_combination_raises_before_training(kind, params, match):
    X, y, _ = _data(kind)
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    with pytest.raises(ValueError, match=match):
        _make(kind, **params).fit(X, y)
    est = _make(kind, **params)
    with pytest.raises(ValueError, match=match):
        est.partial_fit(X, y, **extra)
    assert not hasattr(est, "coef_")
    # A warm-start refit with the bad combination is refused and loses nothing.
    est = _make(kind, warm_start=True).fit(X, y)
    snap = _snapshot(est)
    est.set_params(**params)
    with pytest.raises(ValueError, match=match):
        est.fit(X, y)
    _assert_unchanged(est, snap)


# Combinations that are rejected on the first partial_fit must not be silently
# trained (or crash with another exception) when set on an estimator that has
# already been partially fitted.
UNSUPPORTED_LATER = [
    ("reg", dict(learning_rate="pa1"), r"pa1.*not supported"),
    ("clf", dict(learning_rate="pa2"), r"pa2.*not supported"),
    ("reg", dict(solver="adam", momentum=0.5, learning_rate="constant"), r"momentum"),
    ("clf", dict(multiclass="multinomial", loss="hinge"), r"multinomial.*log_loss"),
]


@pytest.mark.parametrize("kind, params, match", UNSUPPORTED_LATER, ids=_ids(
    [(k, p) for k, p, _ in UNSUPPORTED_LATER]))
def test_unsupported_combination_on_later_partial_fit(kind, params, match):
    X, y, _ = _data(kind)
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    est = _make(kind)
    est.partial_fit(X, y, **extra)
    snap = _snapshot(est)
    est.set_params(**params)
    with pytest.raises(ValueError, match=match):
        est.partial_fit(X, y)
    _assert_unchanged(est, snap)


def test_early_stopping_with_partial_fit_raises():
    for kind in KINDS:
        X, y, _ = _data(kind)
        extra = {"classes": np.unique(y)} if kind == "clf" else {}
        est = _make(kind, early_stopping=True)
        with pytest.raises(ValueError, match=r"early_stopping.*partial_fit"):
            est.partial_fit(X, y, **extra)
        assert not hasattr(est, "coef_")


# ------------------------------------------------------------------ 3. divergence
def _huge(kind, seed=1):
    X, y, sw = _data(kind, n=50, seed=seed)
    return X * 1e300, y, sw


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_on_huge_features_names_the_epoch(kind):
    X, y, _ = _huge(kind)
    est = _make(kind, max_iter=5)
    with pytest.raises(ValueError, match=r"(?s)epoch 1\b.*learning rate"):
        est.fit(X, y)
    # No epoch completed, so nothing is published: not even a half-fitted attribute.
    assert [a for a in vars(est) if a.endswith("_")] == []


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_on_huge_learning_rate_names_the_epoch(kind):
    X, y, _ = _data(kind)
    est = _make(kind, learning_rate="constant", eta0=1e200, max_iter=5)
    with pytest.raises(ValueError, match=r"(?s)epoch (\d+).*learning rate") as info:
        est.fit(X, y)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    if epoch == 1:
        assert [a for a in vars(est) if a.endswith("_")] == []
    else:  # the weights of the last finite epoch, as a fit of that many epochs
        ref = _make(kind, learning_rate="constant", eta0=1e200, max_iter=epoch - 1).fit(X, y)
        np.testing.assert_array_equal(est.coef_, ref.coef_)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_during_warm_start_fit_keeps_previous_weights(kind):
    X, y, _ = _data(kind)
    est = _make(kind, warm_start=True, max_iter=5).fit(X, y)
    snap = _snapshot(est)
    Xh, yh, _ = _huge(kind)
    with pytest.raises(ValueError, match=r"epoch \d+"):
        est.fit(Xh, yh)
    _assert_unchanged(est, snap)
    # None of the held state became NaN either.
    for v in vars(est).values():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            assert np.isfinite(v).all()


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_during_partial_fit_keeps_previous_state(kind):
    X, y, _ = _data(kind)
    extra = {"classes": np.unique(y)} if kind == "clf" else {}
    est, ref = _make(kind), _make(kind)
    for e in (est, ref):
        e.partial_fit(X, y, **extra)
        e.partial_fit(X, y)
    snap = _snapshot(est)
    n_iter, t = est.n_iter_, est.t_
    Xh, yh, _ = _huge(kind)
    with pytest.raises(ValueError, match=r"epoch 3\b"):
        est.partial_fit(Xh, yh)
    _assert_unchanged(est, snap)
    assert est.n_iter_ == n_iter and est.t_ == t
    # Training resumes as though the diverging call never happened.
    est.partial_fit(X, y)
    ref.partial_fit(X, y)
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_mid_fit_keeps_last_finite_epoch(kind):
    """An invscaling schedule with a very negative power_t makes the step grow like
    t**100: finite for a few epochs, then overflowing. The error names the epoch that
    overflowed and the estimator holds the weights of the epoch before it."""
    X, y, _ = _data(kind, n=50)
    kw = dict(learning_rate="invscaling", power_t=-100.0, eta0=1e-70, max_iter=20)
    est = _make(kind, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # negative power_t
        with pytest.raises(ValueError, match=r"epoch \d+") as info:
            est.fit(X, y)
        epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
        assert 2 <= epoch <= 6, "the set-up should diverge after a few finite epochs"
        ref = _make(kind, **{**kw, "max_iter": epoch - 1}).fit(X, y)
    assert est.n_iter_ == epoch - 1
    assert len(est.loss_curve_) == epoch - 1
    assert np.isfinite(est.coef_).all() and np.isfinite(est.intercept_).all()
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)


# ----------------------------------------------------- 4. unusual but valid layouts
def _variant(name, arr, tmp_path, tag):
    """The same values as ``arr`` in an unusual container / layout / dtype."""
    if name == "plain":
        return np.array(arr, copy=True)
    if name == "readonly":
        out = np.array(arr, copy=True)
        out.setflags(write=False)
        return out
    if name == "np_load_mmap":
        path = tmp_path / f"{tag}.npy"
        np.save(path, arr)
        return np.load(path, mmap_mode="r")
    if name == "np_memmap":
        path = tmp_path / f"{tag}.dat"
        mm = np.memmap(path, dtype=arr.dtype, mode="w+", shape=arr.shape)
        mm[...] = arr
        mm.flush()
        del mm
        return np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
    if name == "fortran":
        return np.asfortranarray(arr)
    if name == "strided":
        if arr.ndim == 1:
            big = np.zeros(2 * arr.shape[0], dtype=arr.dtype)
            big[::2] = arr
            return big[::2]
        big = np.zeros((arr.shape[0], 2 * arr.shape[1]), dtype=arr.dtype)
        big[:, ::2] = arr
        out = big[:, ::2]
        assert not out.flags.c_contiguous and not out.flags.f_contiguous
        return out
    if name == "reversed":
        return np.array(arr[::-1], copy=True)[::-1]
    if name == "big_endian":
        return arr.astype(arr.dtype.newbyteorder(">"))
    if name == "int64":
        return arr.astype(np.int64)
    if name == "int32":
        return arr.astype(np.int32)
    if name == "bool":
        return arr.astype(bool)
    raise AssertionError(name)


LAYOUTS = ["plain", "readonly", "np_load_mmap", "np_memmap", "fortran", "strided",
           "reversed", "big_endian", "int64", "int32", "bool"]


def _layout_data(kind, layout):
    """Integer-valued (or 0/1 for bool) data so every dtype holds the same values."""
    rng = np.random.default_rng(3)
    if layout == "bool":
        X = (rng.random((N, D)) < 0.5).astype(np.float64)
    else:
        X = rng.integers(-3, 4, size=(N, D)).astype(np.float64)
    if kind == "reg":
        y = np.round(X @ np.array([1.0, -2.0, 0.5]) * 2)
        if layout == "bool":
            y = (y > 0).astype(np.float64)
    elif layout == "bool":
        y = ((X[:, 0] > 0) | (X[:, 1] > 0)).astype(np.float64)
    else:
        y = (X[:, 0] > 0).astype(np.float64) + (X[:, 1] > 0)
    sw = rng.integers(1, 4, size=N).astype(np.float64)
    if layout == "bool":
        sw = np.ones(N)
    return X, y, sw


LAYOUT_MODELS = [
    ("reg", {}),
    ("reg", dict(batch_size=8, solver="adam", learning_rate="constant", eta0=0.01)),
    ("clf", {}),
    ("clf", dict(loss="hinge", batch_size=4, momentum=0.9, learning_rate="constant")),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind, kw", LAYOUT_MODELS)
def test_unusual_input_layouts_are_accepted_and_not_modified(kind, kw, layout, tmp_path):
    X0, y0, sw0 = _layout_data(kind, layout)
    ref = _make(kind, **kw).fit(X0, y0, sample_weight=sw0)

    X = _variant(layout, X0, tmp_path, "X")
    y = _variant(layout, y0, tmp_path, "y")
    sw = _variant(layout, sw0, tmp_path, "sw")
    before = [(a.copy(), a.dtype, a.strides, a.flags.writeable) for a in (X, y, sw)]

    est = _make(kind, **kw).fit(X, y, sample_weight=sw)
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)
    # predict is a BLAS product whose rounding may depend on the memory layout.
    np.testing.assert_allclose(est.predict(X), ref.predict(X0), rtol=1e-13, atol=1e-13)

    for a, (copy, dtype, strides, writeable) in zip((X, y, sw), before):
        assert a.dtype == dtype and a.strides == strides
        assert a.flags.writeable == writeable
        np.testing.assert_array_equal(np.asarray(a), copy)
        assert np.asarray(a).tobytes() == copy.tobytes()


@pytest.mark.parametrize("layout", ["plain", "readonly", "fortran", "big_endian"])
@pytest.mark.parametrize("kind", KINDS)
def test_unusual_layouts_partial_fit_and_init_arrays_not_modified(kind, layout, tmp_path):
    X0, y0, sw0 = _layout_data(kind, layout)
    extra = {"classes": np.unique(y0)} if kind == "clf" else {}
    ref = _make(kind)
    ref.partial_fit(X0, y0, sample_weight=sw0, **extra)
    X = _variant(layout, X0, tmp_path, "X")
    y = _variant(layout, y0, tmp_path, "y")
    sw = _variant(layout, sw0, tmp_path, "sw")
    copies = [a.copy() for a in (X, y, sw)]
    est = _make(kind)
    est.partial_fit(X, y, sample_weight=sw, **extra)
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    for a, c in zip((X, y, sw), copies):
        assert np.asarray(a).tobytes() == c.tobytes()

    # coef_init / intercept_init given by the caller are not modified either.
    K = 1 if kind == "reg" else 3
    coef_init = np.full((D,) if K == 1 else (K, D), 0.25)
    intercept_init = np.full(K, -0.5)
    ci, ii = coef_init.copy(), intercept_init.copy()
    est = _make(kind).fit(X, y, coef_init=coef_init, intercept_init=intercept_init)
    np.testing.assert_array_equal(coef_init, ci)
    np.testing.assert_array_equal(intercept_init, ii)
    assert not np.shares_memory(est.coef_, coef_init)


@pytest.mark.parametrize("kind", KINDS)
def test_fitted_weights_do_not_alias_caller_or_each_other(kind):
    """coef_ and intercept_ are the estimator's own arrays: writing to the caller's X,
    coef_init or intercept_init after fit changes nothing, and coef_, intercept_ and
    the training state share no memory. Writing into coef_ / intercept_ in place acts
    as setting them by hand: the next partial_fit starts from the written values (as
    scikit-learn's), exactly as if new arrays had been assigned."""
    X, y, _ = _data(kind)
    K = 1 if kind == "reg" else 3
    coef_init = np.full((D,) if K == 1 else (K, D), 0.25)
    intercept_init = np.full(K, -0.5)
    est = _make(kind).fit(X, y, coef_init=coef_init, intercept_init=intercept_init)
    ref = _make(kind).fit(X.copy(), y, coef_init=coef_init.copy(),
                          intercept_init=intercept_init.copy())
    X_copy = X.copy()
    X[:] = 0.0
    coef_init[...] = 99.0
    intercept_init[...] = 99.0
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)
    np.testing.assert_array_equal(est.predict(X_copy), ref.predict(X_copy))

    state = [v for v in est._sgd_state.values() if isinstance(v, np.ndarray)]
    assert not np.shares_memory(est.coef_, est.intercept_)
    for a in (est.coef_, est.intercept_):
        assert not any(np.shares_memory(a, v) for v in state)

    # In place versus assigned: the same next partial_fit, which differs from one that
    # ignored the write.
    by_hand = _make(kind).fit(X_copy, y)
    untouched = _make(kind).fit(X_copy, y)
    est = _make(kind).fit(X_copy, y)
    est.coef_[...] = 0.5
    est.intercept_[...] = 0.25
    by_hand.coef_ = np.full_like(by_hand.coef_, 0.5)
    by_hand.intercept_ = np.full_like(by_hand.intercept_, 0.25)
    for e in (est, by_hand, untouched):
        e.partial_fit(X_copy, y)
    np.testing.assert_array_equal(est.coef_, by_hand.coef_)
    np.testing.assert_array_equal(est.intercept_, by_hand.intercept_)
    assert not np.array_equal(est.coef_, untouched.coef_)


# ------------------------------------------------------------------- 5. Ctrl-C
CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import cgd

    kind, kw = sys.argv[1], json.loads(sys.argv[2])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20000, 50))
    y = X @ rng.standard_normal(50)
    if kind == "clf":
        y = np.digitize(y, [-2.0, 2.0])
        make = lambda **p: cgd.SGDClassifier(**p)
    else:
        make = lambda **p: cgd.SGDRegressor(**p)
    # verbose=1 prints "Norm: ..." after every completed epoch: the parent waits for
    # the first one so that there is a completed epoch to keep, however loaded the
    # machine is.
    base = dict(tol=None, random_state=0, verbose=1, **kw)
    est = make(max_iter=10**6, **base)
    print("started", flush=True)
    try:
        est.fit(X, y)
        print("finished", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        # The signal may land inside a verbose print, after its text and before its
        # newline: start a line of our own.
        print("\\ninterrupted", flush=True)
    out = {"has_coef": hasattr(est, "coef_")}
    if out["has_coef"]:
        n = int(est.n_iter_)
        out["n_iter"] = n
        out["finite"] = bool(np.isfinite(est.coef_).all() and np.isfinite(est.intercept_).all())
        out["loss_curve_len"] = len(est.loss_curve_)
        # The weights of the last completed epoch are those of a fit of exactly n epochs.
        ref = make(max_iter=n, **base).fit(X, y)
        out["equal_to_n_epoch_fit"] = bool(np.array_equal(ref.coef_, est.coef_)
                                           and np.array_equal(ref.intercept_, est.intercept_))
        # And the interrupted estimator is still usable.
        out["predict_finite"] = bool(np.isfinite(est.predict(X[:10]).astype(float)).all())
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def _reader(stream, q):
    for line in iter(stream.readline, ""):
        q.put((time.monotonic(), line.strip()))
    q.put((time.monotonic(), None))


def _expect(q, want, timeout):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {want!r}; child said {seen}")
        try:
            t, line = q.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"child exited before {want!r}; child said {seen}")
        seen.append(line)
        if line.startswith(want):
            return t, line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "kind, kw, wait",
    [
        ("reg", {}, 1.5),
        # Threaded mini-batch path; large batches keep an epoch short even when
        # another process occupies a core (small batches with n_jobs=2 then cost
        # ~10 ms of OpenMP synchronisation each).
        ("clf", {"loss": "log_loss", "multiclass": "multinomial", "batch_size": 2000,
                 "n_jobs": 2, "learning_rate": "constant"}, 1.0),
        # Small batches on the dense epoch's team of threads (one parallel region per
        # epoch): the interrupt must release the helper threads too.
        ("reg", {"batch_size": 64, "n_jobs": 2}, 1.5),
    ],
)
def test_ctrl_c_interrupts_quickly_and_keeps_last_epoch(kind, kw, wait):
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, kind, json.dumps(kw)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    q = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    try:
        _expect(q, "started", timeout=60)
        _expect(q, "Norm:", timeout=60)  # first epoch completed
        time.sleep(wait)
        assert proc.poll() is None, "child ended before the signal"
        t_kill = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        t_int, _ = _expect(q, "interrupted", timeout=15)
        latency = t_int - t_kill
        assert latency < 1.0, f"KeyboardInterrupt arrived {latency:.2f} s after SIGINT"
        _, line = _expect(q, "RESULT ", timeout=60)
        out = json.loads(line[len("RESULT "):])
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert out["has_coef"], "no completed epoch kept after Ctrl-C"
    assert out["n_iter"] >= 1
    assert out["finite"]
    assert out["loss_curve_len"] == out["n_iter"]
    assert out["equal_to_n_epoch_fit"], out
    assert out["predict_finite"]


# ------------------------------------------------------------------- 6. pickling
PICKLE_MODELS = [
    ("reg", {}),
    ("reg", dict(solver="adam", learning_rate="constant", batch_size=8, average=True)),
    ("clf", {}),
    ("clf", dict(multiclass="multinomial", momentum=0.9, batch_size=4,
                 learning_rate="constant")),
    ("clf", dict(loss="hinge", penalty="l1")),
]


def _plain(value, path="est"):
    """Assert ``value`` is made of numpy arrays / numpy scalars / plain Python values."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return
    if isinstance(value, np.ndarray):
        assert value.dtype != object, f"{path} is an object array"
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), f"{path} has key {k!r}"
            _plain(v, f"{path}[{k!r}]")
        return
    raise AssertionError(f"{path} holds a {type(value).__module__}.{type(value).__name__}")


@pytest.mark.parametrize("kind, kw", PICKLE_MODELS)
def test_pickle_round_trip(kind, kw):
    X, y, _ = _data(kind)
    est = _make(kind, **kw).fit(X, y)
    est2 = pickle.loads(pickle.dumps(est))
    Xt, _, _ = _data(kind, seed=11)
    np.testing.assert_array_equal(est2.predict(Xt), est.predict(Xt))
    np.testing.assert_array_equal(est2.coef_, est.coef_)
    np.testing.assert_array_equal(est2.intercept_, est.intercept_)
    if kind == "clf":
        np.testing.assert_array_equal(est2.decision_function(Xt), est.decision_function(Xt))
        if est.loss == "log_loss":
            np.testing.assert_array_equal(est2.predict_proba(Xt), est.predict_proba(Xt))
    # The whole training state survives: continuing gives identical results.
    est.partial_fit(X, y)
    est2.partial_fit(X, y)
    np.testing.assert_array_equal(est2.coef_, est.coef_)
    np.testing.assert_array_equal(est2.intercept_, est.intercept_)


@pytest.mark.parametrize("kind, kw", PICKLE_MODELS)
def test_fitted_state_is_plain_data(kind, kw):
    X, y, _ = _data(kind)
    est = _make(kind, **kw).fit(X, y)
    for name, value in vars(est).items():
        _plain(value, name)
    est.partial_fit(X, y)
    for name, value in vars(est).items():
        _plain(value, name)


# ------------------------------------------------------------ label checks' fast paths
# cgd skips scikit-learn's label check for 1-D integer or boolean labels and its class
# weights for class_weight=None (together ~0.4 ms of a fit); both must decide exactly as
# scikit-learn's functions do.
_LABELS = [np.array([0, 1, 1, 0]), np.array([3, -1, 7, 7], dtype=np.int8),
           np.array([2, 0, 1], dtype=np.uint64), np.array([True, False, True]),
           np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5, 2.0]), np.array(["a", "b", "a"]),
           np.array([[0, 1], [1, 0]]), np.array([0, 1, 1], dtype=object), [0, 1, 0]]


@pytest.mark.parametrize("y", _LABELS, ids=range(len(_LABELS)))
def test_label_check_decides_as_sklearn(y):
    from sklearn.utils.multiclass import check_classification_targets
    from cgd._fit_loop import check_class_labels

    def outcome(check):
        try:
            check(y)
        except ValueError as exc:
            return str(exc)
        return None

    assert outcome(check_class_labels) == outcome(check_classification_targets)


@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 2.0, 2: 0.5}])
def test_class_weights_as_sklearn(class_weight):
    from sklearn.utils.class_weight import compute_class_weight
    from cgd._fit_loop import class_weights

    y = np.array([0, 0, 0, 1, 2, 2])
    classes = np.array([0, 1, 2])
    ours = class_weights(class_weight, classes, y)
    ref = compute_class_weight(class_weight, classes=classes, y=y)
    assert ours.dtype == ref.dtype and np.array_equal(ours, ref)


# ------------------------------------------- the native finiteness check of X
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_native_finiteness_check_is_exact(dtype):
    """cgd._checks.all_finite against np.isfinite(...).all(): every kind of non-finite
    value (NaN with any payload and sign, +-inf), at the first, last and block-boundary
    positions, over one to three threads and on both sides of the size above which the
    pass is shared out; finite values of every exponent (subnormals, the largest, -0)
    pass, including arrays whose sum overflows (which NumPy's sum check would refuse)."""
    from cgd import _checks

    finfo = np.finfo(dtype)
    uint = np.uint64 if dtype == np.float64 else np.uint32
    nbits = 64 if dtype == np.float64 else 32
    exp_mask = (1 << (nbits - 1)) - (1 << finfo.nmant)   # every exponent bit
    bad = np.array([np.nan, -np.nan, np.inf, -np.inf], dtype=dtype)
    # NaNs with other payloads: all exponent bits set, some mantissa bits
    payloads = np.array([exp_mask | 1, exp_mask | (1 << (finfo.nmant - 1)) | 5,
                         (1 << (nbits - 1)) | exp_mask | 3], dtype=uint).view(dtype)
    assert np.isnan(payloads).all()
    bad = np.concatenate([bad, payloads])
    good = np.array([0.0, -0.0, finfo.max, -finfo.max, finfo.tiny, finfo.smallest_subnormal,
                     -finfo.smallest_subnormal, 1.0, -3.5], dtype=dtype)
    rng = np.random.default_rng(0)
    block = 1 << 15
    for n in [1, 2, 7, block - 1, block, block + 1, (1 << 18) - 1, (1 << 18) + 3 * block + 5]:
        a = rng.choice(good, n)
        assert np.isfinite(a).all()
        for nt in [1, 2, 3]:
            assert _checks.all_finite(a, nt) is True
        for pos in sorted({0, n - 1, min(n - 1, block - 1), min(n - 1, block), n // 2}):
            for v in bad:
                b = a.copy()
                b[pos] = v
                for nt in [1, 2, 3]:
                    assert _checks.all_finite(b, nt) is False, (n, pos, v, nt)
    big = np.full(1 << 19, finfo.max, dtype=dtype)
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())
    assert _checks.all_finite(big, 2) is True
    assert _checks.all_finite(np.empty(0, dtype=dtype), 2) is True


def test_native_finiteness_check_reads_without_writing():
    """A read-only X (a memory map, a Dask chunk) is checked in place, unchanged."""
    from cgd import _checks

    X = np.random.default_rng(1).standard_normal((3000, 100))
    X[2999, 99] = np.inf
    X.setflags(write=False)
    before = X.copy()
    assert _checks.all_finite(X.reshape(-1), 2) is False
    np.testing.assert_array_equal(X, before)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        cgd.SGDRegressor(max_iter=1, n_jobs=2).fit(X, np.zeros(3000))
