"""The MLP kernel (src/_mlp.pyx): back-propagation against NumPy and finite differences."""

import math
import platform

import numpy as np
import pytest
from scipy.special import expit, softmax

from cgd import _mlp
from cgd._codes import HIDDEN_ACTIVATION_CODES, OUT_ACTIVATION_CODES

from _helpers import central_differences, requires_openmp

ACT = HIDDEN_ACTIVATION_CODES
# The output activation of each task, as the estimators choose it.
OUT = {task: OUT_ACTIVATION_CODES[name] for task, name in [
    ("regression", "identity"), ("binary", "logistic"), ("multilabel", "logistic"),
    ("multiclass", "softmax"), ("poisson", "exp")]}
F = {"identity": lambda h: h, "logistic": expit, "tanh": np.tanh, "relu": lambda h: np.maximum(h, 0)}
DF = {"identity": lambda a: np.ones_like(a), "logistic": lambda a: a * (1 - a),
      "tanh": lambda a: 1 - a ** 2, "relu": lambda a: (a > 0).astype(a.dtype)}


def _problem(task, hidden, seed=0, n=40, d=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    n_out = {"regression": 2, "binary": 1, "multilabel": 3, "multiclass": 4, "poisson": 2}[task]
    if task == "regression":
        Y = rng.standard_normal((n, n_out))
    elif task == "poisson":
        Y = rng.poisson(1.5, (n, n_out)).astype(float)
    elif task == "multiclass":
        Y = np.eye(n_out)[rng.integers(0, n_out, n)]
    else:
        Y = rng.integers(0, 2, (n, n_out)).astype(float)
    sizes = np.array([d, *hidden, n_out], dtype=np.intp)
    P = sum((sizes[l] + 1) * sizes[l + 1] for l in range(len(sizes) - 1))
    params = (0.5 * rng.standard_normal(P)).astype(dtype)
    sw = rng.uniform(0.5, 1.5, n).astype(dtype)
    return X, Y.astype(dtype), sw, sizes, params


def _unpack(params, sizes):
    Ws, bs, o = [], [], 0
    for l in range(len(sizes) - 1):
        Ws.append(params[o:o + sizes[l] * sizes[l + 1]].reshape(sizes[l], sizes[l + 1]))
        o += sizes[l] * sizes[l + 1]
        bs.append(params[o:o + sizes[l + 1]])
        o += sizes[l + 1]
    return Ws, bs


def _numpy_backprop(X, Y, sw, sizes, params, act, task):
    """The delta rule, written out: forward, delta = y_hat - y, backwards."""
    Ws, bs = _unpack(params, sizes)
    A = [X]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        h = A[-1] @ W + b
        if l < len(Ws) - 1:
            A.append(F[act](h))
        elif task == "regression":
            A.append(h)
        elif task == "multiclass":
            A.append(softmax(h, axis=1))
        elif task == "poisson":
            A.append(np.exp(h))
        else:
            A.append(expit(h))
    yhat = A[-1]
    if task == "regression":
        loss = np.sum(sw * 0.5 * np.sum((yhat - Y) ** 2, axis=1))
    elif task == "multiclass":
        loss = -np.sum(sw * np.sum(Y * np.log(yhat), axis=1))
    elif task == "poisson":
        ylogy = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1) / yhat), 0.0)
        loss = np.sum(sw * np.sum(ylogy - Y + yhat, axis=1))
    else:
        loss = -np.sum(sw * np.sum(Y * np.log(yhat) + (1 - Y) * np.log(1 - yhat), axis=1))
    delta = sw[:, None] * (yhat - Y)
    grads = []
    for l in range(len(Ws) - 1, -1, -1):
        grads.append((A[l].T @ delta, delta.sum(axis=0)))
        if l > 0:
            delta = (delta @ Ws[l].T) * DF[act](A[l])
    flat = np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in grads[::-1]])
    return loss, flat


def _native(X, Y, sw, sizes, params, act, task, rows=None):
    grad = np.empty_like(params)
    rows = np.arange(X.shape[0], dtype=np.intp) if rows is None else rows
    loss = _mlp.mlp_loss_grad(X, Y, sw, rows, params, sizes, ACT[act], OUT[task], grad)
    return loss, grad


@pytest.mark.parametrize("task", ["regression", "binary", "multilabel", "multiclass", "poisson"])
@pytest.mark.parametrize("act", list(ACT))
@pytest.mark.parametrize("hidden", [(6,), (6, 4), (5, 4, 3)])
def test_backprop_matches_numpy(task, act, hidden):
    X, Y, sw, sizes, params = _problem(task, hidden)
    loss, grad = _native(X, Y, sw, sizes, params, act, task)
    ref_loss, ref_grad = _numpy_backprop(X, Y, sw, sizes, params, act, task)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task", ["regression", "binary", "multilabel", "multiclass", "poisson"])
@pytest.mark.parametrize("act", ["identity", "logistic", "tanh", "relu"])
def test_gradient_matches_finite_differences(task, act):
    X, Y, sw, sizes, params = _problem(task, (6, 4), seed=1)
    _, grad = _native(X, Y, sw, sizes, params, act, task)
    fd = central_differences(lambda p: _native(X, Y, sw, sizes, p, act, task)[0], params, 1e-5)
    # relu's kink: a pre-activation within h of zero would make FD meaningless there.
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_rows_select_and_float32_follows_float64():
    X, Y, sw, sizes, params = _problem("multiclass", (8,), seed=2)
    rows = np.array([5, 0, 17, 17, 3], dtype=np.intp)
    loss, grad = _native(X, Y, sw, sizes, params, "tanh", "multiclass", rows)
    ref_loss, ref_grad = _numpy_backprop(X[rows], Y[rows], sw[rows], sizes, params, "tanh",
                                         "multiclass")
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
    f32 = [a.astype(np.float32) for a in (X, Y, sw, params)]
    loss32, grad32 = _native(f32[0], f32[1], f32[2], sizes, f32[3], "tanh", "multiclass", rows)
    assert grad32.dtype == np.float32
    assert loss32 == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad32, ref_grad, rtol=1e-4, atol=1e-5)


def test_bad_shapes_are_refused():
    X, Y, sw, sizes, params = _problem("regression", (3,))
    with pytest.raises(ValueError, match="entries"):
        _native(X, Y, sw, sizes, params[:-1], "tanh", "regression")
    with pytest.raises(ValueError, match="range"):
        _native(X, Y, sw, sizes, params, "tanh", "regression", np.array([0, 99], dtype=np.intp))


# ---------------------------------------------------------------- the epoch kernel
from threadpoolctl import threadpool_limits  # noqa: E402


def _cfg(batch_size, lr, alpha, solver, momentum, nesterov, n_threads, act, task):
    return dict(batch_size=batch_size, hidden_activation=ACT[act], out_activation=OUT[task],
                n_threads=n_threads, alpha=alpha, learning_rate=lr, solver=solver,
                momentum=momentum, nesterov=nesterov, beta_1=0.9, beta_2=0.999,
                adam_epsilon=1e-8)


def _epoch(X, Y, sw, sizes, params, *, batch_size, lr, alpha=0.0, solver=0, momentum=0.0,
           nesterov=False, n_threads=1, act="tanh", task="multiclass", order=None, t=1.0,
           opt=None):
    P = params.size
    opt = np.zeros((2, P), X.dtype) if opt is None else opt
    order = np.arange(X.shape[0], dtype=np.intp) if order is None else order
    cfg = _cfg(batch_size, lr, alpha, solver, momentum, nesterov, n_threads, act, task)
    with threadpool_limits(1, user_api="blas"):  # BLAS bits depend on its thread count
        status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, X.shape[1], Y, sw, order, sizes,
                                         params, opt, cfg, t)
    return status, t, loss, opt


def _l2_mask(sizes):
    return np.concatenate([np.r_[np.ones(sizes[l] * sizes[l + 1]), np.zeros(sizes[l + 1])]
                           for l in range(len(sizes) - 1)])


@pytest.mark.parametrize("hidden", [(6,), (7, 5)])
# 150 and 1500 rows: the dense team's tiles; 5000 (over 4096): blocks in several waves
@pytest.mark.parametrize("n", [150, 1500, 5000])
def test_full_batch_sgd_step_matches_numpy(hidden, n):
    X, Y, sw, sizes, params = _problem("multiclass", hidden, seed=3, n=n)
    w0 = params.copy()
    lr, alpha = 0.1, 0.3
    status, t, loss, _ = _epoch(X, Y, sw, sizes, params, batch_size=n, lr=lr, alpha=alpha)
    ref_loss, g = _numpy_backprop(X, Y, sw, sizes, w0, "tanh", "multiclass")
    # scikit-learn's MLP update: (sum_i s_i grad_i + alpha W) / sum_i s_i, W only.
    mask = _l2_mask(sizes)
    S = sw.sum()
    expected = w0 - lr * (g + alpha * mask * w0) / S
    # reported loss: scikit-learn's batch loss times the batch size
    ref_report = n * (ref_loss + 0.5 * alpha * np.sum(mask * w0 ** 2)) / S
    assert status == 0 and t == 2.0 and loss == pytest.approx(ref_report, rel=1e-12)
    np.testing.assert_allclose(params, expected, rtol=0, atol=1e-10)


def test_adam_minibatch_sequence_matches_numpy():
    X, Y, sw, sizes, params = _problem("regression", (5,), seed=4, n=100)
    w = params.copy()
    m_, v_ = np.zeros_like(w), np.zeros_like(w)
    lr, alpha = 0.01, 0.05
    mask = _l2_mask(sizes)
    report = 0.0
    for t, sl in enumerate([slice(0, 64), slice(64, 100)], start=1):
        l, g = _numpy_backprop(X[sl], Y[sl], sw[sl], sizes, w, "relu", "regression")
        S = sw[sl].sum()
        # the squared error is reported as a mean over the 2 outputs, as scikit-learn's
        report += (sl.stop - sl.start) / S * (l / 2 + 0.5 * alpha * np.sum(mask * w ** 2))
        g = (g + alpha * mask * w) / S
        m_, v_ = 0.9 * m_ + 0.1 * g, 0.999 * v_ + 0.001 * g * g
        w = w - lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m_ / (np.sqrt(v_) + 1e-8)
    status, t, loss, _ = _epoch(X, Y, sw, sizes, params, batch_size=64, lr=lr, alpha=alpha,
                                solver=1, act="relu", task="regression")
    assert status == 0 and t == 3.0 and loss == pytest.approx(report, rel=1e-12)
    np.testing.assert_allclose(params, w, rtol=0, atol=1e-10)


def test_zero_weight_batch_is_skipped():
    X, Y, sw, sizes, params = _problem("binary", (4,), seed=7, n=20)
    sw[:10] = 0
    w0 = params.copy()
    status, t, _, _ = _epoch(X, Y, sw, sizes, params, batch_size=10, lr=0.1, alpha=0.1,
                             act="logistic", task="binary", order=np.arange(10, dtype=np.intp))
    assert status == 0 and t == 1.0 and np.array_equal(params, w0)


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# up to 3000 rows: the dense team's tiles; 5000 (over 4096): the blocks of batch_gradient,
# 79 of 64 rows in five waves of up to 16, several per thread
@pytest.mark.parametrize("batch_size", [64, 200, 1000, 3000, 5000])
def test_epoch_is_bit_identical_for_any_thread_count(dtype, batch_size):
    n = max(3000, batch_size)
    X, Y, sw, sizes, params = _problem("multiclass", (40, 20), seed=5, n=n, d=30, dtype=dtype)
    order = np.random.default_rng(0).permutation(n).astype(np.intp)
    results = []
    for nt in (1, 2, 3):
        p = params.copy()
        _, _, loss, _ = _epoch(X, Y, sw, sizes, p, batch_size=batch_size, lr=0.05, alpha=1e-3,
                               solver=0, momentum=0.9, nesterov=True, n_threads=nt, order=order)
        results.append((p, loss))
    for p, loss in results[1:]:
        assert np.array_equal(p, results[0][0]) and loss == results[0][1]


def _numpy_adam_epoch(X, Y, sw, sizes, w, order, batch_size, lr, alpha, act, task):
    """scikit-learn's mini-batch Adam over ``order``, written out with the NumPy delta
    rule: the updated weights and the reported loss (zero-weight batches skipped)."""
    m_, v_ = np.zeros_like(w), np.zeros_like(w)
    mask = _l2_mask(sizes)
    report, t = 0.0, 1
    out_scale = 1.0 / Y.shape[1] if task == "regression" else 1.0
    for s in range(0, order.size, batch_size):
        rows = order[s:s + batch_size]
        S = sw[rows].sum()
        if S == 0:
            continue
        loss, g = _numpy_backprop(X[rows], Y[rows], sw[rows], sizes, w, act, task)
        report += rows.size / S * (loss * out_scale + 0.5 * alpha * np.sum(mask * w ** 2))
        g = (g + alpha * mask * w) / S
        m_, v_ = 0.9 * m_ + 0.1 * g, 0.999 * v_ + 0.001 * g * g
        w = w - lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m_ / (np.sqrt(v_) + 1e-8)
        t += 1
    return w, report, t


# The dense epoch's team (batches up to 4096 rows): every product over a whole batch, in
# tiles of its output. Shapes with one layer (the output activation on whole rows after
# the first layer's column tiles), several hidden layers, widths that do not split
# evenly, batches of one to three blocks of rows, a short last batch, a zero-weight batch.
@pytest.mark.parametrize("task,act,hidden", [
    ("multiclass", "relu", ()), ("regression", "identity", ()), ("poisson", "tanh", (9,)),
    ("binary", "logistic", (37, 5)), ("multilabel", "tanh", (70, 33, 6)),
    ("multiclass", "relu", (130, 67))])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_team_epoch_matches_numpy_adam(task, act, hidden, n_threads):
    X, Y, sw, sizes, params = _problem(task, hidden, seed=11, n=420, d=23)
    params *= 0.3  # no probability near 0 or 1, where the kernel clips and NumPy does not
    sw[100:130] = 0  # the batch order[100:130] ... of batch 30 has weight zero
    order = np.r_[np.arange(100, 130), np.random.default_rng(2).permutation(
        np.r_[np.arange(100), np.arange(130, 420)])].astype(np.intp)
    lr, alpha = 0.01, 0.05
    for batch_size in (30, 129, 420):
        w, report, t_ref = _numpy_adam_epoch(X, Y, sw, sizes, params.copy(), order, batch_size,
                                             lr, alpha, act, task)
        p = params.copy()
        status, t, loss, _ = _epoch(X, Y, sw, sizes, p, batch_size=batch_size, lr=lr,
                                    alpha=alpha, solver=1, act=act, task=task, order=order,
                                    n_threads=n_threads)
        assert status == 0 and t == t_ref and loss == pytest.approx(report, rel=1e-12)
        np.testing.assert_allclose(p, w, rtol=0, atol=1e-12 * max(1.0, np.abs(w).max()))


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden,batch_size", [((300, 41), 128), ((257,), 129), ((), 64)])
def test_team_epoch_is_bit_identical_with_the_team_on_and_off(dtype, hidden, batch_size):
    """Window 0: the team and the master alone take turns every two batches, so that
    tiles of one epoch are computed by either; every thread count gives the same bits,
    and the one-thread kernel too. The helpers must have run tasks (counted by the
    kernel), else the bits would prove nothing: a helper may sleep through an epoch this
    short on a busy machine, so each thread count gets up to three tries to show it."""
    X, Y, sw, sizes, params = _problem("multiclass", hidden, seed=12, n=1100, d=150,
                                       dtype=dtype)
    order = np.random.default_rng(3).permutation(1100).astype(np.intp)
    old = _mlp.set_mlp_team_window(0.0)
    # three threads on a two-core machine: a helper descheduled in a task may keep the
    # master waiting long enough for the wait rule, which would end the turns
    old_share = _mlp.set_mlp_wait_share(1e9)
    # and the CPU-share rule off (share 0), which would drop the team for good on a busy
    # machine: the turns of team and master are what is tested
    old_cpu = _mlp.set_mlp_cpu_share(0.0, 2e-3, 1.05, 50e-3)
    try:
        runs = []
        for nt in (1, 2, 3):
            for attempt in range(3 if nt > 1 else 1):
                p = params.copy()
                opt = np.zeros((2, p.size), dtype)
                cfg = _cfg(batch_size, 0.01, 1e-3, 1, 0.0, False, nt, "relu", "multiclass")
                with threadpool_limits(1, user_api="blas"):
                    status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, X.shape[1], Y, sw,
                                                     order, sizes, p, opt, cfg, 1.0)
                runs.append((status, t, loss, p, opt))
                if nt == 1 or cfg["team_stats"]["helper_tasks"] > 0:
                    break
            if nt > 1:  # both ways ran, and the helpers did run tasks of the team's turns
                rate_team, rate_solo, solo_windows, _ = cfg["team_rates"]
                assert rate_team > 0 and rate_solo > 0 and solo_windows > 0
                assert cfg["team_stats"]["helper_tasks"] > 0
    finally:
        _mlp.set_mlp_team_window(old)
        _mlp.set_mlp_wait_share(old_share)
        _mlp.set_mlp_cpu_share(*old_cpu)
    for status, t, loss, p, opt in runs[1:]:
        assert (status, t, loss) == runs[0][:3]
        assert np.array_equal(p, runs[0][3]) and np.array_equal(opt, runs[0][4])


def test_epoch_reports_divergence():
    X, Y, sw, sizes, params = _problem("regression", (4,), seed=6, n=50)
    status, _, _, _ = _epoch(X * 1e200, Y, sw, sizes, params, batch_size=10, lr=1.0,
                             act="identity", task="regression")
    assert status == 1


# ---------------------------------------------------------------- objective and forward
def _objective(X, Y, sw, sizes, params, alpha, act, task, n_threads=1, rows=None):
    rows = np.arange(X.shape[0], dtype=np.intp) if rows is None else rows
    grad = np.empty(params.size)
    cfg = _cfg(rows.size, 0.0, alpha, 0, 0.0, False, n_threads, act, task)
    with threadpool_limits(1, user_api="blas"):
        status, loss, penalty = _mlp.mlp_objective(X.ravel(), None, None, X.shape[1], Y, sw, rows,
                                                   sizes, params, grad, cfg)
    assert penalty == pytest.approx(0.5 * alpha * np.sum(_l2_mask(sizes) * np.float64(params) ** 2)
                                    / np.float64(sw[rows]).sum(), rel=1e-12)
    return status, loss, grad


def _assert_objective_is_numpys(loss, grad, X, Y, sw, sizes, params, alpha, act, task):
    """The kernel's objective (weighted mean loss + alpha/2 |W|^2 over the total weight)
    and its gradient equal the NumPy delta rule's."""
    ref_loss, g = _numpy_backprop(X, Y, sw, sizes, params, act, task)
    mask = _l2_mask(sizes)
    S = sw.sum()
    assert loss == pytest.approx((ref_loss + 0.5 * alpha * np.sum(mask * params ** 2)) / S,
                                 rel=1e-12)
    np.testing.assert_allclose(grad, (g + alpha * mask * params) / S, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass", "poisson"])
@pytest.mark.parametrize("hidden", [(5,), (6, 4, 3)])
def test_objective_matches_numpy_and_finite_differences(task, hidden):
    X, Y, sw, sizes, params = _problem(task, hidden, seed=8, n=1200)  # two waves
    alpha = 0.7
    status, loss, grad = _objective(X, Y, sw, sizes, params, alpha, "tanh", task)
    assert status == 0
    _assert_objective_is_numpys(loss, grad, X, Y, sw, sizes, params, alpha, "tanh", task)
    fd = central_differences(
        lambda p: _objective(X, Y, sw, sizes, p, alpha, "tanh", task)[1], params, 1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_objective_is_bit_identical_for_any_thread_count(dtype):
    X, Y, sw, sizes, params = _problem("multiclass", (30,), seed=9, n=2500, d=20, dtype=dtype)
    runs = [_objective(X, Y, sw, sizes, params, 0.1, "relu", "multiclass", nt) for nt in (1, 2, 3)]
    for _, loss, grad in runs[1:]:
        assert loss == runs[0][1] and np.array_equal(grad, runs[0][2])


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass", "poisson"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_forward_matches_numpy(task, n_threads):
    X, Y, sw, sizes, params = _problem(task, (7, 3), seed=10, n=700)
    rows = np.random.default_rng(1).permutation(700)[:600].astype(np.intp)
    out = np.empty((600, sizes[-1]))
    _mlp.mlp_forward(X.ravel(), None, None, X.shape[1], rows, sizes, params, ACT["relu"],
                     OUT[task], out, n_threads)
    Ws, bs = _unpack(params, sizes)
    a = X[rows]
    for l, (W, b) in enumerate(zip(Ws, bs)):
        a = a @ W + b
        if l < len(Ws) - 1:
            a = np.maximum(a, 0)
    a = {"regression": a, "binary": expit(a), "multiclass": softmax(a, axis=1),
         "poisson": np.exp(a)}[task]
    np.testing.assert_allclose(out, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("csr", [False, True])
@pytest.mark.parametrize("hidden", [(), (5,), (6, 4)])
@pytest.mark.parametrize("act", ["logistic", "tanh", "relu"])
def test_bias_gradients_of_every_layer_match_numpy(csr, hidden, act):
    """Each layer's bias gradient is summed in the pass that applies f' to its deltas
    (the output layer's, and b_0's for CSR X without a hidden layer, on their own):
    every path against the delta rule written out in NumPy, over several blocks."""
    import scipy.sparse
    X, Y, sw, sizes, params = _problem("multiclass", hidden, seed=11, n=150, d=8)
    X[np.abs(X) < 0.7] = 0.0
    rows = np.arange(150, dtype=np.intp)
    alpha = 0.3
    grad = np.empty(params.size)
    cfg = _cfg(150, 0.0, alpha, 0, 0.0, False, 2, act, "multiclass")
    x_parts = ((lambda c: (c.data, c.indices, c.indptr))(scipy.sparse.csr_matrix(X)) if csr
               else (X.ravel(), None, None))
    with threadpool_limits(1, user_api="blas"):
        status, loss, _ = _mlp.mlp_objective(*x_parts, X.shape[1], Y, sw, rows, sizes, params,
                                             grad, cfg)
    assert status == 0
    _assert_objective_is_numpys(loss, grad, X, Y, sw, sizes, params, alpha, act, "multiclass")


@pytest.fixture
def simd_level():
    """Restore the float32 Adam step's instruction set after a test lowered it."""
    from cgd import _optim
    old = _optim.simd_cap(2)
    _optim.simd_cap(old)
    yield _optim.simd_cap
    _optim.simd_cap(old)


def _adam_problem(dtype, n, seed=12):
    rng = np.random.default_rng(seed)
    w0, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m0, v0 = (0.1 * rng.standard_normal(n)).astype(dtype), rng.random(n).astype(dtype)
    return w0, g, m0, v0


def _adam_formula(dtype, w0, g, m0, v0, gs, lr, l2, t, b1=0.9, b2=0.999, eps=1e-8):
    """Adam's step as NumPy computes it in `dtype`, operation by operation."""
    lr_t = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    c = {k: dtype(val) for k, val in dict(gs=gs, l2=l2, b1=b1, b2=b2, c1=1.0 - b1,
                                            c2=1.0 - b2, lr_t=lr_t, eps=eps).items()}
    gj = c["gs"] * g + c["l2"] * w0
    m_ref = c["b1"] * m0 + c["c1"] * gj
    v_ref = c["b2"] * v0 + c["c2"] * gj * gj
    w_ref = w0 - c["lr_t"] * m_ref / (np.sqrt(v_ref) + c["eps"])
    return w_ref, m_ref, v_ref


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"),
                    reason="the exact-bits claim is made for x86's SSE2, AVX and AVX-512 builds")
@pytest.mark.parametrize("level", [2, 1, 0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_step_gives_the_bits_of_its_formula(dtype, level, simd_level):
    """Adam's step runs as an AVX (float32: AVX-512) build when the CPU has it: every
    element must still take exactly the IEEE operations of the formula, in order (vector
    body and tail), on every instruction set the float32 step can be held to."""
    from cgd import _optim
    simd_level(level)
    w0, g, m0, v0 = _adam_problem(dtype, 1003)
    gs, lr, l2, t = 0.25, 0.01, 3e-4, 7.0
    w, m, v = w0.copy(), m0.copy(), v0.copy()
    _optim.step(w, g, m, v, {"solver": 1}, gs, lr, l2, t)
    w_ref, m_ref, v_ref = _adam_formula(dtype, w0, g, m0, v0, gs, lr, l2, t)
    assert w.dtype == w_ref.dtype == dtype
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(w, w_ref)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"),
                    reason="the exact-bits claim is made for x86's SSE2, AVX and AVX-512 builds")
@pytest.mark.parametrize("n", [1, 15, 16, 17, 1003, 4096])
def test_float32_adam_step_sums_the_squares_in_its_documented_order(n, simd_level):
    """The float32 Adam step also returns sum(w**2) before the step (the loss's L2 term)
    from the same pass: in double, element j into partial sum j % 16, the sums added in
    a fixed tree. Every build (AVX-512, AVX, baseline) gives the bits of that order
    written out in Python, and the step's bits are the formula's; squared_norm_f32
    (the same sum without a step) gives the same bits; the value is NumPy's float64 sum."""
    from cgd import _optim
    w0, g, m0, v0 = _adam_problem(np.float32, n, seed=n)
    w0 *= 7.0
    s = [0.0] * 16
    for j, x in enumerate(w0.tolist()):
        s[j % 16] += x * x
    ref = ((((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])))
           + (((s[8] + s[9]) + (s[10] + s[11])) + ((s[12] + s[13]) + (s[14] + s[15]))))
    w_ref, m_ref, v_ref = _adam_formula(np.float32, w0, g, m0, v0, 0.5, 0.003, 1e-3, 3.0)
    for level in (2, 1, 0):
        simd_level(level)
        w, m, v = w0.copy(), m0.copy(), v0.copy()
        sq = _optim.adam_step_squared_norm(w, g, m, v, {"solver": 1}, 0.5, 0.003, 1e-3, 3.0)
        assert sq == ref, level
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(m, m_ref)
        np.testing.assert_array_equal(v, v_ref)
    assert _optim.squared_norm_f32(w0) == ref
    exact = float(np.sum(w0.astype(np.float64) ** 2))
    assert abs(sq - exact) <= 1e-13 * exact


@requires_openmp
def test_team_epoch_with_several_tiles_per_layer_matches_numpy_and_thread_counts():
    """Layers large enough to be cut into several weight-gradient tasks (W_0 600 x 520 and
    W_1 520 x 300: more than one task's worth of parameters each) and layer 1 into four
    column tiles: the result is NumPy's mini-batch Adam, with the same bits for 1, 2 and 3
    threads while the team and the master alone take turns."""
    hidden = (520, 300)
    X, Y, sw, sizes, params = _problem("multiclass", hidden, seed=13, n=200, d=600)
    params *= 0.05  # wide layers: keep the probabilities off 0 and 1 (the kernel clips them)
    order = np.random.default_rng(4).permutation(200).astype(np.intp)
    lr, alpha, batch_size = 0.01, 0.05, 70   # a short last batch of 60 rows
    w, report, t_ref = _numpy_adam_epoch(X, Y, sw, sizes, params.copy(), order, batch_size,
                                         lr, alpha, "relu", "multiclass")
    old = _mlp.set_mlp_team_window(0.0)
    try:
        runs = []
        for nt in (1, 2, 3):
            p = params.copy()
            status, t, loss, opt = _epoch(X, Y, sw, sizes, p, batch_size=batch_size, lr=lr,
                                          alpha=alpha, solver=1, act="relu", task="multiclass",
                                          order=order, n_threads=nt)
            runs.append((status, t, loss, p, opt))
    finally:
        _mlp.set_mlp_team_window(old)
    status, t, loss, p, opt = runs[0]
    assert status == 0 and t == t_ref and loss == pytest.approx(report, rel=1e-12)
    np.testing.assert_allclose(p, w, rtol=0, atol=1e-12 * max(1.0, np.abs(w).max()))
    for r in runs[1:]:
        assert r[:3] == runs[0][:3]
        assert np.array_equal(r[3], p) and np.array_equal(r[4], opt)


@pytest.mark.parametrize("rule", ["wait", "cpu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_team_dropped_on_a_busy_machine_backs_off_and_keeps_the_bits(dtype, rule):
    if rule == "cpu" and _mlp.thread_cpu_time() < 0:
        pytest.skip("no thread CPU clock here: the CPU-share rule is off")
    """When the master spends too much of an epoch waiting for its helpers, or too little
    of it on its CPU (a busy machine; forced here with a negative wait share, or a CPU
    share above 1 and a team that can never be timed faster than the master alone), it
    drops them after a few batches and the fit's next epoch runs on one
    thread, the one after on the team again (back-off 1, then 2, ...). Whoever computes
    the tiles, the bits are those of one thread."""
    X, Y, sw, sizes, params = _problem("multiclass", (64, 32), seed=5, n=1200, d=40,
                                       dtype=dtype)
    order = np.random.default_rng(4).permutation(1200).astype(np.intp)
    setter, forced = ((_mlp.set_mlp_wait_share, (-1.0,)) if rule == "wait"
                      else (_mlp.set_mlp_cpu_share, (2.0, 0.0, 1e300, 1e9)))
    old = setter(*forced)
    try:
        runs, rates, backoffs = [], [], []
        for nt in (1, 2):
            p = params.copy()
            opt = np.zeros((2, p.size), dtype)
            cfg = _cfg(64, 0.01, 1e-3, 1, 0.0, False, nt, "relu", "multiclass")
            t = 1.0
            for epoch in range(3):
                with threadpool_limits(1, user_api="blas"):
                    status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, X.shape[1], Y, sw,
                                                     order, sizes, p, opt, cfg, t)
                assert status == 0
                if nt == 2:
                    rates.append(cfg["team_rates"])
                    backoffs.append(cfg.get("team_backoff"))
            runs.append((t, loss, p, opt))
    finally:
        setter(*np.atleast_1d(old))
    # epoch 1: team dropped (not on at the end), back-off (1, 2); epoch 2: one thread
    # (the back-off consumed: (0, 2)); epoch 3: the team again, dropped again: (2, 4)
    assert not rates[0][3] and backoffs[0] == (1, 2)
    assert backoffs[1] == (0, 2)
    assert not rates[2][3] and backoffs[2] == (2, 4)
    assert runs[1][:2] == runs[0][:2]
    assert np.array_equal(runs[1][2], runs[0][2]) and np.array_equal(runs[1][3], runs[0][3])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_team_epoch_in_float32_matches_numpy_adam_in_float64(n_threads):
    """The float32 team epoch (the W3 path) against NumPy's Adam in float64 on the same
    float32 data: float32 rounding only (the bits across thread counts are checked
    above)."""
    X, Y, sw, sizes, params = _problem("multiclass", (130, 67), seed=11, n=420, d=23,
                                       dtype=np.float32)
    params *= 0.3
    order = np.random.default_rng(2).permutation(420).astype(np.intp)
    w, report, t_ref = _numpy_adam_epoch(
        X.astype(np.float64), Y.astype(np.float64), sw.astype(np.float64), sizes,
        params.astype(np.float64), order, 129, 0.01, 0.05, "relu", "multiclass")
    p = params.copy()
    status, t, loss, _ = _epoch(X, Y, sw, sizes, p, batch_size=129, lr=0.01, alpha=0.05,
                                solver=1, act="relu", task="multiclass", order=order,
                                n_threads=n_threads)
    assert p.dtype == np.float32
    # Measured: weights 2.9e-7 of max |w| apart (they moved 7e-2), loss 7e-9.
    assert status == 0 and t == t_ref and loss == pytest.approx(report, rel=1e-6)
    np.testing.assert_allclose(p, w, rtol=0, atol=3e-6 * np.abs(w).max())


@pytest.mark.parametrize("n,d,hidden", [(64, 600, (520,)), (4200, 10, (300,))])
def test_float32_l2_penalty_is_summed_in_double(n, d, hidden):
    """The reported loss's L2 term sums the squared float32 weights in double: one batch
    at two values of alpha differs by exactly (|B| / S) alpha/2 ||W||^2 (the data loss
    is the same in both), against NumPy's float64 sum of the same float32 weights. The
    team's weight tasks (W_0 in three tasks of ~10^5 weights) and the blocks' segments
    (over 4096 rows); float32 sums would be ~1e-5 and ~3e-7 off here."""
    X, Y, sw, sizes, params = _problem("multiclass", hidden, seed=14, n=n, d=d,
                                       dtype=np.float32)
    exact = np.sum(_l2_mask(sizes) * params.astype(np.float64) ** 2)
    losses = []
    for alpha in (1.0, 2.0):
        status, _, loss, _ = _epoch(X, Y, sw, sizes, params.copy(), batch_size=n, lr=0.0,
                                    alpha=alpha, solver=1, act="relu")
        assert status == 0
        losses.append(loss)
    S = np.float64(sw).sum()
    assert (losses[1] - losses[0]) / (n / S * 0.5) == pytest.approx(exact, rel=1e-11)


HELD_UP_SCRIPT = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from cgd import _mlp
from cgd._codes import HIDDEN_ACTIVATION_CODES, OUT_ACTIVATION_CODES
rng = np.random.default_rng(21)
dtype = np.dtype(sys.argv[1])
n, d, sizes = 900, 50, np.array([50, 90, 40, 5], dtype=np.intp)
X = rng.standard_normal((n, d)).astype(dtype)
Y = np.eye(5, dtype=dtype)[rng.integers(0, 5, n)]
sw = rng.uniform(0.5, 1.5, n).astype(dtype)
P = sum((sizes[l] + 1) * sizes[l + 1] for l in range(3))
params = (0.3 * rng.standard_normal(P)).astype(dtype)
order = rng.permutation(n).astype(np.intp)
out = {}
for nt, delay in ((1, 0.0), (2, float(sys.argv[2]))):
    _mlp.set_mlp_helper_delay(delay)
    p, opt = params.copy(), np.zeros((2, P), dtype)
    cfg = dict(batch_size=100, hidden_activation=HIDDEN_ACTIVATION_CODES["relu"],
               out_activation=OUT_ACTIVATION_CODES["softmax"], n_threads=nt, alpha=1e-3,
               learning_rate=0.01, solver=1, momentum=0.0, nesterov=False, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-8)
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, d, Y, sw, order, sizes, p, opt,
                                         cfg, 1.0)
    out[nt] = dict(status=status, t=t, loss=loss, p=p.tobytes().hex(), opt=opt.tobytes().hex(),
                   seconds=time.perf_counter() - t0, stats=cfg.get("team_stats"))
print(json.dumps(out))
"""


@requires_openmp
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_held_up_helper_tasks_are_run_by_the_master(dtype):
    """A helper held up between claiming a task and beginning it (a test hook: one
    second per claim, as a descheduled thread): the master runs the tasks nobody has
    begun and finishes the epoch without waiting for it (its loop far under one second;
    waiting, it would lose a second per phase until the wait rule dismissed the helper,
    or hang until the subprocess's timeout), with the bits of one thread; the late
    helper's claims are dropped."""
    import json
    import sys
    from _helpers import run_subprocess
    proc = run_subprocess([sys.executable, "-c", HELD_UP_SCRIPT, dtype, "1.0"], timeout=25)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    one, two = out["1"], out["2"]
    assert (two["status"], two["t"], two["loss"]) == (one["status"], one["t"], one["loss"])
    assert two["p"] == one["p"] and two["opt"] == one["opt"]
    stats = two["stats"]
    assert stats["threads"] == 2 and stats["taken"] > 0 and stats["meetings"] > 0
    assert stats["wall"] < 0.5


@pytest.mark.parametrize("team_wins", [True, False])
def test_low_cpu_share_times_the_master_alone_and_keeps_the_bits(team_wins):
    """On a low CPU share in an epoch that is not short, the master times itself alone
    (forced: share above 1, window 0, every epoch counted long) and keeps the team when
    it was faster (forced: gain 0; the team is on at the end, no back-off), else drops
    it (gain 1e300: back-off). The master alone was timed either way; the bits are those
    of one thread. (19 batches: with gain 0 the team and the master alone take turns of
    one and four batches from the fifth batch on, the team's turn last.)"""
    if _mlp.thread_cpu_time() < 0:
        pytest.skip("no thread CPU clock here: the CPU-share rule is off")
    X, Y, sw, sizes, params = _problem("multiclass", (64, 32), seed=6, n=1200, d=40)
    order = np.random.default_rng(5).permutation(1200).astype(np.intp)
    old = _mlp.set_mlp_cpu_share(2.0, 0.0, 0.0 if team_wins else 1e300, 0.0)
    # the other rules kept out of it (a slow machine could end the epoch in their probes)
    old_window, old_wait = _mlp.set_mlp_team_window(1e9), _mlp.set_mlp_wait_share(1e9)
    try:
        runs = []
        for nt in (1, 2):
            p = params.copy()
            opt = np.zeros((2, p.size))
            cfg = _cfg(64, 0.01, 1e-3, 1, 0.0, False, nt, "relu", "multiclass")
            with threadpool_limits(1, user_api="blas"):
                status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, X.shape[1], Y, sw,
                                                 order, sizes, p, opt, cfg, 1.0)
            runs.append((status, t, loss, p, opt))
    finally:
        _mlp.set_mlp_cpu_share(*old)
        _mlp.set_mlp_team_window(old_window)
        _mlp.set_mlp_wait_share(old_wait)
    rate_team, rate_solo, solo_windows, team_at_end = cfg["team_rates"]
    assert rate_team > 0 and rate_solo > 0 and solo_windows >= 1
    if team_wins:
        assert team_at_end and cfg["team_backoff"] == (0, 1)
    else:
        assert not team_at_end and cfg["team_backoff"] == (1, 2)
        assert cfg["team_stats"]["stalled"] == 1
    assert runs[1][:3] == runs[0][:3]
    assert np.array_equal(runs[1][3], runs[0][3]) and np.array_equal(runs[1][4], runs[0][4])


def _one_forced_epoch(nt, seed=6):
    """One float64 epoch of 19 batches (1200 rows, batches of 64) with the given thread
    count; returns its config and result."""
    X, Y, sw, sizes, params = _problem("multiclass", (64, 32), seed=seed, n=1200, d=40)
    order = np.random.default_rng(5).permutation(1200).astype(np.intp)
    p = params.copy()
    opt = np.zeros((2, p.size))
    cfg = _cfg(64, 0.01, 1e-3, 1, 0.0, False, nt, "relu", "multiclass")
    with threadpool_limits(1, user_api="blas"):
        status, t, loss = _mlp.mlp_epoch(X.ravel(), None, None, X.shape[1], Y, sw, order,
                                         sizes, p, opt, cfg, 1.0)
    return cfg, (status, t, loss, p, opt)


@requires_openmp
def test_cpu_rule_first_looks_at_the_fifth_batch_as_the_wait_rule():
    """The CPU-share rule, forced to drop the team at its first look (share above 1,
    window 0, every epoch counted short), drops it after the same batch as the wait rule
    forced the same way (a negative wait share): the fifth, the first four waking the
    threads up. The team's meetings (phases it ran) tell after which batch it left: a
    look from the first batch on would leave after one batch's phases."""
    if _mlp.thread_cpu_time() < 0:
        pytest.skip("no thread CPU clock here: the CPU-share rule is off")
    meetings = {}
    for rule in ("wait", "cpu"):
        setter, forced = ((_mlp.set_mlp_wait_share, (-1.0,)) if rule == "wait"
                          else (_mlp.set_mlp_cpu_share, (2.0, 0.0, 1e300, 1e9)))
        old = setter(*forced)
        # the team's own timing kept out of it (a window no epoch reaches)
        old_window = _mlp.set_mlp_team_window(1e9)
        try:
            cfg, _ = _one_forced_epoch(2)
        finally:
            setter(*np.atleast_1d(old))
            _mlp.set_mlp_team_window(old_window)
        assert not cfg["team_rates"][3] and cfg["team_backoff"] == (1, 2)
        assert cfg["team_rates"][2] == 0      # dropped without timing the master alone
        meetings[rule] = cfg["team_stats"]["meetings"]
    # five batches' phases: each meets the team at least twice here (FIRST: two column
    # tiles of 64; UPDATE: several weight tiles)
    assert meetings["cpu"] == meetings["wait"] >= 2 * 5


@requires_openmp
@pytest.mark.parametrize("team_wins", [True, False])
def test_cpu_rule_probe_turns_and_rates(team_wins):
    """The CPU-share rule forced to look at every chance in a long epoch (share above 1,
    window 0, short epochs 0 s): the master times itself alone for four batches from the
    fifth batch on. Won (gain 0) the team is back for one batch and the next look starts
    another probe: 19 batches make three probes (batches 6-9, 11-14, 16-19), each timed
    (solo_windows); lost (gain 1e300) the first one drops the team. The rates reported
    are the team's over its batches before the probe (rows per second: positive) and the
    master's alone; the bits are those of one thread."""
    if _mlp.thread_cpu_time() < 0:
        pytest.skip("no thread CPU clock here: the CPU-share rule is off")
    old = _mlp.set_mlp_cpu_share(2.0, 0.0, 0.0 if team_wins else 1e300, 0.0)
    old_window, old_wait = _mlp.set_mlp_team_window(1e9), _mlp.set_mlp_wait_share(1e9)
    try:
        cfg1, one = _one_forced_epoch(1)
        cfg2, two = _one_forced_epoch(2)
    finally:
        _mlp.set_mlp_cpu_share(*old)
        _mlp.set_mlp_team_window(old_window)
        _mlp.set_mlp_wait_share(old_wait)
    rate_team, rate_solo, solo_windows, team_at_end = cfg2["team_rates"]
    assert rate_team > 0 and rate_solo > 0
    assert solo_windows == (3 if team_wins else 1)
    assert bool(team_at_end) == team_wins
    assert cfg2["team_stats"]["stalled"] == (0 if team_wins else 1)
    assert cfg1["team_rates"][2] == 0         # one thread: no rule at all
    assert two[:3] == one[:3]
    assert np.array_equal(two[3], one[3]) and np.array_equal(two[4], one[4])
