"""Multilayer-perceptron kernel: forward pass, loss, back-propagation over a set of rows.

Layers l = 0 .. L-1 map sizes[l] -> sizes[l+1]. The parameters live in one flat buffer:
for each layer its weights W_l (sizes[l] x sizes[l+1], row-major, as scikit-learn's
``coefs_[l]``) followed by its biases b_l (sizes[l+1]); ``offsets`` gives where each
layer's W_l starts. Layer products are row-major GEMMs (``_blas.pxd``).

The delta rule of the seeds: at the output delta = (y_hat - y) for the canonical pairs
(identity / squared error, logistic / binary log-loss, softmax / cross-entropy), then
delta_l = (delta_{l+1} W_l^T) * f'(h_l) backwards through each hidden activation.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log, tanh, isfinite
from libc.string cimport memset

from _blas cimport gemm
from _math cimport sigmoid
from _optim cimport OptimConfig, optimizer_step, read_optim_config
from _reduce cimport reduce_chunks
from _runtime cimport cgd_now, PyErr_CheckSignals, SIGNAL_CHECK_SECONDS

ctypedef Py_ssize_t intp_t

cdef enum:
    ACT_IDENTITY = 0
    ACT_LOGISTIC = 1
    ACT_TANH = 2
    ACT_RELU = 3
    ACT_SOFTMAX = 4


cdef void activate(int act, floating* a, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """In place on an m x n block of pre-activations."""
    cdef Py_ssize_t i, j, size = m * n
    cdef double mx, s
    cdef floating* row
    if act == ACT_LOGISTIC:
        for i in range(size):
            a[i] = <floating>sigmoid(a[i])
    elif act == ACT_TANH:
        for i in range(size):
            a[i] = <floating>tanh(a[i])
    elif act == ACT_RELU:
        for i in range(size):
            if a[i] < 0:
                a[i] = 0
    elif act == ACT_SOFTMAX:
        for i in range(m):
            row = a + i * n
            mx = row[0]
            for j in range(1, n):
                if row[j] > mx:
                    mx = row[j]
            s = 0.0
            for j in range(n):
                row[j] = <floating>exp(row[j] - mx)
                s += row[j]
            for j in range(n):
                row[j] = <floating>(row[j] / s)


cdef void times_derivative(int act, floating* delta, const floating* a,
                           Py_ssize_t size) noexcept nogil:
    """delta *= f'(h), with f' written in terms of the activation a = f(h)."""
    cdef Py_ssize_t i
    if act == ACT_LOGISTIC:
        for i in range(size):
            delta[i] = delta[i] * a[i] * (1 - a[i])
    elif act == ACT_TANH:
        for i in range(size):
            delta[i] = delta[i] * (1 - a[i] * a[i])
    elif act == ACT_RELU:
        for i in range(size):
            if a[i] <= 0:
                delta[i] = 0


cdef double output_loss_and_delta(
    int out_act, const floating* a, const floating* y, floating* delta,
    Py_ssize_t n_out, double sw, double eps,
) noexcept nogil:
    """Loss of one sample (before weighting) and delta = sw * (a - y)."""
    cdef Py_ssize_t k
    cdef double l = 0.0, p, r
    for k in range(n_out):
        r = a[k] - y[k]
        delta[k] = <floating>(sw * r)
        if out_act == ACT_IDENTITY:
            l += 0.5 * r * r
        else:
            # Probabilities are clipped to [eps, 1 - eps] for the log, as scikit-learn.
            p = a[k]
            p = eps if p < eps else (1 - eps if p > 1 - eps else p)
            if out_act == ACT_LOGISTIC:
                l -= y[k] * log(p) + (1 - y[k]) * log(1 - p)
            elif y[k] != 0:
                l -= y[k] * log(p)
    return l


cdef double loss_grad_rows(
    const floating* X, Py_ssize_t n_features,
    const floating* Y, const floating* sw,
    const intp_t* rows, Py_ssize_t m,
    const floating* params, const intp_t* sizes, const intp_t* offsets, Py_ssize_t L,
    int hidden_act, int out_act, double eps,
    floating* grad,           # OUT (P,) += sum over rows of sw_i * dl_i/dparams
    floating* acts,           # scratch: sum_l m * sizes[l] values
    floating* deltas,         # scratch: as acts
) noexcept nogil:
    """Forward and backward pass over `m` rows; returns sum_i sw_i * l_i."""
    cdef Py_ssize_t l, r, j, n_out = sizes[L], a_off = 0
    cdef Py_ssize_t a_start[64]
    cdef double loss = 0.0
    cdef floating* a
    cdef floating* a_next
    cdef floating* d
    cdef floating* d_prev
    cdef const floating* W
    cdef const floating* b
    cdef floating* gW
    cdef floating* gb
    for l in range(L + 1):
        a_start[l] = a_off
        a_off += m * sizes[l]
    # Gather the rows: one pass over each, then every product is a contiguous GEMM.
    for r in range(m):
        for j in range(n_features):
            acts[r * n_features + j] = X[rows[r] * n_features + j]
    for l in range(L):
        a = acts + a_start[l]
        a_next = acts + a_start[l + 1]
        W = params + offsets[l]
        b = W + sizes[l] * sizes[l + 1]
        for r in range(m):
            for j in range(sizes[l + 1]):
                a_next[r * sizes[l + 1] + j] = b[j]
        gemm(False, False, <int>m, <int>sizes[l + 1], <int>sizes[l], 1.0,
             a, <int>sizes[l], W, <int>sizes[l + 1], 1.0, a_next, <int>sizes[l + 1])
        activate(out_act if l == L - 1 else hidden_act, a_next, m, sizes[l + 1])
    a = acts + a_start[L]
    d = deltas + a_start[L]
    for r in range(m):
        loss += sw[rows[r]] * output_loss_and_delta(
            out_act, a + r * n_out, Y + rows[r] * n_out, d + r * n_out, n_out,
            sw[rows[r]], eps)
    for l in range(L - 1, -1, -1):
        a = acts + a_start[l]
        d = deltas + a_start[l + 1]
        W = params + offsets[l]
        gW = grad + offsets[l]
        gb = gW + sizes[l] * sizes[l + 1]
        # dL/dW_l += A_l^T delta_{l+1};  dL/db_l += column sums of delta_{l+1}
        gemm(True, False, <int>sizes[l], <int>sizes[l + 1], <int>m, 1.0,
             a, <int>sizes[l], d, <int>sizes[l + 1], 1.0, gW, <int>sizes[l + 1])
        for r in range(m):
            for j in range(sizes[l + 1]):
                gb[j] += d[r * sizes[l + 1] + j]
        if l > 0:
            d_prev = deltas + a_start[l]
            # delta_l = (delta_{l+1} W_l^T) * f'(h_l)
            gemm(False, True, <int>m, <int>sizes[l], <int>sizes[l + 1], 1.0,
                 d, <int>sizes[l + 1], W, <int>sizes[l + 1], 0.0, d_prev, <int>sizes[l])
            times_derivative(hidden_act, d_prev, a, m * sizes[l])
    return loss


def mlp_loss_grad(
    const floating[:, ::1] X,           # IN  (n_samples, n_features)
    const floating[:, ::1] Y,           # IN  (n_samples, n_outputs) targets / one-hot labels
    const floating[::1] sample_weight,  # IN  (n_samples,)
    const intp_t[::1] rows,             # IN  (m,) rows to use
    const floating[::1] params,         # IN  (P,) flat parameters (see module docstring)
    const intp_t[::1] sizes,            # IN  (L + 1,) layer sizes, input first
    int hidden_activation,
    int out_activation,
    floating[::1] grad,                 # OUT (P,) sum over rows of s_i dl_i/dparams (overwritten)
):
    """Sum over ``rows`` of the weighted per-sample loss, and its gradient in ``grad``.

    Single-threaded BLAS calls on the caller's thread; the estimators cut batches into
    fixed chunks around it for thread-count-independent results.
    """
    import numpy as np
    cdef Py_ssize_t L = sizes.shape[0] - 1, l, m = rows.shape[0], total = 0
    if L < 1 or L > 63:
        raise ValueError("an MLP has between 1 and 63 layers of weights")
    if sizes[0] != X.shape[1] or sizes[L] != Y.shape[1] or Y.shape[0] != X.shape[0] \
            or sample_weight.shape[0] != X.shape[0]:
        raise ValueError("inconsistent shapes passed to mlp_loss_grad")
    offsets = np.zeros(L, dtype=np.intp)
    cdef intp_t[::1] off = offsets
    cdef Py_ssize_t P = 0
    for l in range(L):
        off[l] = P
        P += (sizes[l] + 1) * sizes[l + 1]
        total += m * sizes[l]
    total += m * sizes[L]
    if params.shape[0] != P or grad.shape[0] != P:
        raise ValueError(f"params and grad must have {P} entries")
    if m and (np.min(rows) < 0 or np.max(rows) >= X.shape[0]):
        raise ValueError("rows out of range")
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] acts = np.empty(max(total, 1), dtype=dtype)
    cdef floating[::1] deltas = np.empty(max(total, 1), dtype=dtype)
    cdef double eps = np.finfo(dtype).eps
    cdef double loss
    grad[:] = 0
    if m == 0:
        return 0.0
    with nogil:
        loss = loss_grad_rows(&X[0, 0], X.shape[1], &Y[0, 0], &sample_weight[0], &rows[0], m,
                              &params[0], &sizes[0], &off[0], L, hidden_activation,
                              out_activation, eps, &grad[0], &acts[0], &deltas[0])
    return loss


# A batch of m rows is cut into nblk = ceil(m / BLOCK_ROWS) blocks (at most MAX_BLOCKS;
# beyond that the blocks grow), block c holding rows [c*m // nblk, (c+1)*m // nblk).
# The bounds depend on m only; each block runs its own single-threaded GEMMs (OpenBLAS
# results depend on its thread count and on a call's row count) into its own gradient
# row, and rows are summed in block order: the same bits for any number of threads.
cdef enum:
    BLOCK_ROWS = 64
    MAX_BLOCKS = 16

MAX_BLOCKS_ = MAX_BLOCKS
BLOCK_ROWS_ = BLOCK_ROWS


cdef inline Py_ssize_t n_blocks_for(Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t nblk = (m + BLOCK_ROWS - 1) // BLOCK_ROWS
    return nblk if nblk < MAX_BLOCKS else MAX_BLOCKS


def block_rows_for(Py_ssize_t m):
    """The largest number of rows a block of a batch of m rows holds."""
    cdef Py_ssize_t nblk = n_blocks_for(m)
    return (m + nblk - 1) // nblk if nblk else 0


def mlp_epoch(
    const floating[:, ::1] X,           # IN     (n_samples, n_features)
    const floating[:, ::1] Y,           # IN     (n_samples, n_outputs)
    const floating[::1] sample_weight,  # IN     (n_samples,)
    const intp_t[::1] order,            # IN     (n_train,) rows in visiting order
    const intp_t[::1] sizes,            # IN     (L + 1,) layer sizes
    floating[::1] params,               # IN/OUT (P,) flat parameters
    floating[:, ::1] opt_state,         # IN/OUT (2, P) velocity / adam moments / adagrad sums
    floating[:, ::1] work_grad,         # scratch (>= blocks of a batch, P)
    floating[:, ::1] work_act,          # scratch (>= blocks of a batch, rows per block * sum(sizes))
    floating[:, ::1] work_delta,        # scratch (as work_act)
    dict config,
    double t,                           # IN     number of the first update (adam), from 1
):
    """Train one epoch of mini-batch updates in place.

    Each update: w <- step(w, (1/m) sum_i s_i dl_i/dw + (alpha/m) w) for weights (the L2
    scaling of scikit-learn's MLPs), biases unpenalised, at the fixed rate
    ``config["learning_rate"]``. Returns ``(status, t, loss_sum)``: status 0 ok,
    1 diverged; loss_sum the sum over rows of s_i l_i at the weights before each update.
    """
    import numpy as np
    cdef Py_ssize_t L = sizes.shape[0] - 1, l, n_order = order.shape[0]
    cdef Py_ssize_t m = config["batch_size"], start, mb, nblk, c, r0, r1, P = 0
    cdef int hidden_act = config["hidden_activation"], out_act = config["out_activation"]
    cdef int nt = config["n_threads"], status = 0
    cdef double alpha = config["alpha"], lr = config["learning_rate"]
    cdef double eps = np.finfo(np.float32 if floating is float else np.float64).eps
    cdef double loss_sum = 0.0, batch_loss, last_check
    cdef OptimConfig oc = read_optim_config(config)
    offsets = np.zeros(max(L, 1), dtype=np.intp)
    cdef intp_t[::1] off = offsets
    cdef Py_ssize_t act_total = 0
    for l in range(L):
        off[l] = P
        P += (sizes[l] + 1) * sizes[l + 1]
    for l in range(L + 1):
        act_total += sizes[l]
    if L < 1 or L > 63 or sizes[0] != X.shape[1] or sizes[L] != Y.shape[1] \
            or Y.shape[0] != X.shape[0] or sample_weight.shape[0] != X.shape[0]:
        raise ValueError("inconsistent shapes passed to mlp_epoch")
    if m < 1 or nt < 1:
        raise ValueError("batch_size and n_threads must be >= 1")
    mmax = min(m, n_order)
    if params.shape[0] != P or opt_state.shape[0] < 2 or opt_state.shape[1] != P \
            or work_grad.shape[0] < n_blocks_for(mmax) or work_grad.shape[1] != P \
            or work_act.shape[0] < n_blocks_for(mmax) \
            or work_act.shape[1] < block_rows_for(mmax) * act_total \
            or work_delta.shape[0] < work_act.shape[0] or work_delta.shape[1] < work_act.shape[1]:
        raise ValueError("parameters, optimizer state or work buffers do not match the layers")
    if n_order == 0:
        return 0, t, 0.0
    cdef double[::1] block_loss = np.zeros(MAX_BLOCKS)
    cdef floating* prm = &params[0]
    cdef floating* g
    with nogil:
        last_check = cgd_now()
        start = 0
        while start < n_order:
            mb = min(m, n_order - start)
            nblk = n_blocks_for(mb)
            for c in prange(nblk, schedule="static", num_threads=nt if nblk > 1 else 1):
                memset(&work_grad[c, 0], 0, P * sizeof(floating))
                block_loss[c] = loss_grad_rows(
                    &X[0, 0], X.shape[1], &Y[0, 0], &sample_weight[0],
                    &order[start + (c * mb) // nblk], ((c + 1) * mb) // nblk - (c * mb) // nblk,
                    prm, &sizes[0], &off[0], L, hidden_act, out_act, eps,
                    &work_grad[c, 0], &work_act[c, 0], &work_delta[c, 0])
            reduce_chunks(&work_grad[0, 0], P, nblk, 0, P)
            batch_loss = 0.0
            for c in range(nblk):
                batch_loss += block_loss[c]
            loss_sum += batch_loss
            if not isfinite(batch_loss):
                status = 1
                break
            g = &work_grad[0, 0]
            for l in range(L):
                # weights (L2: alpha / m, as scikit-learn's MLPs), then biases
                optimizer_step(&oc, prm + off[l], g + off[l], 1.0 / mb,
                               &opt_state[0, off[l]], &opt_state[1, off[l]],
                               sizes[l] * sizes[l + 1], lr, alpha / mb, t)
                r0 = off[l] + sizes[l] * sizes[l + 1]
                optimizer_step(&oc, prm + r0, g + r0, 1.0 / mb, &opt_state[0, r0],
                               &opt_state[1, r0], sizes[l + 1], lr, 0.0, t)
            t += 1.0
            start += mb
            if cgd_now() - last_check >= SIGNAL_CHECK_SECONDS:
                with gil:
                    PyErr_CheckSignals()
                last_check = cgd_now()
        if status == 0:
            for r1 in range(P):
                if not isfinite(prm[r1]):
                    status = 1
                    break
    return status, t, loss_sum
