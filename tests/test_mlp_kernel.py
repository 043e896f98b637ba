"""The MLP kernel (src/_mlp.pyx): back-propagation against NumPy and finite differences."""

import numpy as np
import pytest
from scipy.special import expit, softmax

from cgd import _mlp

ACT = {"identity": 0, "logistic": 1, "tanh": 2, "relu": 3}
OUT = {"regression": 0, "binary": 1, "multilabel": 1, "multiclass": 4}
F = {"identity": lambda h: h, "logistic": expit, "tanh": np.tanh, "relu": lambda h: np.maximum(h, 0)}
DF = {"identity": lambda a: np.ones_like(a), "logistic": lambda a: a * (1 - a),
      "tanh": lambda a: 1 - a ** 2, "relu": lambda a: (a > 0).astype(a.dtype)}


def _problem(task, hidden, seed=0, n=40, d=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    n_out = {"regression": 2, "binary": 1, "multilabel": 3, "multiclass": 4}[task]
    if task == "regression":
        Y = rng.standard_normal((n, n_out))
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
    """The seeds' delta rule, written out: forward, delta = y_hat - y, backwards."""
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
        else:
            A.append(expit(h))
    yhat = A[-1]
    if task == "regression":
        loss = np.sum(sw * 0.5 * np.sum((yhat - Y) ** 2, axis=1))
    elif task == "multiclass":
        loss = -np.sum(sw * np.sum(Y * np.log(yhat), axis=1))
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


@pytest.mark.parametrize("task", ["regression", "binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("act", list(ACT))
@pytest.mark.parametrize("hidden", [(6,), (6, 4), (5, 4, 3)])
def test_backprop_matches_numpy(task, act, hidden):
    X, Y, sw, sizes, params = _problem(task, hidden)
    loss, grad = _native(X, Y, sw, sizes, params, act, task)
    ref_loss, ref_grad = _numpy_backprop(X, Y, sw, sizes, params, act, task)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task", ["regression", "binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("act", ["identity", "logistic", "tanh", "relu"])
def test_gradient_matches_finite_differences(task, act):
    X, Y, sw, sizes, params = _problem(task, (6, 4), seed=1)
    _, grad = _native(X, Y, sw, sizes, params, act, task)
    h = 1e-5
    fd = np.empty_like(params)
    for j in range(params.size):
        p, q = params.copy(), params.copy()
        p[j] += h
        q[j] -= h
        fd[j] = (_native(X, Y, sw, sizes, p, act, task)[0]
                 - _native(X, Y, sw, sizes, q, act, task)[0]) / (2 * h)
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
