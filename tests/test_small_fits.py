"""The per-sample SGD loop for small fits (batch_size=1, plain SGD): the same bits as the
general loop, and row_dots with dot()'s bits.

The per-sample loop computes a row's dot products with all outputs together (row_dots),
the learning rate once per row, and one weight scale shared by the outputs. None of
this may change a result: every fit here is run twice, through that loop and through
the general one (sgd_single_row per row), and must agree to the bit.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import cgd
from cgd import _linear
from cgd._sparse import plain_arrays


def _dot_reference(w, x):
    """dot() of _math.pxd, written out: accumulator r sums w_j x_j for j = r (mod 4) up
    to d - d % 4 in increasing j, the last d % 4 products go to accumulator 0, and the
    result is (s0 + s1) + (s2 + s3); every operation in w's dtype (NumPy scalars)."""
    t = w.dtype.type
    d = w.shape[0]
    d4 = d - d % 4
    s = [t(0), t(0), t(0), t(0)]
    for j in range(d4):
        s[j % 4] = t(s[j % 4] + t(w[j] * x[j]))
    for j in range(d4, d):
        s[0] = t(s[0] + t(w[j] * x[j]))
    return t(t(s[0] + s[1]) + t(s[2] + s[3]))


@pytest.fixture
def restore_switches():
    yield
    _linear._set_rowdots_avx(True)
    _linear._set_per_sample_loop(True)


@pytest.mark.parametrize("avx", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_dots_have_the_bits_of_dot(dtype, avx, restore_switches):
    # Every group size (1-8 outputs a group, several groups) and every tail length d % 4;
    # coefficients of mixed magnitudes, so that a different summation order would show.
    _linear._set_rowdots_avx(avx)
    rng = np.random.default_rng(1)
    for d in [1, 2, 3, 4, 5, 6, 7, 9, 13, 64, 67]:
        W = (rng.standard_normal((23, d)) * 10.0 ** rng.integers(-4, 5, (23, d))).astype(dtype)
        x = (rng.standard_normal(d) * 10.0 ** rng.integers(-2, 3, d)).astype(dtype)
        for n in [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 17, 23]:
            rows = rng.permutation(23)[:n].astype(np.intp)
            got = _linear._row_dots(W, rows, x)
            ref = np.array([_dot_reference(W[r], x) for r in rows], dtype=dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))
            np.testing.assert_array_equal(
                ref, np.array([_linear._dot(W[r], x) for r in rows], dtype=dtype))


def _digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1.0)
    return X[:600], y[:600]


def _both_loops(make, X, y, **fit):
    """The fitted attributes of make() through the per-sample loop and the general one."""
    out = []
    for on in (True, False):
        _linear._set_per_sample_loop(on)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = make().fit(X, y, **fit)
        out.append(est)
    return out


def _assert_same_fit(a, b):
    for name in ("coef_", "intercept_", "loss_curve_", "n_iter_", "t_"):
        va, vb = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert va.dtype == vb.dtype, name
        np.testing.assert_array_equal(va, vb, err_msg=name)


CLASSIFIER_CASES = [
    dict(),                                              # defaults: hinge, 'optimal'
    dict(tol=None, max_iter=7),
    dict(loss="log_loss", max_iter=6),
    dict(loss="modified_huber", max_iter=6),
    dict(loss="squared_hinge", max_iter=6),
    dict(loss="perceptron", penalty=None, max_iter=6),    # no decay at all
    dict(class_weight="balanced", max_iter=6),
    dict(learning_rate="invscaling", eta0=0.05, max_iter=6),
    # the outputs' rates part after the first cuts: one scale per output again
    dict(learning_rate="adaptive", eta0=0.05, tol=1e-1, n_iter_no_change=1, max_iter=12),
    # decay 0.5 a row: the scale falls below 1e-9 and is folded in every ~30 rows
    dict(learning_rate="constant", eta0=0.5, alpha=1.0, max_iter=3),
    dict(early_stopping=True, max_iter=8),
    dict(fit_intercept=False, max_iter=5),
    dict(shuffle=False, max_iter=4),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("params", CLASSIFIER_CASES, ids=lambda p: str(sorted(p.items())))
def test_per_sample_loop_same_bits_as_general_loop_classifier(params, dtype,
                                                              restore_switches):
    X, y = _digits()
    X = X.astype(dtype)
    sw = np.random.default_rng(2).uniform(0.2, 2.0, X.shape[0])
    make = lambda: cgd.SGDClassifier(random_state=3, **params)  # noqa: E731
    a, b = _both_loops(make, X, y, sample_weight=sw)
    _assert_same_fit(a, b)
    a, b = _both_loops(make, X, y >= 5)                  # binary: one output
    _assert_same_fit(a, b)


@pytest.mark.parametrize("params", [
    dict(max_iter=6),
    dict(loss="huber", max_iter=6),
    dict(loss="epsilon_insensitive", penalty=None, max_iter=6),
    dict(loss="squared_epsilon_insensitive", learning_rate="adaptive", max_iter=6),
    dict(penalty="l2", alpha=0.5, learning_rate="constant", eta0=0.1, max_iter=3),
], ids=lambda p: str(sorted(p.items())))
def test_per_sample_loop_same_bits_as_general_loop_regressor(params, restore_switches):
    X, y = _digits()
    yr = X @ np.random.default_rng(4).standard_normal(X.shape[1]) / 8 + y
    sw = np.random.default_rng(5).uniform(0.2, 2.0, X.shape[0])
    a, b = _both_loops(lambda: cgd.SGDRegressor(random_state=6, **params), X, yr,
                       sample_weight=sw)
    _assert_same_fit(a, b)


def test_per_sample_loop_same_bits_partial_fit(restore_switches):
    X, y = _digits()
    fits = []
    for on in (True, False):
        _linear._set_per_sample_loop(on)
        est = cgd.SGDClassifier(random_state=0)
        for _ in range(3):
            est.partial_fit(X, y, classes=np.arange(10))
        fits.append(est)
    _assert_same_fit(*fits)


def test_per_sample_loop_diverges_where_the_general_loop_does(restore_switches):
    # A step that overflows: both loops stop at the same epoch with the same message
    # and keep the same last finite weights.
    X, y = _digits()
    X = X * 1e100
    messages = []
    for on in (True, False):
        _linear._set_per_sample_loop(on)
        est = cgd.SGDRegressor(learning_rate="constant", eta0=1e100, penalty=None,
                               max_iter=5, tol=None, random_state=0)
        with pytest.raises(ValueError, match="Floating-point under-/overflow") as info:
            est.fit(X, y.astype(float))
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------- a fit's fixed costs
# Shortcuts around scikit-learn's per-fit checks; each must give what the check gives.

from sklearn.base import BaseEstimator  # noqa: E402

from cgd import linear_model  # noqa: E402


@pytest.mark.parametrize("cls", [cgd.SGDClassifier, cgd.SGDRegressor])
def test_param_names_are_scikit_learns(cls):
    assert cls._get_param_names() == BaseEstimator._get_param_names.__func__(cls)
    names = cls._get_param_names()
    names.append("mutated")  # a copy: the cached names stay as they were
    assert "mutated" not in cls._get_param_names()


@pytest.mark.parametrize("bad", [dict(alpha=-1.0), dict(max_iter=0), dict(loss="nope"),
                                 dict(eta0=0.0), dict(alpha=float("nan")),
                                 dict(random_state=-3), dict(n_jobs=1.5)])
def test_cached_parameter_check_refuses_as_scikit_learn(bad):
    X, y = _digits()
    cgd.SGDClassifier(max_iter=1, tol=None).fit(X, y)  # its values are now known valid
    for _ in range(2):  # a refused value is refused again
        est = cgd.SGDClassifier(**{"max_iter": 1, "tol": None, **bad})
        with pytest.raises(Exception) as ours:
            est.fit(X, y)
        with pytest.raises(Exception) as theirs:
            BaseEstimator._validate_params(est)
        assert type(ours.value) is type(theirs.value)
        assert str(ours.value) == str(theirs.value)


def test_plain_arrays_skip_validate_data_with_the_same_outcome():
    pd = pytest.importorskip("pandas")
    X, y = _digits()
    for cls in (cgd.SGDClassifier, cgd.SGDRegressor, cgd.MLPClassifier, cgd.MLPRegressor):
        est = cls(max_iter=1, tol=None, random_state=0)
        if cls in (cgd.MLPClassifier, cgd.MLPRegressor):
            est.set_params(hidden_layer_sizes=(5,), tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])]), y)
        assert hasattr(est, "feature_names_in_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X[:, :10], y)  # plain arrays: no names any more, a new feature count
        assert not hasattr(est, "feature_names_in_")
        assert est.n_features_in_ == 10
    assert plain_arrays(X, y, False)
    assert not plain_arrays(np.asfortranarray(X), y, False)
    assert not plain_arrays(X.astype(np.float16), y, False)
    assert not plain_arrays(X, y.astype(float), False)      # classifier
    assert plain_arrays(X, y.astype(float), True)           # regressor
    Xn = X.copy()
    Xn[3, 4] = np.nan
    assert not plain_arrays(Xn, y, False)
    for cls in (cgd.SGDClassifier, cgd.MLPClassifier):
        with pytest.raises(ValueError, match="Input X contains NaN"):
            cls(max_iter=1).fit(Xn, y)
    yn = y.astype(float)
    yn[0] = np.inf
    for cls in (cgd.SGDRegressor, cgd.MLPRegressor):
        with pytest.raises(ValueError, match="Input y contains infinity"):
            cls(max_iter=1).fit(X, yn)


def test_reused_random_states_draw_as_new_ones():
    MAX_INT = np.iinfo(np.int32).max
    for r in [0, 1, 42, 2**32 - 1, np.int64(7), True]:
        assert linear_model._first_seed(r) == np.random.RandomState(r).randint(MAX_INT)
    rs = np.random.RandomState(5)
    assert linear_model._first_seed(rs) == np.random.RandomState(5).randint(MAX_INT)
    for seed in [3, 123456]:
        shuffler = linear_model._EpochShuffler(seed)
        ref = np.random.RandomState(seed)
        for _ in range(3):
            got = np.arange(50, dtype=np.intp)
            shuffler(got)
            want = np.arange(50, dtype=np.intp)
            linear_model._shuffle.shuffle_order(
                want, int(ref.randint(0, 2**63 - 1, dtype=np.int64)))
            np.testing.assert_array_equal(got, want)
        shuffler.release()
