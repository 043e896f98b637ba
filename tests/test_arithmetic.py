"""cgd's update arithmetic, checked against NumPy references written here.

One full-batch step must equal w0 - eta * grad L(w0) to 1e-10; a mini-batch sequence
must equal a NumPy loop of the update rule; native gradients must equal central
finite differences.
"""

import numpy as np
import pytest
from scipy.special import expit, log_softmax, softmax

import cgd
from cgd import _linear, _optim
from cgd._codes import LOSS_CODES, Loss, Schedule, Solver, Target

from _helpers import central_differences

RNG = np.random.default_rng(0)


def _data(n=120, d=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    return X, X @ w + 0.3 * rng.standard_normal(n), rng


# ---------------------------------------------------------------- full-batch steps
def _one_step(est, X, y, coef0, b0):
    return est.set_params(batch_size=X.shape[0], learning_rate="constant", shuffle=False,
                          max_iter=1, tol=None).fit(X, y, coef_init=coef0, intercept_init=b0)


@pytest.mark.parametrize("penalty", [None, "l2"])
def test_full_batch_step_squared(penalty):
    X, y, rng = _data()
    w0, b0 = rng.standard_normal(X.shape[1]), np.array([0.3])
    eta, alpha = 0.05, 0.01
    est = _one_step(cgd.SGDRegressor(penalty=penalty, alpha=alpha, eta0=eta), X, y, w0, b0)
    r = X @ w0 + b0 - y
    grad_w = X.T @ r / len(y) + (alpha * w0 if penalty == "l2" else 0)
    grad_b = r.mean()
    np.testing.assert_allclose(est.coef_, w0 - eta * grad_w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.intercept_, b0 - eta * grad_b, rtol=0, atol=1e-10)
    # The recorded loss is the objective at w0: mean of 1/2 r^2 plus the penalty.
    obj = 0.5 * np.mean(r ** 2) + (0.5 * alpha * w0 @ w0 if penalty == "l2" else 0)
    assert est.loss_curve_[0] == pytest.approx(obj, rel=1e-12)


@pytest.mark.parametrize("penalty", [None, "l2"])
def test_full_batch_step_log_loss_binary(penalty):
    X, y, rng = _data()
    yb = (y > 0).astype(int)
    w0, b0 = 0.5 * rng.standard_normal(X.shape[1]), np.array([-0.2])
    eta, alpha = 0.1, 0.02
    est = _one_step(cgd.SGDClassifier(loss="log_loss", penalty=penalty, alpha=alpha, eta0=eta),
                    X, yb, w0, b0)
    z = X @ w0 + b0
    dz = expit(z) - yb  # sigmoid neuron with log-loss: (sigma(z) - y) x, y in {0, 1}
    grad_w = X.T @ dz / len(yb) + (alpha * w0 if penalty == "l2" else 0)
    np.testing.assert_allclose(est.coef_.ravel(), w0 - eta * grad_w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.intercept_, b0 - eta * dz.mean(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("penalty", [None, "l2"])
def test_full_batch_step_softmax(penalty):
    X, y, rng = _data()
    yc = np.digitize(y, np.quantile(y, [0.33, 0.66]))  # three classes
    K, d = 3, X.shape[1]
    W0, b0 = 0.5 * rng.standard_normal((K, d)), rng.standard_normal(K)
    eta, alpha = 0.2, 0.01
    est = _one_step(cgd.SGDClassifier(loss="log_loss", multiclass="multinomial",
                                      penalty=penalty, alpha=alpha, eta0=eta), X, yc, W0, b0)
    Z = X @ W0.T + b0
    D = softmax(Z, axis=1) - np.eye(K)[yc]  # (softmax(z) - onehot(y)) outer x
    grad_W = D.T @ X / len(yc) + (alpha * W0 if penalty == "l2" else 0)
    np.testing.assert_allclose(est.coef_, W0 - eta * grad_W, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.intercept_, b0 - eta * D.mean(axis=0), rtol=0, atol=1e-10)
    obj = -np.mean(log_softmax(Z, axis=1)[np.arange(len(yc)), yc])
    obj += 0.5 * alpha * np.sum(W0 ** 2) if penalty == "l2" else 0
    assert est.loss_curve_[0] == pytest.approx(obj, rel=1e-12)


def test_full_batch_step_sample_weight_and_class_weight():
    X, y, rng = _data()
    yb = (y > 0).astype(int)
    sw = rng.uniform(0.5, 2.0, len(yb))
    cw = {0: 2.0, 1: 0.5}
    w0, b0 = 0.3 * rng.standard_normal(X.shape[1]), np.array([0.1])
    eta = 0.1
    est = cgd.SGDClassifier(loss="log_loss", penalty=None, eta0=eta, class_weight=cw,
                            batch_size=len(yb), learning_rate="constant", shuffle=False,
                            max_iter=1, tol=None)
    est.fit(X, yb, coef_init=w0, intercept_init=b0, sample_weight=sw)
    s = sw * np.where(yb == 1, cw[1], cw[0])
    dz = s * (expit(X @ w0 + b0) - yb)
    np.testing.assert_allclose(est.coef_.ravel(), w0 - eta * X.T @ dz / len(yb), atol=1e-10)
    np.testing.assert_allclose(est.intercept_, b0 - eta * dz.mean(), atol=1e-10)


# ---------------------------------------------------------------- mini-batch sequences
def _reference_minibatch(X, y, w, b, *, m, epochs, eta0, alpha, schedule="constant",
                         power_t=0.25, solver="sgd", momentum=0.0, nesterov=False,
                         beta_1=0.9, beta_2=0.999):
    """The mini-batch update rule on squared loss, batches in storage order."""
    n = len(y)
    w, b = w.copy(), b
    vw, vb = np.zeros_like(w), 0.0
    mw, mb_, sw_, sb = np.zeros_like(w), 0.0, np.zeros_like(w), 0.0
    t = 1
    for _ in range(epochs):
        for s in range(0, n, m):
            Xb, yb = X[s:s + m], y[s:s + m]
            r = Xb @ w + b - yb
            gw = Xb.T @ r / len(yb) + alpha * w
            gb = r.mean()
            eta = eta0 / t ** power_t if schedule == "invscaling" else eta0
            if solver == "sgd" and momentum == 0:
                w, b = w - eta * gw, b - eta * gb
            elif solver == "sgd":
                vw, vb = momentum * vw - eta * gw, momentum * vb - eta * gb
                if nesterov:
                    w, b = w + momentum * vw - eta * gw, b + momentum * vb - eta * gb
                else:
                    w, b = w + vw, b + vb
            elif solver == "adam":
                mw, mb_ = beta_1 * mw + (1 - beta_1) * gw, beta_1 * mb_ + (1 - beta_1) * gb
                sw_, sb = beta_2 * sw_ + (1 - beta_2) * gw ** 2, beta_2 * sb + (1 - beta_2) * gb ** 2
                lr = eta * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
                w = w - lr * mw / (np.sqrt(sw_) + 1e-8)
                b = b - lr * mb_ / (np.sqrt(sb) + 1e-8)
            else:  # adagrad
                sw_, sb = sw_ + gw ** 2, sb + gb ** 2
                w = w - eta * gw / (np.sqrt(sw_) + 1e-8)
                b = b - eta * gb / (np.sqrt(sb) + 1e-8)
            t += 1
    return w, b, t


@pytest.mark.parametrize("opts", [
    dict(),
    dict(schedule="invscaling"),
    dict(solver="sgd", momentum=0.9),
    dict(solver="sgd", momentum=0.9, nesterov=True),
    dict(solver="adam"),
    dict(solver="adagrad"),
])
@pytest.mark.parametrize("m", [1, 16, 100])
def test_minibatch_sequence_matches_numpy_loop(opts, m):
    X, y, rng = _data(n=100)
    w0, b0 = rng.standard_normal(X.shape[1]), 0.1
    eta0, alpha, epochs = 0.02, 0.01, 3
    w, b, t = _reference_minibatch(X, y, w0, b0, m=m, epochs=epochs, eta0=eta0, alpha=alpha, **opts)
    est = cgd.SGDRegressor(
        batch_size=m, shuffle=False, max_iter=epochs, tol=None, eta0=eta0, alpha=alpha,
        learning_rate=opts.get("schedule", "constant"), solver=opts.get("solver", "sgd"),
        momentum=opts.get("momentum", 0.0), nesterovs_momentum=opts.get("nesterov", False),
    ).fit(X, y, coef_init=w0, intercept_init=[b0])
    np.testing.assert_allclose(est.coef_, w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.intercept_, [b], rtol=0, atol=1e-10)
    assert est.t_ == t  # t counts updates: ceil(100 / m) per epoch, from 1


@pytest.mark.parametrize("window", [0.0, 1e9])
@pytest.mark.parametrize("n_jobs", [2, 3])
@pytest.mark.parametrize("opts", [dict(), dict(solver="adam")])
@pytest.mark.parametrize("m", [1, 33, 100])
def test_minibatch_sequence_on_a_team_matches_numpy_loop(opts, m, n_jobs, window):
    """The same NumPy loop when the batches' chunks are spread over a team of threads
    (n_jobs > 1), which the kernel may drop to one thread between batches (window 0:
    it measures and switches every two batches; 1e9: the team throughout)."""
    X, y, rng = _data(n=300)
    w0, b0 = rng.standard_normal(X.shape[1]), 0.1
    eta0, alpha, epochs = 0.02, 0.01, 3
    w, b, t = _reference_minibatch(X, y, w0, b0, m=m, epochs=epochs, eta0=eta0, alpha=alpha,
                                   **opts)
    saved = _linear.set_team_window(window)
    try:
        est = cgd.SGDRegressor(
            batch_size=m, shuffle=False, max_iter=epochs, tol=None, eta0=eta0, alpha=alpha,
            learning_rate="constant", solver=opts.get("solver", "sgd"), n_jobs=n_jobs,
        ).fit(X, y, coef_init=w0, intercept_init=[b0])
    finally:
        _linear.set_team_window(saved)
    np.testing.assert_allclose(est.coef_, w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(est.intercept_, [b], rtol=0, atol=1e-10)
    assert est.t_ == t


# ---------------------------------------------------------------- finite differences
MARGIN_LOSSES = ["hinge", "perceptron", "squared_hinge", "log_loss", "modified_huber"]
REG_LOSSES = ["squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive"]


def _config(loss, target, K, l1=0.0, l2=0.0):
    return {
        "loss": LOSS_CODES.get(loss, Loss.LOSS_SQUARED_ERROR), "target": target, "class_offset": 1 if K == 1 else 0,
        "schedule": Schedule.SCHEDULE_CONSTANT, "alpha": 1e-4, "l1": l1, "l2": l2, "epsilon": 0.3, "power_t": 0.5,
        "optimal_init": 0.0, "fit_intercept": True, "batch_size": 1, "average": 0.0,
        "n_threads": 1, "solver": Solver.SOLVER_SGD, "momentum": 0.0, "nesterov": False, "beta_1": 0.9,
        "beta_2": 0.999, "adam_epsilon": 1e-8,
    }


def _fd_check(X, y, sw, K, cfg, params):
    ones = np.ones(K)
    obj, grad = _linear.linear_objective_gradient(X, y, sw, ones, ones, params, cfg)
    fd = central_differences(
        lambda p: _linear.linear_objective_gradient(X, y, sw, ones, ones, p, cfg)[0].sum(),
        params, 1e-6)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
    return obj


@pytest.mark.parametrize("loss", REG_LOSSES + MARGIN_LOSSES)
@pytest.mark.parametrize("penalty", ["none", "l2", "l1", "elasticnet"])
def test_native_gradient_matches_finite_differences(loss, penalty):
    rng = np.random.default_rng(1)
    n, d = 60, 5
    X = rng.standard_normal((n, d))
    sw = rng.uniform(0.5, 1.5, n)
    l1, l2 = {"none": (0, 0), "l2": (0, 0.1), "l1": (0.1, 0), "elasticnet": (0.03, 0.07)}[penalty]
    if loss in MARGIN_LOSSES:
        y = rng.integers(0, 2, n).astype(float)  # class indices; output 0 is class 1
        cfg = _config(loss, Target.TARGET_OVR, 1, l1, l2)
    else:
        y = rng.standard_normal(n)
        cfg = _config(loss, Target.TARGET_REGRESSION, 1, l1, l2)
    params = rng.standard_normal(d + 1)  # no coefficient at 0, where |w| has a kink
    obj = _fd_check(X, y, sw, 1, cfg, params)
    # The objective itself against NumPy for the smooth, common losses.
    z = X @ params[:d] + params[d]
    pen = l2 / 2 * params[:d] @ params[:d] + l1 * np.abs(params[:d]).sum()
    if loss == "squared_error":
        assert obj[0] == pytest.approx(np.mean(sw * 0.5 * (z - y) ** 2) + pen, rel=1e-12)
    if loss == "log_loss":
        ypm = 2 * y - 1
        assert obj[0] == pytest.approx(np.mean(sw * np.logaddexp(0, -ypm * z)) + pen, rel=1e-12)


@pytest.mark.parametrize("target", ["ovr", "multinomial"])
def test_multiclass_gradient_matches_finite_differences(target):
    rng = np.random.default_rng(2)
    n, d, K = 50, 4, 3
    X = rng.standard_normal((n, d))
    y = rng.integers(0, K, n).astype(float)
    sw = np.ones(n)
    cfg = _config("log_loss", Target.TARGET_OVR if target == "ovr" else Target.TARGET_MULTINOMIAL,
                  K, 0.0, 0.05)
    _fd_check(X, y, sw, K, cfg, rng.standard_normal(K * (d + 1)))


def test_loss_derivatives_match_finite_differences_pointwise():
    """Every per-sample loss derivative, over a grid that avoids the kinks."""
    h = 1e-6
    for loss, code in LOSS_CODES.items():
        ys = [-1.0, 1.0] if loss in MARGIN_LOSSES else [-0.7, 0.4]
        for y in ys:
            # Kinks: margin y*z in {-1, 0, 1}; residual z - y in {-eps, 0, eps}.
            kinks = [-1.0 / y, 0.0, 1.0 / y] if loss in MARGIN_LOSSES else [y - 0.3, y, y + 0.3]
            for z in np.linspace(-3.05, 3.05, 41):
                if min(abs(z - k) for k in kinks) < 1e-3:
                    continue
                lp = _linear.sample_loss(code, z + h, y, 0.3)[0]
                lm = _linear.sample_loss(code, z - h, y, 0.3)[0]
                _, dl = _linear.sample_loss(code, z, y, 0.3)
                assert dl == pytest.approx((lp - lm) / (2 * h), rel=1e-5, abs=1e-6), (loss, y, z)


def test_log_loss_single_exp_twin_is_bit_identical():
    """The per-sample log loss shares one exp between the loss and its derivative; it
    must give the bits of the generic switch, and match the closed forms."""
    code = LOSS_CODES["log_loss"]
    zs = np.concatenate([[0.0, -0.0, 5e-324, -5e-324, 1e-300, 40.0, -40.0, 800.0, -800.0],
                         RNG.standard_normal(500) * 10, RNG.standard_normal(200) * 1e-8])
    for z in zs:
        for y in (-1.0, 1.0):
            fast = _linear.sample_loss(code, z, y, 0.0)
            generic = _linear._sample_loss_generic(code, z, y, 0.0)
            assert fast == generic, (z, y, fast, generic)
            m = y * z
            np.testing.assert_allclose(fast[0], np.logaddexp(0.0, -m), rtol=1e-13, atol=0)
            np.testing.assert_allclose(fast[1], -y * expit(-m), rtol=1e-13, atol=1e-300)


def test_log_loss_is_stable_for_large_margins():
    code = LOSS_CODES["log_loss"]
    l, d = _linear.sample_loss(code, 800.0, 1.0, 0.0)
    assert l == 0.0 and d == 0.0
    l, d = _linear.sample_loss(code, -800.0, 1.0, 0.0)
    assert l == pytest.approx(800.0) and d == pytest.approx(-1.0)


# ---------------------------------------------------------------- optimizer steps
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizer_steps_match_numpy(dtype):
    rng = np.random.default_rng(3)
    n = 37
    w0, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    s0, s1 = rng.random(n).astype(dtype), rng.random(n).astype(dtype)
    lr, l2, gs, t = 0.1, 0.01, 0.5, 3.0
    tol = 1e-12 if dtype == np.float64 else 1e-5
    ge = gs * g.astype(float) + l2 * w0

    w = w0.copy()
    _optim.step(w, g, s0.copy(), s1.copy(), {"solver": Solver.SOLVER_SGD}, gs, lr, l2, t)
    np.testing.assert_allclose(w, (1 - lr * l2) * w0 - lr * gs * g, atol=tol)

    w, v = w0.copy(), s0.copy()
    _optim.step(w, g, v, s1.copy(), {"solver": Solver.SOLVER_SGD, "momentum": 0.9, "nesterov": True}, gs, lr, l2, t)
    v_ref = 0.9 * s0 - lr * ge
    np.testing.assert_allclose(v, v_ref, atol=tol)
    np.testing.assert_allclose(w, w0 + 0.9 * v_ref - lr * ge, atol=tol)

    w, m, v = w0.copy(), s0.copy(), s1.copy()
    _optim.step(w, g, m, v, {"solver": Solver.SOLVER_ADAM}, gs, lr, l2, t)
    m_ref = 0.9 * s0 + 0.1 * ge
    v_ref = 0.999 * s1 + 0.001 * ge ** 2
    lr_t = lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    np.testing.assert_allclose(w, w0 - lr_t * m_ref / (np.sqrt(v_ref) + 1e-8), atol=tol * 10)

    w, G = w0.copy(), s0.copy()
    _optim.step(w, g, G, s1.copy(), {"solver": Solver.SOLVER_ADAGRAD}, gs, lr, l2, t)
    G_ref = s0 + ge ** 2
    np.testing.assert_allclose(w, w0 - lr * ge / (np.sqrt(G_ref) + 1e-8), atol=tol * 10)


def test_l1_cumulative_penalty_matches_reference_and_clips_at_zero():
    w0 = np.array([0.5, -0.5, 0.05, -0.05, 0.0, 1.0])
    q0 = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -0.2])
    u = 0.1
    w, q = w0.copy(), q0.copy()
    _optim.l1_truncate(w, q, u)
    ref = w0.copy()
    for j in range(len(ref)):
        if ref[j] > 0:
            ref[j] = max(0.0, ref[j] - (u + q0[j]))
        elif ref[j] < 0:
            ref[j] = min(0.0, ref[j] + (u - q0[j]))
    np.testing.assert_array_equal(w, ref)
    np.testing.assert_array_equal(q, q0 + (ref - w0))
    assert w[2] == 0.0 and w[3] == 0.0  # crossing zero stops exactly at zero


def test_l1_penalty_gives_exact_zeros():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 20))
    y = X[:, :3] @ np.array([2.0, -1.0, 1.5]) + 0.1 * rng.standard_normal(300)
    for est in [cgd.SGDRegressor(penalty="l1", alpha=0.05, random_state=0),
                cgd.SGDRegressor(penalty="l1", alpha=0.05, batch_size=32, random_state=0,
                                 learning_rate="constant", eta0=0.01),
                cgd.SGDRegressor(penalty="elasticnet", l1_ratio=0.9, alpha=0.05, random_state=0)]:
        est.fit(X, y)
        assert np.all(est.coef_[3:] == 0.0), est
        assert np.all(est.coef_[:3] != 0.0)


def test_schedules_match_scikit_learn_formulas():
    assert _optim.eta(1, 0.1, 1e-4, 50.0, 0.5, 0.0) == 0.1
    assert _optim.eta(3, 0.1, 1e-4, 50.0, 0.5, 0.0) == pytest.approx(0.1 / 50 ** 0.5)
    assert _optim.eta(2, 0.1, 1e-4, 50.0, 0.5, 1000.0) == pytest.approx(1 / (1e-4 * (1000 + 49)))
