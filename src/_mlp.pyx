"""Multilayer-perceptron kernel: forward pass, loss, back-propagation over a set of rows.

Layers l = 0 .. L-1 map sizes[l] -> sizes[l+1]. The parameters live in one flat buffer:
for each layer its weights W_l (sizes[l] x sizes[l+1], row-major, as scikit-learn's
``coefs_[l]``) followed by its biases b_l (sizes[l+1]); ``offsets`` gives where each
layer's W_l starts. Layer products are row-major GEMMs (``_blas.pxd``).

The kernels take dense or CSR X (see "entry points" below); CSR input changes the first
layer only (see "CSR rows").

Back-propagation by the delta rule: at the output delta = (y_hat - y) for the canonical pairs
(identity / squared error, logistic / binary log-loss, softmax / cross-entropy), then
delta_l = (delta_{l+1} W_l^T) * f'(h_l) backwards through each hidden activation.
"""

from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, log, tanh, isfinite
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _math cimport dot, sigmoid
from _optim cimport (OptimConfig, optimizer_step, read_optim_config, adam_f32_step,
                     cgd_sqnorm_f32)
from _reduce cimport reduce_chunks
from _runtime cimport cgd_now, PyErr_CheckSignals, SIGNAL_CHECK_SECONDS
from _openmp cimport (cgd_atomic_load, cgd_atomic_store, cgd_atomic_fetch_add, cgd_atomic_cas,
                      cgd_cpu_relax, cgd_thread_nap, cgd_flag_wait, cgd_flag_set)
from _team cimport (CpuRule, CpuWatch, cpu_rule_default, cpu_watch_start, cpu_watch,
                    cgd_thread_cpu, backoff_threads, backoff_record,
                    CPU_DROP, CPU_PROBE, CPU_BACK)

ctypedef Py_ssize_t intp_t

# Index type of a CSR matrix's indices / indptr: int32 and int64 are both used as they
# are (never copied to another type).
ctypedef fused csr_index:
    int32_t
    int64_t

from cgd._codes cimport (SOLVER_ADAM, ACT_IDENTITY, ACT_LOGISTIC, ACT_TANH, ACT_RELU, ACT_SOFTMAX,
                     ACT_EXP)


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
    elif act == ACT_EXP:
        for i in range(size):
            a[i] = <floating>exp(a[i])
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


cdef void bias_activate(int act, floating* a, const floating* b, Py_ssize_t m,
                        Py_ssize_t n) noexcept nogil:
    """a <- f(a + b) row by row on an m x n block of products (b added to every row):
    one pass while each row is in cache. The ReLU is written without a branch so
    that it vectorises (v < 0 is false for NaN, which passes on as in np.maximum)."""
    cdef Py_ssize_t r, j
    cdef floating v
    cdef floating* row
    for r in range(m):
        row = a + r * n
        if act == ACT_RELU:
            for j in range(n):
                v = row[j] + b[j]
                row[j] = 0 if v < 0 else v
        else:
            for j in range(n):
                row[j] = row[j] + b[j]
            if act != ACT_IDENTITY:
                activate(act, row, 1, n)


cdef void times_derivative_bias_grad(int act, floating* delta, const floating* a,
                                     Py_ssize_t m, Py_ssize_t n,
                                     floating* gb) noexcept nogil:
    """delta *= f'(h) on an m x n block, f' written in terms of the activation a = f(h),
    and, unless gb is NULL, gb <- the column sums of the result, in row order (the bias
    gradient of the layer below), in the same pass. Branch-free so that it vectorises."""
    cdef Py_ssize_t r, j
    cdef floating* d
    cdef const floating* x
    for r in range(m):
        d = delta + r * n
        x = a + r * n
        if act == ACT_LOGISTIC:
            for j in range(n):
                d[j] = d[j] * x[j] * (1 - x[j])
        elif act == ACT_TANH:
            for j in range(n):
                d[j] = d[j] * (1 - x[j] * x[j])
        elif act == ACT_RELU:
            for j in range(n):
                d[j] = 0 if x[j] <= 0 else d[j]
        if gb == NULL:
            continue
        if r == 0:
            memcpy(gb, d, n * sizeof(floating))
        else:
            for j in range(n):
                gb[j] = gb[j] + d[j]


cdef void column_sums(const floating* d, Py_ssize_t m, Py_ssize_t n,
                      floating* out) noexcept nogil:
    """out <- the column sums of the m x n block d, in row order (a bias gradient)."""
    cdef Py_ssize_t r, j
    memcpy(out, d, n * sizeof(floating))
    for r in range(1, m):
        for j in range(n):
            out[j] = out[j] + d[r * n + j]


cdef inline double squared_norm(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum_j x_j^2, summed in double whatever the dtype (the loss's L2 term: in float32,
    a sum of 10^5 squares can lose three of its seven digits); for float64, dot(x, x).
    float32 sums in the order of the fused Adam step (step_squared_norm)."""
    if floating is double:
        return dot(x, x, n)
    else:
        return cgd_sqnorm_f32(x, n)


cdef inline double step_squared_norm(OptimConfig* oc, floating* w, const floating* g,
                                     double gscale, floating* s0, floating* s1, Py_ssize_t n,
                                     double lr, double l2, double t) noexcept nogil:
    """squared_norm(w) before optimizer_step(w, ...), then the step: float32 Adam sums the
    squares in its own pass over w (the same bits as squared_norm)."""
    cdef double sq
    if floating is float:
        if oc.solver == SOLVER_ADAM:
            return adam_f32_step(oc, w, g, gscale, s0, s1, n, lr, l2, t, True)
    sq = squared_norm(w, n)
    optimizer_step(oc, w, g, gscale, s0, s1, n, lr, l2, t)
    return sq


cdef double output_loss_and_delta(
    int out_act, const floating* a, const floating* y, floating* delta,
    Py_ssize_t n_out, double sw, double eps,
) noexcept nogil:
    """Loss of one sample (before weighting) and delta = sw * (a - y): the canonical
    output / loss pairs (identity / squared, logistic / binary log-loss, softmax /
    cross-entropy, exp / Poisson deviance) all have dl/dh = a - y."""
    cdef Py_ssize_t k
    cdef double l = 0.0, p, r
    for k in range(n_out):
        r = a[k] - y[k]
        delta[k] = <floating>(sw * r)
        if out_act == ACT_IDENTITY:
            l += 0.5 * r * r
        elif out_act == ACT_EXP:
            # half Poisson deviance y log(y / a) - y + a, as scikit-learn
            l += (y[k] * log(y[k] / a[k]) if y[k] > 0 else 0.0) + r
        else:
            # Probabilities are clipped to [eps, 1 - eps] for the log, as scikit-learn.
            p = a[k]
            p = eps if p < eps else (1 - eps if p > 1 - eps else p)
            if out_act == ACT_LOGISTIC:
                l -= y[k] * log(p) + (1 - y[k]) * log(1 - p)
            elif y[k] != 0:
                l -= y[k] * log(p)
    return l


cdef void forward_layers(
    floating* a,              # IN/OUT layer l0's m x sizes[l0] activations, then each
                              #        next layer's, contiguous after it (written here)
    Py_ssize_t m, Py_ssize_t l0,
    const floating* params, const intp_t* sizes, const intp_t* offsets, Py_ssize_t L,
    int hidden_act, int out_act,
) noexcept nogil:
    """Layers l0 .. L-1 of the forward pass, each one contiguous GEMM."""
    cdef Py_ssize_t l, r, j
    cdef floating* a_next
    cdef const floating* W
    cdef const floating* b
    for l in range(l0, L):
        a_next = a + m * sizes[l]
        W = params + offsets[l]
        b = W + sizes[l] * sizes[l + 1]
        gemm(False, False, <int>m, <int>sizes[l + 1], <int>sizes[l], 1.0,
             a, <int>sizes[l], W, <int>sizes[l + 1], 0.0, a_next, <int>sizes[l + 1])
        bias_activate(out_act if l == L - 1 else hidden_act, a_next, b, m, sizes[l + 1])
        a = a_next


cdef void forward_rows(
    const floating* X, Py_ssize_t n_features,
    const intp_t* rows, Py_ssize_t m,
    const floating* params, const intp_t* sizes, const intp_t* offsets, Py_ssize_t L,
    int hidden_act, int out_act,
    floating* acts,           # OUT the activations of every layer, layer after layer
) noexcept nogil:
    cdef Py_ssize_t r, j
    # Gather the rows: one pass over each, then every product is a contiguous GEMM.
    for r in range(m):
        for j in range(n_features):
            acts[r * n_features + j] = X[rows[r] * n_features + j]
    forward_layers(acts, m, 0, params, sizes, offsets, L, hidden_act, out_act)


cdef void backward_layers(
    const floating* acts,     # IN     activations of layers l_lo .. L, contiguous as
                              #        forward_layers writes them
    floating* deltas,         # IN/OUT the same layout: layer L's delta in, the others written
    Py_ssize_t m, Py_ssize_t l_lo,
    const floating* params, const intp_t* sizes, const intp_t* offsets, Py_ssize_t L,
    int hidden_act,
    floating* grad,           # OUT weight and bias gradients of layers l_lo .. L-1
                              #     (overwritten: no clearing pass is needed), and for
                              #     l_lo > 0 layer l_lo - 1's bias gradient too
    Py_ssize_t grad_shift,    # IN   grad holds the parameters from this offset on
) noexcept nogil:
    """Back-propagation from the output down to layer l_lo (delta_l_lo computed when
    l_lo > 0): dL/dW_l = A_l^T delta_{l+1}, dL/db_l = column sums of delta_{l+1},
    delta_l = (delta_{l+1} W_l^T) * f'(h_l). A layer's bias gradient is summed in the
    pass that makes its delta (the output layer's in a pass of its own)."""
    cdef Py_ssize_t l, r, j, a_off = 0
    cdef Py_ssize_t a_start[64]
    cdef const floating* a
    cdef floating* d
    cdef floating* d_prev
    cdef const floating* W
    cdef floating* gW
    cdef floating* gb
    for l in range(l_lo, L + 1):
        a_start[l] = a_off
        a_off += m * sizes[l]
    for l in range(L - 1, l_lo - 1, -1):
        a = acts + a_start[l]
        d = deltas + a_start[l + 1]
        W = params + offsets[l]
        gW = grad + (offsets[l] - grad_shift)
        gb = gW + sizes[l] * sizes[l + 1]
        gemm(True, False, <int>sizes[l], <int>sizes[l + 1], <int>m, 1.0,
             a, <int>sizes[l], d, <int>sizes[l + 1], 0.0, gW, <int>sizes[l + 1])
        if l == L - 1:
            column_sums(d, m, sizes[l + 1], gb)
        if l > 0:
            d_prev = deltas + a_start[l]
            gemm(False, True, <int>m, <int>sizes[l], <int>sizes[l + 1], 1.0,
                 d, <int>sizes[l + 1], W, <int>sizes[l + 1], 0.0, d_prev, <int>sizes[l])
            # ... and layer l-1's bias gradient: its biases follow W_{l-1}
            times_derivative_bias_grad(hidden_act, d_prev, a, m, sizes[l],
                                       grad + (offsets[l] - sizes[l] - grad_shift))


cdef double output_deltas(
    const floating* a,        # IN  (m, n_out) output activations
    const floating* Y, const floating* sw, const intp_t* rows, Py_ssize_t m,
    Py_ssize_t n_out, int out_act, double eps,
    floating* d,              # OUT (m, n_out) sw_i * (a_i - y_i)
) noexcept nogil:
    """Output deltas of m rows; returns sum_i sw_i * l_i."""
    cdef Py_ssize_t r
    cdef double loss = 0.0
    for r in range(m):
        loss += sw[rows[r]] * output_loss_and_delta(
            out_act, a + r * n_out, Y + rows[r] * n_out, d + r * n_out, n_out,
            sw[rows[r]], eps)
    return loss


cdef double loss_grad_rows(
    const floating* X, Py_ssize_t n_features,
    const floating* Y, const floating* sw,
    const intp_t* rows, Py_ssize_t m,
    const floating* params, const intp_t* sizes, const intp_t* offsets, Py_ssize_t L,
    int hidden_act, int out_act, double eps,
    floating* grad,           # OUT (P,) sum over rows of sw_i * dl_i/dparams (overwritten)
    floating* acts,           # scratch: sum_l m * sizes[l] values
    floating* deltas,         # scratch: as acts
) noexcept nogil:
    """Forward and backward pass over `m` rows; returns sum_i sw_i * l_i."""
    cdef Py_ssize_t l, a_out = 0
    cdef double loss
    for l in range(L):
        a_out += m * sizes[l]
    forward_rows(X, n_features, rows, m, params, sizes, offsets, L, hidden_act, out_act, acts)
    loss = output_deltas(acts + a_out, Y, sw, rows, m, sizes[L], out_act, eps, deltas + a_out)
    backward_layers(acts, deltas, m, 0, params, sizes, offsets, L, hidden_act, grad, 0)
    return loss


# ---------------------------------------------------------------- CSR rows
#
# With CSR X the first layer never sees a dense row: its forward product is a sum of
# rows of W_0 picked by each row's column indices, and its weight gradient X_B^T delta_1
# is computed by feature from the batch's transpose, after all blocks have produced
# delta_1 (w0_rows_gradient). Every later layer runs the dense code above.

cdef void sparse_first_layer(
    const floating* data, const csr_index* indices, const csr_index* indptr,
    const intp_t* rows, Py_ssize_t m,
    const floating* W0,       # IN (n_features, h)
    const floating* b0,       # IN (h,)
    Py_ssize_t h,
    floating* out,            # OUT (m, h) b0 + X_rows W0, before the activation
) noexcept nogil:
    cdef Py_ssize_t r, k, j
    cdef floating v
    cdef floating* o
    cdef const floating* w
    for r in range(m):
        o = out + r * h
        for j in range(h):
            o[j] = b0[j]
        for k in range(indptr[rows[r]], indptr[rows[r] + 1]):
            v = data[k]
            w = W0 + <Py_ssize_t>indices[k] * h
            for j in range(h):
                o[j] += v * w[j]


cdef void sparse_forward_rows(
    const floating* data, const csr_index* indices, const csr_index* indptr,
    const intp_t* rows, Py_ssize_t m, Layout* net, const floating* params,
    const floating* z1,       # IN (m, sizes[1]) the rows' first-layer pre-activations
                              #    (from first_layer_by_column), or NULL to compute them
    floating* acts,           # OUT activations of layers 1 .. L, layer after layer
) noexcept nogil:
    cdef Py_ssize_t h = net.sizes[1]
    if z1 == NULL:
        sparse_first_layer(data, indices, indptr, rows, m, params,
                           params + net.n_features * h, h, acts)
    else:
        memcpy(acts, z1, m * h * sizeof(floating))
    activate(net.out_act if net.L == 1 else net.hidden_act, acts, m, h)
    forward_layers(acts, m, 1, params, net.sizes, net.offsets, net.L, net.hidden_act,
                   net.out_act)


cdef double sparse_loss_grad_rows(
    const floating* data, const csr_index* indices, const csr_index* indptr,
    const floating* Y, const floating* sw,
    const intp_t* rows, Py_ssize_t m,
    const floating* params, Layout* net, double eps,
    floating* grad,           # OUT (P - n_features*sizes[1],) = gradient of every
                              #     parameter after W_0, summed over the rows
    floating* acts,           # scratch: m * (act_total - n_features) values
    floating* deltas,         # scratch: as acts
    const floating* z1,       # IN (m, sizes[1]) first-layer pre-activations, or NULL
    floating* delta1,         # OUT (m, sizes[1]) s_i dl_i/dh_1, for W_0's gradient
) noexcept nogil:
    """Forward and backward pass over `m` CSR rows; returns sum_i sw_i * l_i."""
    cdef Py_ssize_t l, r, j, a_out = 0, h = net.sizes[1]
    cdef double loss
    for l in range(1, net.L):
        a_out += m * net.sizes[l]
    sparse_forward_rows(data, indices, indptr, rows, m, net, params, z1, acts)
    loss = output_deltas(acts + a_out, Y, sw, rows, m, net.n_out, net.out_act, eps,
                         deltas + a_out)
    # also writes b_0's gradient (it opens the block's buffer) when there is a layer
    # above; W_0's comes later
    backward_layers(acts, deltas, m, 1, params, net.sizes, net.offsets, net.L,
                    net.hidden_act, grad, net.n_features * h)
    if net.L == 1:
        column_sums(deltas, m, h, grad)
    memcpy(delta1, deltas, m * h * sizeof(floating))
    return loss


cdef void transpose_rows(
    const floating* data, const csr_index* indices, const csr_index* indptr,
    const intp_t* rows, Py_ssize_t m, Py_ssize_t n_features,
    intp_t* colptr,           # OUT (n_features + 1,) column j's entries: colptr[j] .. colptr[j+1]
    intp_t* t_row,            # OUT (nnz,) position in `rows` of each entry, ascending per column
    floating* t_val,          # OUT (nnz,) its value
) noexcept nogil:
    """The rows' entries grouped by column (a counting sort, stable in row order)."""
    cdef Py_ssize_t r, k, j, p
    memset(colptr, 0, (n_features + 1) * sizeof(intp_t))
    for r in range(m):
        for k in range(indptr[rows[r]], indptr[rows[r] + 1]):
            colptr[indices[k] + 1] += 1
    for j in range(n_features):
        colptr[j + 1] += colptr[j]
    # colptr[j] serves as column j's cursor, ending at the next column's start ...
    for r in range(m):
        for k in range(indptr[rows[r]], indptr[rows[r] + 1]):
            j = indices[k]
            p = colptr[j]
            colptr[j] = p + 1
            t_row[p] = r
            t_val[p] = data[k]
    # ... so one shift restores the starts.
    for j in range(n_features, 0, -1):
        colptr[j] = colptr[j - 1]
    colptr[0] = 0


cdef void first_layer_by_column(
    const intp_t* colptr, const intp_t* t_row, const floating* t_val,   # IN transpose_rows
    Py_ssize_t n_features,
    const floating* W0, const floating* b0, Py_ssize_t h, Py_ssize_t m,
    Py_ssize_t j0, Py_ssize_t j1,
    floating* z1,             # OUT (m, h) columns j0 .. j1-1 of b0 + X_B W0
) noexcept nogil:
    """The batch's first-layer pre-activations, feature by feature: each row of W_0 the
    batch uses is read once, in memory order, instead of once per entry. Every z1[r, j]
    is b0[j] plus its row's terms in ascending feature order: for canonical CSR the
    very operations of sparse_first_layer, so both give the same bits, and the split
    of the columns j between threads changes nothing."""
    cdef Py_ssize_t r, f, p, j
    cdef floating v
    cdef floating* o
    cdef const floating* w
    for r in range(m):
        for j in range(j0, j1):
            z1[r * h + j] = b0[j]
    for f in range(n_features):
        w = W0 + f * h
        for p in range(colptr[f], colptr[f + 1]):
            v = t_val[p]
            o = z1 + t_row[p] * h
            for j in range(j0, j1):
                o[j] += v * w[j]


cdef void w0_rows_gradient(
    const intp_t* colptr, const intp_t* t_row, const floating* t_val,
    const floating* delta1,   # IN (m, h)
    Py_ssize_t h, Py_ssize_t f0, Py_ssize_t f1,
    floating* g,              # OUT ((f1 - f0) * h,) rows f0 .. f1-1 of X_B^T delta_1
) noexcept nogil:
    """W_0's gradient rows of features f0 .. f1-1, each a sum over the batch's entries of
    that feature in row order: one thread computes a row, so its bits are fixed."""
    cdef Py_ssize_t f, p, j
    cdef floating v
    cdef floating* gr
    cdef const floating* d
    memset(g, 0, (f1 - f0) * h * sizeof(floating))
    for f in range(f0, f1):
        gr = g + (f - f0) * h
        for p in range(colptr[f], colptr[f + 1]):
            v = t_val[p]
            d = delta1 + t_row[p] * h
            for j in range(h):
                gr[j] += v * d[j]


# ---------------------------------------------------------------- batches and epochs
#
# A batch of m rows is cut into nblk = ceil(m / BLOCK_ROWS) blocks, block b holding rows
# [b*m // nblk, (b+1)*m // nblk): the bounds depend on m only. Each block runs its own
# single-threaded GEMMs (OpenBLAS results depend on its thread count and on a call's
# row count) into its own gradient slot; blocks run WAVE at a time in parallel and
# slots are summed in block order. The same bits for any number of threads.
#
# Slots: the first wave fills slots 0 .. WAVE-1 and is summed into slot 0; every later
# wave fills slots 1 .. WAVE and is summed onto slot 0, so work_grad needs
# min(nblk, WAVE) rows, plus one when a batch takes more than a wave.
cdef enum:
    BLOCK_ROWS = 64
    WAVE = 16
    SEGMENT = 4096              # parameters per task of the parallel reduction / step
    PARALLEL_MIN_PARAMS = 32768  # below this, reduction and step stay on one thread
    FORWARD_ROWS = 256          # rows per block of a prediction

BLOCK_ROWS_ = BLOCK_ROWS
WAVE_ = WAVE


cdef struct Layout:
    Py_ssize_t L             # layers of weights
    Py_ssize_t P             # parameters
    Py_ssize_t n_features
    Py_ssize_t n_out
    Py_ssize_t act_total     # sum of the layer sizes (activations of one row)
    const intp_t* sizes
    const intp_t* offsets
    int hidden_act
    int out_act


cdef inline Py_ssize_t work_slots(Py_ssize_t m) noexcept nogil:
    """Gradient slots a batch of m rows needs."""
    cdef Py_ssize_t nblk = (m + BLOCK_ROWS - 1) // BLOCK_ROWS
    return max(1, min(nblk, WAVE) + (1 if nblk > WAVE else 0))


cdef object make_layout(Layout* net, const intp_t[::1] sizes, Py_ssize_t n_features,
                        Py_ssize_t n_out, int hidden_act, int out_act):
    """Fill ``net``; returns the offsets array, which must outlive it."""
    import numpy as np
    cdef Py_ssize_t L = sizes.shape[0] - 1, l
    if L < 1 or L > 63:
        raise ValueError("an MLP has between 1 and 63 layers of weights")
    if sizes[0] != n_features or sizes[L] != n_out:
        raise ValueError("layer sizes do not match X and Y")
    if not (0 <= hidden_act <= 3 and 0 <= out_act <= 5):
        raise ValueError("unknown activation code")
    offsets = np.zeros(L, dtype=np.intp)
    cdef intp_t[::1] off = offsets
    net.P = 0
    net.act_total = 0
    for l in range(L):
        off[l] = net.P
        net.P += (sizes[l] + 1) * sizes[l + 1]
    for l in range(L + 1):
        net.act_total += sizes[l]
    net.L = L
    net.n_features = n_features
    net.n_out = n_out
    net.sizes = &sizes[0]
    net.offsets = &off[0]
    net.hidden_act = hidden_act
    net.out_act = out_act
    return offsets


cdef object segments(Layout* net, bint skip_first_weights=False):
    """Cut the parameters into tasks of <= SEGMENT values that never straddle a
    weight/bias boundary: (start, length, penalised) arrays. With skip_first_weights,
    the tasks start after W_0 (the sparse path steps W_0 by rows of features)."""
    import numpy as np
    starts, lengths, pens = [], [], []
    cdef Py_ssize_t l, j, n, o
    for l in range(net.L):
        o = net.offsets[l]
        for n, pen in ((net.sizes[l] * net.sizes[l + 1], 1), (net.sizes[l + 1], 0)):
            if skip_first_weights and l == 0 and pen:
                o += n
                continue
            for j in range(0, n, SEGMENT):
                starts.append(o + j)
                lengths.append(min(SEGMENT, n - j))
                pens.append(pen)
            o += n
    return (np.array(starts, dtype=np.intp), np.array(lengths, dtype=np.intp),
            np.array(pens, dtype=np.uint8))


cdef inline int threads_for(Py_ssize_t tasks, Py_ssize_t work, int nt) noexcept nogil:
    return nt if tasks > 1 and work >= PARALLEL_MIN_PARAMS else 1


cdef int batch_gradient(
    Layout* net,
    const floating* X,        # IN dense rows (n_samples, n_features), or the CSR data
    const csr_index* indices, # IN CSR column indices, NULL for dense X
    const csr_index* indptr,  # IN CSR row pointers, NULL for dense X
    const floating* Y, const floating* sw,
    const intp_t* rows, Py_ssize_t m,
    const floating* params, double eps,
    floating* work_grad,      # OUT (slots, P - shift): row 0 receives the sum over rows of
                              #     s_i dl_i/dw of the parameters from `shift` on
    floating* work_act,       # scratch (slots, act_stride)
    floating* work_delta,     # scratch (slots, act_stride)
    Py_ssize_t act_stride,
    const floating* z1,       # IN  (m, sizes[1]) CSR only: first-layer pre-activations
                              #     of the rows, or NULL for the blocks to compute them
    floating* delta1,         # OUT (m, sizes[1]) CSR only: the first layer's deltas
    double* block_loss,       # scratch (WAVE + 1,)
    int nt,
    double* loss,             # OUT sum over rows of s_i l_i
    Py_ssize_t* nslots,       # OUT slots whose in-order sum (reduce_chunks) is the gradient
    double* last_check,       # IN/OUT time of the last signal check
) except -1 nogil:
    """Block gradients of a batch. The last wave's slots are left for the caller to
    sum segment by segment in the same parallel loop as its update (one barrier less
    per batch: a thread that another process has descheduled costs a time slice at
    every barrier).

    For CSR X the slots hold every parameter after W_0 (shift = n_features * sizes[1]):
    W_0's gradient X_B^T delta_1 is sparse in its rows, and the caller computes it by
    feature from ``delta1`` (see w0_rows_gradient) instead of a dense W_0-sized buffer
    per block."""
    cdef Py_ssize_t nblk = (m + BLOCK_ROWS - 1) // BLOCK_ROWS, first = 0, base, cnt, c, b
    cdef Py_ssize_t r0, r1, nseg, s
    cdef Py_ssize_t shift = 0 if indptr == NULL else net.n_features * net.sizes[1]
    cdef Py_ssize_t P = net.P - shift
    loss[0] = 0.0
    nslots[0] = 1
    while first < nblk:
        base = 0 if first == 0 else 1
        cnt = min(<Py_ssize_t>WAVE, nblk - first)
        for c in prange(cnt, schedule="static", num_threads=nt if cnt > 1 else 1):
            b = first + c
            r0 = (b * m) // nblk
            r1 = ((b + 1) * m) // nblk
            if indptr == NULL:
                block_loss[base + c] = loss_grad_rows(
                    X, net.n_features, Y, sw, rows + r0, r1 - r0, params, net.sizes,
                    net.offsets, net.L, net.hidden_act, net.out_act, eps,
                    work_grad + (base + c) * P, work_act + (base + c) * act_stride,
                    work_delta + (base + c) * act_stride)
            else:
                block_loss[base + c] = sparse_loss_grad_rows(
                    X, indices, indptr, Y, sw, rows + r0, r1 - r0, params, net, eps,
                    work_grad + (base + c) * P, work_act + (base + c) * act_stride,
                    work_delta + (base + c) * act_stride,
                    NULL if z1 == NULL else z1 + r0 * net.sizes[1], delta1 + r0 * net.sizes[1])
        for c in range(base, base + cnt):
            loss[0] += block_loss[c]
        first += cnt
        if first == nblk:
            nslots[0] = base + cnt
            break
        # more waves to come: fold this one into slot 0
        if base + cnt > 1:
            nseg = (P + SEGMENT - 1) // SEGMENT
            for s in prange(nseg, schedule="static",
                            num_threads=threads_for(nseg, P * (base + cnt - 1), nt)):
                reduce_chunks(work_grad, P, base + cnt, s * SEGMENT, min(P, (s + 1) * SEGMENT))
        if cgd_now() - last_check[0] >= SIGNAL_CHECK_SECONDS:
            with gil:
                PyErr_CheckSignals()
            last_check[0] = cgd_now()
    return 0




# ---------------------------------------------------------------- finishing a batch
#
# After batch_gradient, one parallel loop over tasks sums the block gradients and takes
# the optimizer step (or, for the objective, writes the gradient). Each task owns a fixed
# range of parameters and the step is elementwise, so which thread takes which task
# changes no bits. Segment tasks each sum the block buffers over <= SEGMENT parameters
# that never straddle a weight/bias boundary (L2 applies to weights only).
#
# With CSR X the block buffers hold no W_0: tasks 0 .. n_chunks-1 each own a fixed range
# of W_0's rows (features), computing their gradient rows by feature from the batch's
# entries grouped by column (transpose_rows) and delta_1 (w0_rows_gradient) into the
# thread's scratch, and stepping them at once. No buffer of W_0's size is ever cleared
# or summed: per batch, W_0 costs its entries times sizes[1] for the gradient plus the
# dense optimizer step (the same dense step as for dense X, which the equality of the
# two fits needs). For dense X there are no such tasks (n_chunks = 0, K = 0).

cdef inline Py_ssize_t w0_chunk_rows(Py_ssize_t h) noexcept nogil:
    """Features per task of W_0's step: about SEGMENT parameters, fixed by h alone."""
    return max(1, SEGMENT // h)


cdef inline void sum_slots(floating* out, const floating* g, Py_ssize_t stride,
                           Py_ssize_t nslots, Py_ssize_t n) noexcept nogil:
    """out[j] = (((g_0 + g_1) + g_2) + ...)[j], rows of g `stride` apart: reduce_chunks'
    order, written elsewhere."""
    cdef Py_ssize_t c, j
    cdef const floating* src = g + stride
    for j in range(n):
        out[j] = g[j] + src[j]
    for c in range(2, nslots):
        src = g + c * stride
        for j in range(n):
            out[j] = out[j] + src[j]


cdef struct Tasks:
    bint sparse               # CSR X: W_0's gradient comes by feature, not from the blocks
    Py_ssize_t K              # parameters before those in the block buffers: W_0's for CSR X
    Py_ssize_t chunk          # features per W_0 task
    Py_ssize_t n_chunks       # W_0 tasks, 0 for dense X
    Py_ssize_t scratch        # values of a thread's scratch in finish_batch: a W_0 task's
                              # gradient rows or a segment's sum of the block gradients
    Py_ssize_t nseg           # segment tasks, after them
    const intp_t* seg_start
    const intp_t* seg_len
    const unsigned char* seg_pen
    intp_t* colptr            # CSR: (n_features + 1,) the batch's entries by column ...
    intp_t* t_row             # ... and the position in the batch of each (transpose_rows)


cdef object make_tasks(Tasks* tk, Layout* net, bint sparse):
    """Fill ``tk`` but for colptr / t_row; returns the arrays it points to, which must
    outlive it."""
    seg = segments(net, sparse)
    cdef const intp_t[::1] ss = seg[0]
    cdef const intp_t[::1] sl = seg[1]
    cdef const unsigned char[::1] sp = seg[2]
    tk.sparse = sparse
    tk.K = net.n_features * net.sizes[1] if sparse else 0
    tk.chunk = w0_chunk_rows(net.sizes[1])
    tk.n_chunks = (net.n_features + tk.chunk - 1) // tk.chunk if sparse else 0
    tk.scratch = max(<Py_ssize_t>SEGMENT, tk.chunk * net.sizes[1] if sparse else 0)
    tk.nseg = ss.shape[0]
    tk.seg_start = &ss[0]
    tk.seg_len = &sl[0]
    tk.seg_pen = &sp[0]
    return seg


cdef void finish_batch(
    Layout* net, Tasks* tk,
    floating* prm,            # IN/OUT (P,) parameters (only read when grad_out is given)
    floating* g,              # IN     (nslots, P - K) block gradients, summed here
    Py_ssize_t nslots,
    const floating* t_val,    # IN     CSR: the batch's values by column (transpose_rows)
    const floating* delta1,   # IN     CSR: (m, sizes[1]) the batch's first-layer deltas
    floating* task_scratch,   # scratch (nt, tk.scratch)
    double sw_sum,            # IN     the batch's sum of sample weights
    double alpha,             # IN     L2 coefficient, of the weights only
    OptimConfig* oc, floating* s0, floating* s1, double lr, double t,   # the step's
    double* grad_out,         # OUT    (P,) when not NULL: (gradient + alpha W) / sw_sum,
                              #        and no step is taken
    double* seg_sq,           # OUT    (n_chunks + nseg,) squared penalised weights before
                              #        the step, by task
    int nt,
) noexcept nogil:
    """Sum the block gradients and take one optimizer step over all parameters, or write
    the objective's gradient (see the section comment)."""
    cdef Py_ssize_t h = net.sizes[1], K = tk.K, Pb = net.P - tk.K
    cdef Py_ssize_t s, j, j0, n, f0, f1
    cdef bint pen
    cdef floating* gs
    cdef double gscale = 1.0 / sw_sum, l2 = alpha / sw_sum
    for s in prange(tk.n_chunks + tk.nseg, schedule="static",
                    num_threads=threads_for(tk.n_chunks + tk.nseg, K + Pb * nslots, nt)):
        if s < tk.n_chunks:
            f0 = s * tk.chunk
            f1 = min(net.n_features, f0 + tk.chunk)
            gs = task_scratch + threadid() * tk.scratch
            w0_rows_gradient(tk.colptr, tk.t_row, t_val, delta1, h, f0, f1, gs)
            j0 = f0 * h
            n = (f1 - f0) * h
            pen = True
        else:
            j0 = tk.seg_start[s - tk.n_chunks]
            n = tk.seg_len[s - tk.n_chunks]
            pen = tk.seg_pen[s - tk.n_chunks]
            gs = g + (j0 - K)
            if nslots > 1:
                # summed into the thread's scratch, which stays in cache for the step,
                # rather than back into slot 0: one store pass over the gradient less
                sum_slots(task_scratch + threadid() * tk.scratch, gs, Pb, nslots, n)
                gs = task_scratch + threadid() * tk.scratch
        if grad_out == NULL:
            if pen:
                seg_sq[s] = step_squared_norm(oc, prm + j0, gs, gscale, s0 + j0, s1 + j0, n,
                                              lr, l2, t)
            else:
                seg_sq[s] = 0.0
                optimizer_step(oc, prm + j0, gs, gscale, s0 + j0, s1 + j0, n, lr, 0.0, t)
        else:
            # the objective's penalty in double whatever the dtype: lbfgs compares values
            seg_sq[s] = 0.0
            for j in range(n):
                if pen:
                    seg_sq[s] += (<double>prm[j0 + j]) * prm[j0 + j]
                    grad_out[j0 + j] = (gs[j] + alpha * prm[j0 + j]) * gscale
                else:
                    grad_out[j0 + j] = gs[j] * gscale


# ---------------------------------------------------------------- scratch and checks

cdef struct Scratch:
    # A batch's scratch: offsets into one buffer of the data's dtype, and two arrays of
    # doubles (see alloc_scratch)
    Py_ssize_t act_stride     # activations of a block: BLOCK_ROWS rows of every layer
                              # (from layer 1 on for CSR X)
    Py_ssize_t grad           # (slots, P - K) block gradients
    Py_ssize_t act            # (slots, act_stride) block activations
    Py_ssize_t delta          # (slots, act_stride) block deltas
    Py_ssize_t z1             # CSR: (m, sizes[1]) the batch's first-layer pre-activations
    Py_ssize_t delta1         # CSR: (m, sizes[1]) its first-layer deltas
    Py_ssize_t t_val          # CSR: (max_nnz,) its values by column
    Py_ssize_t w0             # (nt, tk.scratch) finish_batch's scratch, by thread
    double* seg_sq            # (n_chunks + nseg,) finish_batch's squared weights, by task
    double* block_loss        # (WAVE + 1,) batch_gradient's losses, by block


cdef inline Py_ssize_t take(Py_ssize_t* end, Py_ssize_t n) noexcept:
    """Start of the next n values of a buffer being laid out. At least 16 values (64
    bytes) between two arrays keep the threads writing one off the other's cache lines."""
    cdef Py_ssize_t start = end[0]
    end[0] = start + (n + 31) // 16 * 16
    return start


cdef object alloc_scratch(Scratch* sc, Tasks* tk, Layout* net, Py_ssize_t m,
                          Py_ssize_t max_nnz, int nt, dtype):
    """Scratch for batches of up to m rows (and max_nnz entries for CSR X); points
    tk.colptr / tk.t_row into it. Returns the buffers, which must outlive sc and tk."""
    import numpy as np
    cdef Py_ssize_t h = net.sizes[1], slots = work_slots(m), end = 0
    # dense blocks gather their rows of X as layer 0's activations
    sc.act_stride = BLOCK_ROWS * (net.act_total - (net.n_features if tk.sparse else 0))
    sc.grad = take(&end, slots * (net.P - tk.K))
    sc.act = take(&end, slots * sc.act_stride)
    sc.delta = take(&end, slots * sc.act_stride)
    sc.z1 = take(&end, m * h if tk.sparse else 0)
    sc.delta1 = take(&end, m * h if tk.sparse else 0)
    sc.t_val = take(&end, max_nnz if tk.sparse else 0)
    sc.w0 = take(&end, nt * tk.scratch)
    fbuf = np.zeros(max(end, 1), dtype=dtype)
    ibuf = np.zeros(net.n_features + 1 + max_nnz if tk.sparse else 1, dtype=np.intp)
    cdef intp_t[::1] ib = ibuf
    tk.colptr = &ib[0]
    tk.t_row = &ib[0] + (net.n_features + 1 if tk.sparse else 0)
    dbuf = np.zeros(tk.n_chunks + tk.nseg + WAVE + 1)
    cdef double[::1] db = dbuf
    sc.seg_sq = &db[0]
    sc.block_loss = &db[0] + tk.n_chunks + tk.nseg
    return fbuf, ibuf, dbuf


cdef void check_common(Layout* net, Py_ssize_t n_rows, Y, sample_weight, rows,
                       params) except *:
    if Y.shape[0] != n_rows or sample_weight.shape[0] != n_rows:
        raise ValueError("X, Y and sample_weight must have the same number of rows")
    if params.shape[0] != net.P:
        raise ValueError(f"params must have {net.P} entries")
    import numpy as np
    if rows.shape[0] and (np.min(rows) < 0 or np.max(rows) >= n_rows):
        raise ValueError("rows out of range")


cdef object check_x(const floating[::1] data, const csr_index[::1] indices,
                    const csr_index[::1] indptr, Py_ssize_t n_features, Py_ssize_t n_rows):
    """Reject an X the kernels would read out of bounds (see mlp_epoch's X)."""
    import numpy as np
    if indices is None and indptr is None:
        if data.shape[0] != n_rows * n_features:
            raise ValueError("dense X must hold n_rows * n_features values")
        return
    if indices is None or indptr is None:
        raise ValueError("CSR X needs both indices and indptr (dense X neither)")
    if indptr.shape[0] != n_rows + 1 or indices.shape[0] != data.shape[0]:
        raise ValueError("CSR arrays do not match: indptr needs n_rows + 1 entries and "
                         "indices one per value")
    ip = np.asarray(indptr)
    if ip[0] != 0 or ip[n_rows] > data.shape[0] or np.any(np.diff(ip) < 0):
        raise ValueError("CSR indptr must start at 0, not decrease, and end within data")
    ix = np.asarray(indices)[:ip[n_rows]]
    if ix.shape[0] and (ix.min() < 0 or ix.max() >= n_features):
        raise ValueError("CSR column indices out of range")


cdef object check_inputs(
    Layout* net,                                                # OUT
    const floating[::1] data, const csr_index[::1] indices, const csr_index[::1] indptr,
    Py_ssize_t n_features, const floating[:, ::1] Y, const floating[::1] sample_weight,
    const intp_t[::1] rows, const intp_t[::1] sizes, params, dict config, Py_ssize_t m,
):
    """Check a training kernel's inputs (m: rows per batch) and fill net. Returns the
    offsets array it points into, which must outlive it."""
    check_x(data, indices, indptr, n_features, Y.shape[0])
    offsets = make_layout(net, sizes, n_features, Y.shape[1], config["hidden_activation"],
                          config["out_activation"])
    check_common(net, Y.shape[0], Y, sample_weight, rows, params)
    if m < 1 or config["n_threads"] < 1:
        raise ValueError("batch_size and n_threads must be >= 1")
    return offsets


cdef object prepare(
    Layout* net,                                                # IN  (check_inputs)
    Tasks* tk, Scratch* sc,                                     # OUT
    const csr_index[::1] indptr, const intp_t[::1] rows, dict config,
    Py_ssize_t m,             # IN rows per batch: each batch is m consecutive entries of rows
    dtype,
):
    """Fill tk and sc for the batches of a checked input. Returns the scratch buffer of
    X's dtype and the other arrays they point into: both must outlive them."""
    import numpy as np
    cdef int nt = config["n_threads"]
    cdef Py_ssize_t n = rows.shape[0], start, i, nnz, max_nnz = 0
    if indptr is not None:
        for start in range(0, n, m):
            nnz = 0
            for i in range(start, min(start + m, n)):
                nnz += indptr[rows[i] + 1] - indptr[rows[i]]
            max_nnz = max(max_nnz, nnz)
    seg = make_tasks(tk, net, indptr is not None)
    bufs = alloc_scratch(sc, tk, net, min(m, n), max_nnz, nt, dtype)
    return bufs[0], (seg, bufs[1], bufs[2])


# ---------------------------------------------------------------- the dense epoch's team
#
# Dense X with batches of up to TEAM_MAX_ROWS rows: every product of a batch is one GEMM
# over all its rows, cut into fixed tiles of its OUTPUT (bounds set by the layer sizes
# and the batch size, never by the thread count), and no GEMM sums over a tile's edge.
# So a weight gradient is one sum over the batch's rows inside one BLAS call, whichever
# thread makes it: there is no per-block gradient to reduce, and the bits do not depend
# on the number of threads. A batch runs in three phases of tiles:
#
#   FIRST   column tiles of layer 1: X_B W_0[:, cols] + b_0[cols], activated. A thread
#           packs only its slice of W_0 (the widest matrix), where blocks of rows would
#           each pack all of it.
#   ROWS    blocks of BLOCK_ROWS rows: the rest of the forward pass, the loss, the
#           output deltas and back-propagation of the deltas down to layer 1 (all
#           row-local; the layers above the first are the small ones).
#   UPDATE  row tiles of every W_l (about UPDATE_TILE parameters each): the gradient
#           A_l[:, rows]^T delta_{l+1} into the thread's scratch, and at once, while it
#           is in cache, the optimizer step of those parameters; each layer's bias as
#           one task (its column sums in row order); then the gathering of the next
#           batch's rows of X, in chunks, into the other row buffer.
#
# Every parameter is read by FIRST and ROWS and written only in UPDATE, so no tile
# waits for another within a phase. The phases run on one team of threads for the
# whole epoch (one parallel region): thread 0 (the master) runs the epoch loop and
# publishes each phase's tiles as tasks; every thread, the master included, claims the
# next unclaimed task (a fetch-and-add) until none is left, so a thread that another
# process holds up does less of the phase instead of holding it up; the master waits
# for the claimed ones to finish. The task word is generation << 40 | (phase << 17 |
# number of tasks) << 20 | next task, as in the linear kernel (a phase has fewer than
# 2^17 tasks: dense_tasks_fit): a claim's generation tells a late helper from a current one.
#
# A task is begun by whoever marks it first with the phase's number (dense_begin): once
# every task of a phase is claimed, the master runs those a held-up helper has claimed
# but not begun, and the helper's mark then fails. A task already begun is waited for:
# it writes its outputs in place, and an UPDATE task's optimizer step must not run twice.
#
# Two threads are not always faster (another process busy on a core; small layers):
# the master times windows of batches with the team and alone, and keeps the team only
# while it is faster by TEAM_GAIN; when it loses twice in a row, the helpers leave for
# the rest of the epoch. The helpers also leave when the master spends over 30% of the
# epoch waiting for their tasks, or when the master's thread is on its CPU for under 80%
# of a window of 2 ms or more (its CPU clock against the wall clock): more threads want
# the cores than there are, and a helper takes the master's turns in meetings too short
# for the wait rule, in epochs shorter than a timing window. In an epoch longer than
# 50 ms the master first times itself alone over as long, and the team stays if it was
# faster all the same (the CPU-share rule of _team.pxd, shared with the linear team).
# An epoch whose team left that way makes the next 1, 2, 4, ... 16 epochs of the fit
# run on one thread (dense_mlp_epoch, _team.pxd's back-off).
# The results are the same either way.

cdef enum:
    TEAM_MAX_ROWS = 4096    # larger batches take the blocks of batch_gradient instead
    GATHER_ROWS = 32        # rows of X per gathering task
    # Parameters per weight task (a whole row of W_l at least): each task repacks the
    # batch's deltas for its GEMM, so fewer, larger tiles pack less; 131072 float32
    # weights plus their Adam moments take 1.5 MiB; W3's first layer (784 x 256) makes
    # two tasks, one per core.
    UPDATE_TILE = 131072
    # A layer of at least UPDATE_SPLIT weights is cut into an even number of tiles: two
    # threads then share its gradient evenly (W3's 256 x 128 layer in one tile left a
    # thread idle for a seventh of every UPDATE phase).
    UPDATE_SPLIT = 16384
    FIRST_TILE = 128        # columns per tile of layer 1 (rounded to an even count)
    PH_GATHER = 0
    PH_FIRST = 1
    PH_ROWS = 2
    PH_UPDATE = 3
    UPD_WEIGHTS = 0
    UPD_BIAS = 1

cdef enum:
    TMODE_SOLO = 0        # the master alone for the rest of the epoch
    TMODE_PROBE_TEAM = 1  # timing the team
    TMODE_PROBE_SOLO = 2  # timing the master alone (helpers wait)
    TMODE_TEAM = 3        # the team, timed faster
    TMODE_WARM_UP = 4     # the team's first window (threads waking up): not timed
    TMODE_CPU_PROBE = 5   # timing the master alone: it was off its CPU too often

cdef extern from *:
    """
    #define CGD_MLP_TASK_BITS 20
    #define CGD_MLP_TASK_MASK ((1LL << 20) - 1)
    #define CGD_MLP_GEN_MASK ((1LL << 23) - 1)
    #define CGD_MLP_KIND_SHIFT 17
    #define CGD_MLP_SPIN_LIMIT 4000
    """
    long long MTASK_BITS "CGD_MLP_TASK_BITS"
    long long MTASK_MASK "CGD_MLP_TASK_MASK"
    long long MGEN_MASK "CGD_MLP_GEN_MASK"
    long long MKIND_SHIFT "CGD_MLP_KIND_SHIFT"
    int MSPIN_LIMIT "CGD_MLP_SPIN_LIMIT"

cdef extern from "Python.h":
    # Without exception propagation: the master calls it inside the parallel region,
    # which it must leave normally (helpers dismissed first); the pending exception is
    # raised after the region.
    int mlp_check_signals "PyErr_CheckSignals"() noexcept

# Seconds per timing window of the team / of the master alone, and the speed-up the
# team must show to be kept.
cdef double MLP_TEAM_WINDOW = 10e-3
cdef double MLP_STALL_SECONDS = 1e-3  # the helpers' exit, longer: they lack a core
cdef double MLP_WAIT_SHARE = 0.3      # of the epoch spent waiting for helpers: drop them
cdef double MLP_TEAM_GAIN = 1.05
# The CPU-share rule's figures (see _team.pxd).
cdef CpuRule MLP_CPU_RULE = cpu_rule_default()
# Tests: seconds a helper waits between claiming a task and beginning it.
cdef double MLP_HELPER_DELAY = 0.0


def set_mlp_cpu_share(double share, double window, double gain, double short_epoch):
    """For tests: the share of the wall time the master must spend on its CPU, the
    shortest window (seconds) it is measured over, the speed-up over the master alone
    the team must then show to stay, and the epoch length (seconds) under which the
    team leaves without that timing (share above 1 and window 0: the CPU rule fires
    after four batches); returns the previous four."""
    global MLP_CPU_RULE
    old = (MLP_CPU_RULE.share, MLP_CPU_RULE.window, MLP_CPU_RULE.gain,
           MLP_CPU_RULE.short_epoch)
    MLP_CPU_RULE.share = share
    MLP_CPU_RULE.window = window
    MLP_CPU_RULE.gain = gain
    MLP_CPU_RULE.short_epoch = short_epoch
    return old


def thread_cpu_time():
    """The calling thread's CPU time in seconds, as the CPU-share rule reads it, or -1
    where it is not read (the rule is then off)."""
    return cgd_thread_cpu()


def set_mlp_helper_delay(double seconds):
    """For tests: hold every helper up for this long between claiming a task and
    beginning it (the master then runs the tasks claimed but not begun); returns the
    previous delay."""
    global MLP_HELPER_DELAY
    old = MLP_HELPER_DELAY
    MLP_HELPER_DELAY = seconds
    return old


def set_mlp_wait_share(double share):
    """For tests: the share of an epoch the master may spend waiting for its helpers
    before it drops them (a negative share drops them after the first four batches);
    returns the previous one."""
    global MLP_WAIT_SHARE
    old = MLP_WAIT_SHARE
    MLP_WAIT_SHARE = share
    return old


def set_mlp_team_window(double seconds):
    """For tests: the team's timing window in seconds (0: the team and the master alone
    take turns every two batches); returns the previous one."""
    global MLP_TEAM_WINDOW
    old = MLP_TEAM_WINDOW
    MLP_TEAM_WINDOW = seconds
    return old


cdef struct Dense:
    # the epoch's shared state; pointers of the data's dtype are kept as void*
    long long claim           # the task word
    char pad0[120]
    long long done            # tasks of the current generation finished
    char pad1[120]
    int finished              # set when the master's epoch loop is over (a futex)
    char pad2[120]
    long long phase           # the number of the phase on offer (its generation's bits
                              # in the task word), counted from 1, never wrapped
    long long* started        # (tasks of the largest phase,) the phase in which each task
                              # was last begun: a task runs once, by whoever marks it first
    char pad5[112]
    long long helper_tasks    # tasks the helpers ran this epoch (tests, stats)
    char pad4[120]
    # written by the master only, before it publishes a phase
    long long gen
    int n_threads, mode, team_at_end, losses
    int stalled               # the master waited too long for the helpers (see dense_adapt)
    double t_start, t_done    # when the master's epoch loop started and ended
    double wait_total         # seconds the master waited for helpers' tasks this epoch
    double ph_wall[4]         # seconds of the team's phases, by kind (tests, stats)
    double ph_wait[4]         # seconds of them the master waited for helpers' tasks
    double cpu_start, cpu_done  # the master thread's CPU time at t_start and t_done
    CpuWatch cpu              # the CPU-share rule's window (_team.pxd)
    Py_ssize_t batches, n_batches  # batches done, and in the epoch
    int cpu_prev_mode         # the mode to return to when the team wins a TMODE_CPU_PROBE
    Py_ssize_t n_meet         # phases published to the team
    Py_ssize_t n_taken        # tasks a helper had claimed but not begun, run by the master
    Py_ssize_t win_batches, solo_windows
    double win_t0, win_rows, rate_solo, rate_team
    Layout* net
    OptimConfig* oc
    const void* X
    const void* Y
    const void* sw
    const intp_t* order
    void* m0                  # optimizer state rows
    void* m1
    void* xb[2]               # rows of X of the current and of the next batch
    int cur                   # which xb holds the current batch
    void* acts                # layers 1 .. L: (m, sizes[l]) each, layer after layer
    void* deltas              # as acts
    void* scratch             # (threads, scratch_stride) the UPDATE tasks' gradients
    Py_ssize_t scratch_stride
    Py_ssize_t act_total      # values of acts (and of deltas)
    Py_ssize_t a_start[64]    # where layer l's rows start in acts / deltas (l >= 1)
    Py_ssize_t start, mb      # the current batch: order[start : start + mb]
    Py_ssize_t g_start, g_mb  # the rows being gathered, into xb[g_buf]
    int g_buf
    Py_ssize_t n_first, n_rows, n_upd
    const intp_t* upd_kind
    const intp_t* upd_layer
    const intp_t* upd_lo
    const intp_t* upd_hi
    double* block_loss        # (n_rows,) by ROWS task
    double* task_sq           # (n_upd,) squared penalised weights before the step, by task
    double eps, gscale, l2, lr, t
    char pad3[120]


cdef inline Py_ssize_t first_tiles(Py_ssize_t h) noexcept nogil:
    """Column tiles of layer 1: about FIRST_TILE wide, an even count (two threads share
    them evenly), at least 32 columns each."""
    cdef Py_ssize_t n = 2 * ((h + FIRST_TILE) // (2 * FIRST_TILE))
    if n < 2:
        n = 2
    while n > 1 and h // n < 32:
        n -= 1
    return n


cdef void bias_activate_ld(int act, floating* a, Py_ssize_t lda, const floating* b,
                           Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """bias_activate on an m x n tile whose rows are lda apart (an elementwise activation)."""
    cdef Py_ssize_t r
    for r in range(m):
        bias_activate(act, a + r * lda, b, 1, n)


cdef void dense_task(Dense* dn, floating* prm, int kind, Py_ssize_t i, int tid) noexcept nogil:
    """Task i of phase `kind` of the current batch (see the section comment)."""
    cdef Layout* net = dn.net
    cdef const intp_t* sz = net.sizes
    cdef Py_ssize_t L = net.L, s0 = sz[0], s1 = sz[1], mb = dn.mb, l, r0, r1, mr, c0, c1
    cdef Py_ssize_t f0, f1, n, off, r, j
    cdef const floating* X = <const floating*>dn.X
    cdef floating* xb = <floating*>dn.xb[dn.cur]
    cdef floating* acts = <floating*>dn.acts
    cdef floating* deltas = <floating*>dn.deltas
    cdef floating* g
    cdef floating* d
    cdef floating* w
    cdef const floating* A
    cdef floating* xn
    cdef const intp_t* rows
    if kind == PH_FIRST:
        c0 = i * s1 // dn.n_first
        c1 = (i + 1) * s1 // dn.n_first
        gemm(False, False, <int>mb, <int>(c1 - c0), <int>s0, 1.0, xb, <int>s0, prm + c0,
             <int>s1, 0.0, acts + c0, <int>s1)
        # one layer: the output activation (softmax needs whole rows) waits for ROWS
        bias_activate_ld(net.hidden_act if L > 1 else ACT_IDENTITY, acts + c0, s1,
                         prm + s0 * s1 + c0, mb, c1 - c0)
    elif kind == PH_ROWS:
        r0 = i * mb // dn.n_rows
        r1 = (i + 1) * mb // dn.n_rows
        mr = r1 - r0
        if L == 1:
            activate(net.out_act, acts + r0 * s1, mr, s1)
        for l in range(1, L):
            A = acts + dn.a_start[l] + r0 * sz[l]
            w = acts + dn.a_start[l + 1] + r0 * sz[l + 1]
            gemm(False, False, <int>mr, <int>sz[l + 1], <int>sz[l], 1.0, A, <int>sz[l],
                 prm + net.offsets[l], <int>sz[l + 1], 0.0, w, <int>sz[l + 1])
            bias_activate(net.out_act if l == L - 1 else net.hidden_act, w,
                          prm + net.offsets[l] + sz[l] * sz[l + 1], mr, sz[l + 1])
        dn.block_loss[i] = output_deltas(
            acts + dn.a_start[L] + r0 * sz[L], <const floating*>dn.Y, <const floating*>dn.sw,
            dn.order + dn.start + r0, mr, sz[L], net.out_act, dn.eps,
            deltas + dn.a_start[L] + r0 * sz[L])
        for l in range(L - 1, 0, -1):
            d = deltas + dn.a_start[l] + r0 * sz[l]
            gemm(False, True, <int>mr, <int>sz[l], <int>sz[l + 1], 1.0,
                 deltas + dn.a_start[l + 1] + r0 * sz[l + 1], <int>sz[l + 1],
                 prm + net.offsets[l], <int>sz[l + 1], 0.0, d, <int>sz[l])
            times_derivative_bias_grad(net.hidden_act, d, acts + dn.a_start[l] + r0 * sz[l],
                                       mr, sz[l], NULL)
    elif kind == PH_UPDATE and i < dn.n_upd:
        l = dn.upd_layer[i]
        g = <floating*>dn.scratch + tid * dn.scratch_stride
        d = deltas + dn.a_start[l + 1]
        if dn.upd_kind[i] == UPD_WEIGHTS:
            f0 = dn.upd_lo[i]
            f1 = dn.upd_hi[i]
            A = xb if l == 0 else acts + dn.a_start[l]
            # rows f0 .. f1-1 of A_l^T delta_{l+1}: one sum over the batch's rows
            gemm(True, False, <int>(f1 - f0), <int>sz[l + 1], <int>mb, 1.0, A + f0, <int>sz[l],
                 d, <int>sz[l + 1], 0.0, g, <int>sz[l + 1])
            off = net.offsets[l] + f0 * sz[l + 1]
            n = (f1 - f0) * sz[l + 1]
            dn.task_sq[i] = step_squared_norm(dn.oc, prm + off, g, dn.gscale,
                                              <floating*>dn.m0 + off, <floating*>dn.m1 + off,
                                              n, dn.lr, dn.l2, dn.t)
        else:
            n = sz[l + 1]
            column_sums(d, mb, n, g)
            off = net.offsets[l] + sz[l] * n
            dn.task_sq[i] = 0.0
            optimizer_step(dn.oc, prm + off, g, dn.gscale, <floating*>dn.m0 + off,
                           <floating*>dn.m1 + off, n, dn.lr, 0.0, dn.t)
    else:
        # gathering: chunk i (after the UPDATE tasks) of the rows g_start ..
        if kind == PH_UPDATE:
            i -= dn.n_upd
        r0 = i * GATHER_ROWS
        r1 = min(r0 + GATHER_ROWS, dn.g_mb)
        xn = <floating*>dn.xb[dn.g_buf]
        rows = dn.order + dn.g_start
        for r in range(r0, r1):
            memcpy(xn + r * s0, X + rows[r] * s0, s0 * sizeof(floating))
    cgd_atomic_fetch_add(&dn.done, 1)


cdef inline bint dense_begin(Dense* dn, long long i, long long gen) noexcept nogil:
    """Mark task i of the phase of generation `gen` begun; False when it was begun
    already (the master took it over) or its phase is over."""
    cdef long long ph = cgd_atomic_load(&dn.phase), v
    # the claim's phase: the latest whose generation bits are gen (the claim was made
    # a few instructions ago, far fewer than 2^23 phases)
    ph -= (ph - gen) & MGEN_MASK
    v = cgd_atomic_load(&dn.started[i])
    while v < ph:
        if cgd_atomic_cas(&dn.started[i], v, ph):
            return True
        v = cgd_atomic_load(&dn.started[i])
    return False


cdef long long dense_take(Dense* dn, floating* prm, long long old, int tid,
                         long long* ran) noexcept nogil:
    """Run tasks of the generation of the claim `old` until none is left, counting them
    in ran[0]; returns the last claim (holding no task of that generation)."""
    cdef long long gen = old >> (2 * MTASK_BITS), ntasks = (old >> MTASK_BITS) & MTASK_MASK
    cdef long long i = old & MTASK_MASK
    cdef int kind = <int>(ntasks >> MKIND_SHIFT)
    ntasks &= (1LL << MKIND_SHIFT) - 1
    cdef double until
    while i < ntasks:
        if tid != 0 and MLP_HELPER_DELAY > 0.0:
            # tests: a helper held up between its claim and the task's start
            until = cgd_now() + MLP_HELPER_DELAY
            while cgd_now() < until:
                cgd_thread_nap()
        if dense_begin(dn, i, gen):
            dense_task(dn, prm, kind, i, tid)
            ran[0] += 1
        old = cgd_atomic_fetch_add(&dn.claim, 1)
        if (old >> (2 * MTASK_BITS)) != gen:
            return old
        i = old & MTASK_MASK
    return old


cdef inline void dense_publish(Dense* dn, long long word) noexcept nogil:
    cgd_atomic_store(&dn.phase, dn.phase + 1)
    dn.gen = dn.phase & MGEN_MASK
    cgd_atomic_store(&dn.done, 0)
    cgd_atomic_store(&dn.claim, (dn.gen << (2 * MTASK_BITS)) | (word << MTASK_BITS))


cdef inline bint dense_team_on(Dense* dn) noexcept nogil:
    return dn.n_threads > 1 and (dn.mode == TMODE_TEAM or dn.mode == TMODE_PROBE_TEAM
                                 or dn.mode == TMODE_WARM_UP)


cdef void dense_phase(Dense* dn, floating* prm, int kind, Py_ssize_t ntasks) noexcept nogil:
    """Master: run one phase's tasks, with the team when it is on."""
    cdef Py_ssize_t i
    cdef long long ran = 0    # (the master's tasks: not counted)
    if ntasks <= 0:
        return
    if ntasks == 1 or not dense_team_on(dn):
        for i in range(ntasks):
            dense_task(dn, prm, kind, i, 0)
        return
    cdef double t0, tp = cgd_now()
    dense_publish(dn, ntasks | (<long long>kind << MKIND_SHIFT))
    dn.n_meet += 1
    dense_take(dn, prm, cgd_atomic_fetch_add(&dn.claim, 1), 0, &ran)
    # Every task is claimed now. A helper held up between its claim and the task's
    # start (descheduled: another process, the host) would keep the master waiting
    # for a whole time slice: the master runs the tasks nobody has begun, and the
    # late helper's own mark then fails.
    for i in range(ntasks):
        if dense_begin(dn, i, dn.gen):
            dense_task(dn, prm, kind, i, 0)
            dn.n_taken += 1
    t0 = cgd_now()
    while cgd_atomic_load(&dn.done) < ntasks:
        cgd_cpu_relax()
    # A task a helper has begun is waited for (its outputs are written in place, and an
    # UPDATE task's step must not run twice); dense_adapt reads the total.
    tp = cgd_now() - tp
    t0 = cgd_now() - t0
    dn.wait_total += t0
    dn.ph_wall[kind] += tp
    dn.ph_wait[kind] += t0


cdef void dense_dismiss(Dense* dn) noexcept nogil:
    """Tell the helpers to leave the parallel region."""
    if dn.n_threads > 1:
        dense_publish(dn, MTASK_MASK)
        dn.n_threads = 1
    dn.mode = TMODE_SOLO


cdef inline void dense_drop(Dense* dn) noexcept nogil:
    """The team lost on a busy machine: one thread for the rest of the epoch, and a
    back-off for the next epochs (dense_mlp_epoch reads dn.stalled)."""
    dn.stalled = 1
    dense_dismiss(dn)


cdef void dense_adapt(Dense* dn, Py_ssize_t mb) noexcept nogil:
    """Count a finished batch of mb rows; at the end of a window, choose who runs the next.

    From the fifth batch on (the first ones wake the threads up), the helpers leave when
    they keep the master waiting, and the CPU-share rule (_team.pxd; off with the team's
    timing, MLP_TEAM_WINDOW 0) may drop the team or have the master time itself alone
    (TMODE_CPU_PROBE); the first batches' rows count in the rule's first window."""
    cdef double now, rate
    cdef int r
    dn.batches += 1
    if dn.mode == TMODE_SOLO:
        return
    if dn.batches <= 4:
        dn.cpu.rows += mb
    else:
        now = cgd_now()
        if dn.mode != TMODE_CPU_PROBE and dn.wait_total > MLP_WAIT_SHARE * (now - dn.t_start):
            # The helpers keep the master waiting (they do not get a core).
            dense_drop(dn)
            return
        if MLP_TEAM_WINDOW > 0.0 or dn.mode == TMODE_CPU_PROBE:
            r = cpu_watch(&dn.cpu, &MLP_CPU_RULE, mb, now, now - dn.t_start, dn.batches,
                          dn.n_batches)
            if r == CPU_PROBE:
                # (team_rates shows the team's rate from the probe's start on)
                dn.rate_team = dn.cpu.rate_team
                dn.cpu_prev_mode = dn.mode
                dn.mode = TMODE_CPU_PROBE
                return
            if dn.mode == TMODE_CPU_PROBE and (r == CPU_DROP or r == CPU_BACK):
                # the probe is over, lost or won
                dn.rate_solo = dn.cpu.rate_solo
                dn.solo_windows += 1
            if r == CPU_DROP:
                dense_drop(dn)
                return
            if r == CPU_BACK:
                dn.mode = dn.cpu_prev_mode
                dn.win_rows = 0.0
                dn.win_batches = 0
                dn.win_t0 = now
                return
            if dn.mode == TMODE_CPU_PROBE:
                return
        else:
            dn.cpu.rows += mb
    dn.win_rows += mb
    dn.win_batches += 1
    if dn.win_batches < 2:
        return
    now = cgd_now()
    if now - dn.win_t0 < MLP_TEAM_WINDOW:
        return
    rate = dn.win_rows / (now - dn.win_t0) if now > dn.win_t0 else 1e300
    if dn.mode == TMODE_WARM_UP:
        dn.mode = TMODE_PROBE_TEAM
    elif dn.mode == TMODE_PROBE_TEAM:
        dn.rate_team = rate
        dn.mode = TMODE_PROBE_SOLO
        dn.solo_windows += 1
    elif dn.mode == TMODE_PROBE_SOLO:
        dn.rate_solo = rate
        if dn.rate_team > MLP_TEAM_GAIN * dn.rate_solo:
            dn.mode = TMODE_TEAM
            dn.losses = 0
        else:
            # one lost comparison may be a hiccup of the machine: the team leaves
            # after two in a row
            dn.losses += 1
            if dn.losses >= 2:
                dense_dismiss(dn)
            else:
                dn.mode = TMODE_PROBE_TEAM
    elif rate * MLP_TEAM_GAIN < dn.rate_team and rate < MLP_TEAM_GAIN * dn.rate_solo:
        # the team slowed down to the master's rate (another process took a core?):
        # time the master alone again
        dn.rate_team = rate
        dn.mode = TMODE_PROBE_SOLO
        dn.solo_windows += 1
    dn.win_rows = 0.0
    dn.win_batches = 0
    dn.win_t0 = cgd_now()


cdef void dense_helper(Dense* dn, floating* prm, int tid) noexcept nogil:
    """Helper: claim tasks of each generation until dismissed."""
    cdef long long old, gen, ran = 0
    cdef int spins
    old = cgd_atomic_fetch_add(&dn.claim, 1)
    while True:
        if ((old >> MTASK_BITS) & MTASK_MASK) == MTASK_MASK:
            break
        gen = old >> (2 * MTASK_BITS)
        old = dense_take(dn, prm, old, tid, &ran)
        if (old >> (2 * MTASK_BITS)) != gen:
            continue  # a claim of a later generation: run it
        spins = 0
        while (cgd_atomic_load(&dn.claim) >> (2 * MTASK_BITS)) == gen:
            if spins < MSPIN_LIMIT:
                spins += 1
                cgd_cpu_relax()
            else:
                cgd_thread_nap()
        old = cgd_atomic_fetch_add(&dn.claim, 1)
    # (counted here once rather than per task: an atomic add on a shared line each time)
    cgd_atomic_fetch_add(&dn.helper_tasks, ran)
    # Dismissed: off the CPU until the master is done (a futex), rather than wait at the
    # end of the parallel region, where the OpenMP runtime would spin, or nap in a loop,
    # whose wake-ups would each take the master's core for a moment when another
    # process wants the cores.
    cgd_flag_wait(&dn.finished)


cdef void dense_epoch(
    Dense* dn, floating* prm, const floating* sw, Py_ssize_t n_order, Py_ssize_t m,
    double alpha, double out_scale,
    int* status,              # OUT 0 ok, 1 diverged, 3 interrupted (exception pending)
    double* t_io,             # IN/OUT number of the next update
    double* loss_out,         # OUT the epoch's accumulated loss (see mlp_epoch)
) noexcept nogil:
    """The epoch loop of mlp_epoch for dense X (run by the master)."""
    cdef Py_ssize_t start = 0, mb, i, have = -1, next_mb
    cdef double sw_sum, data_loss, sq, loss_acc = 0.0, last_check = cgd_now()
    cdef double t = t_io[0]
    cdef const intp_t* order = dn.order
    status[0] = 0
    dn.win_t0 = last_check
    dn.t_start = last_check
    cpu_watch_start(&dn.cpu, &MLP_CPU_RULE, last_check)
    dn.cpu_start = dn.cpu.c0
    dn.n_batches = (n_order + m - 1) // m
    while start < n_order:
        mb = min(m, n_order - start)
        sw_sum = 0.0
        for i in range(start, start + mb):
            sw_sum += sw[order[i]]
        if sw_sum > 0:
            dn.start = start
            dn.mb = mb
            if have != start:
                dn.g_start = start
                dn.g_mb = mb
                dn.g_buf = dn.cur
                dense_phase(dn, prm, PH_GATHER, (mb + GATHER_ROWS - 1) // GATHER_ROWS)
            dense_phase(dn, prm, PH_FIRST, dn.n_first)
            dn.n_rows = (mb + BLOCK_ROWS - 1) // BLOCK_ROWS
            dense_phase(dn, prm, PH_ROWS, dn.n_rows)
            data_loss = 0.0
            for i in range(dn.n_rows):
                data_loss += dn.block_loss[i]
            if not isfinite(data_loss):
                status[0] = 1
                break
            next_mb = min(m, n_order - start - mb)
            dn.g_start = start + mb
            dn.g_mb = next_mb
            dn.g_buf = 1 - dn.cur
            dn.gscale = 1.0 / sw_sum
            dn.l2 = alpha / sw_sum
            dn.t = t
            dense_phase(dn, prm, PH_UPDATE,
                        dn.n_upd + (next_mb + GATHER_ROWS - 1) // GATHER_ROWS)
            sq = 0.0
            for i in range(dn.n_upd):
                sq += dn.task_sq[i]
            loss_acc += mb / sw_sum * (data_loss * out_scale + 0.5 * alpha * sq)
            t += 1.0
            if next_mb > 0:
                dn.cur = 1 - dn.cur
                have = start + mb
            dense_adapt(dn, mb)
        start += mb
        if cgd_now() - last_check >= SIGNAL_CHECK_SECONDS:
            with gil:
                if mlp_check_signals() != 0:
                    status[0] = 3
            if status[0] != 0:
                break
            last_check = cgd_now()
    dn.team_at_end = dense_team_on(dn)
    dense_dismiss(dn)
    cgd_flag_set(&dn.finished)
    dn.t_done = cgd_now()
    dn.cpu_done = cgd_thread_cpu()
    t_io[0] = t
    loss_out[0] = loss_acc


cdef inline Py_ssize_t update_tiles(Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """Row tiles of a rows x cols weight matrix in the UPDATE phase."""
    cdef Py_ssize_t R = max(1, UPDATE_TILE // cols), n = (rows + R - 1) // R
    if n % 2 == 1 and rows >= 2 and rows * cols >= UPDATE_SPLIT:
        n += 1
    return n


cdef bint dense_tasks_fit(Layout* net, Py_ssize_t m) noexcept:
    """Whether every phase of batches of up to m rows has fewer than 2^17 tasks (the
    task word's room), else the epoch takes the blocks of batch_gradient."""
    cdef Py_ssize_t l, n = (m + GATHER_ROWS - 1) // GATHER_ROWS + net.L
    for l in range(net.L):
        n += update_tiles(net.sizes[l], net.sizes[l + 1])
    return n < (1 << 17) and first_tiles(net.sizes[1]) < (1 << 17)


cdef object dense_setup(Dense* dn, Layout* net, Py_ssize_t m, int nt, dtype):
    """Fill dn's task tables and scratch for batches of up to m rows; returns the arrays
    they point into, which must outlive dn."""
    import numpy as np
    cdef Py_ssize_t L = net.L, l, j, nt_l, lo, hi, stride = 0, a = 0
    cdef const intp_t* sz = net.sizes
    kinds, layers, los, his = [], [], [], []
    for l in range(L):
        nt_l = update_tiles(sz[l], sz[l + 1])
        for j in range(nt_l):
            lo = j * sz[l] // nt_l
            hi = (j + 1) * sz[l] // nt_l
            kinds.append(UPD_WEIGHTS); layers.append(l); los.append(lo); his.append(hi)
            stride = max(stride, (hi - lo) * sz[l + 1])
    for l in range(L):  # the biases after all the weights: the small tasks last
        kinds.append(UPD_BIAS); layers.append(l); los.append(0); his.append(0)
        stride = max(stride, sz[l + 1])
    table = np.array([kinds, layers, los, his], dtype=np.intp)
    cdef const intp_t[:, ::1] tb = table
    dn.n_upd = table.shape[1]
    dn.upd_kind = &tb[0, 0]
    dn.upd_layer = &tb[1, 0]
    dn.upd_lo = &tb[2, 0]
    dn.upd_hi = &tb[3, 0]
    dn.n_first = first_tiles(sz[1])
    for l in range(1, L + 1):
        dn.a_start[l] = a
        a += m * sz[l]
    stride = (stride + 15) // 16 * 16 + 16   # threads' scratch a cache line apart
    dn.scratch_stride = stride
    dn.act_total = a
    fbuf = np.zeros(2 * m * sz[0] + 2 * a + nt * stride + 64, dtype=dtype)
    dbuf = np.zeros((m + BLOCK_ROWS - 1) // BLOCK_ROWS + dn.n_upd + 1)
    cdef double[::1] db = dbuf
    dn.block_loss = &db[0]
    dn.task_sq = &db[0] + (m + BLOCK_ROWS - 1) // BLOCK_ROWS
    # tasks of the largest phase: UPDATE with the gathering, ROWS or FIRST
    sbuf = np.zeros(max(dn.n_upd + (m + GATHER_ROWS - 1) // GATHER_ROWS,
                        (m + BLOCK_ROWS - 1) // BLOCK_ROWS, dn.n_first) + 1, dtype=np.longlong)
    cdef long long[::1] sb = sbuf
    dn.started = &sb[0]
    return table, fbuf, dbuf, sbuf


cdef int mlp_raise_pending() except -1:
    """Propagate the exception a signal handler has set."""
    return -1


cdef object dense_mlp_epoch(
    Layout* net, const floating[::1] data, const floating[:, ::1] Y,
    const floating[::1] sample_weight, const intp_t[::1] order, floating[::1] params,
    floating[:, ::1] opt_state, dict config, double t, Py_ssize_t m, int nt,
):
    """mlp_epoch for dense X and batches of up to TEAM_MAX_ROWS rows (see the section
    comment); the inputs are checked."""
    import numpy as np
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t n_order = order.shape[0], mm = min(m, order.shape[0]), i
    cdef Dense dn
    memset(&dn, 0, sizeof(Dense))
    # An epoch whose team was dropped (a helper lost its core, or the team was timed
    # slower) makes the next 1, 2, 4, ... 16 epochs of this fit run on one thread: on a
    # busy machine a waiting helper costs the master a time slice at every phase
    # (_team.pxd; off with the team's timing, as in tests that switch it off).
    nt = backoff_threads(config, nt, MLP_TEAM_WINDOW > 0.0)
    keep = dense_setup(&dn, net, mm, nt, dtype)
    cdef floating[::1] fb = keep[1]
    cdef floating* p = &fb[0]
    cdef OptimConfig oc = read_optim_config(config)
    cdef double alpha = config["alpha"]
    cdef double out_scale = 1.0 / Y.shape[1] if net.out_act == ACT_IDENTITY else 1.0
    cdef double loss_acc = 0.0
    cdef int status = 0
    cdef floating* prm = &params[0]
    dn.xb[0] = p
    dn.xb[1] = p + mm * net.n_features
    dn.acts = p + 2 * mm * net.n_features
    dn.deltas = p + 2 * mm * net.n_features + dn.act_total
    dn.scratch = p + 2 * mm * net.n_features + 2 * dn.act_total + 16
    dn.net = net
    dn.oc = &oc
    dn.X = &data[0]
    dn.Y = &Y[0, 0]
    dn.sw = &sample_weight[0]
    dn.order = &order[0]
    dn.m0 = &opt_state[0, 0]
    dn.m1 = &opt_state[1, 0]
    dn.eps = np.finfo(dtype).eps
    dn.lr = config["learning_rate"]
    dn.n_threads = nt
    dn.mode = TMODE_WARM_UP if nt > 1 else TMODE_SOLO
    if nt > 1:
        with nogil, parallel(num_threads=nt):
            if threadid() == 0:
                dense_epoch(&dn, prm, &sample_weight[0], n_order, m, alpha, out_scale,
                            &status, &t, &loss_acc)
            else:
                dense_helper(&dn, prm, threadid())
        # The region ends when every helper has seen the end: a helper whose core
        # another process holds makes the master wait here too.
        if cgd_now() - dn.t_done > MLP_STALL_SECONDS:
            dn.stalled = 1
    else:
        with nogil:
            dense_epoch(&dn, prm, &sample_weight[0], n_order, m, alpha, out_scale, &status,
                        &t, &loss_acc)
    # (Before anything that calls Python: a Ctrl-C left its exception pending.)
    if status == 3:
        mlp_raise_pending()
    # What the team's timing saw (rows per second; windows timed on the master alone;
    # whether the team was on at the end), for tests and benchmarks.
    config["team_rates"] = (dn.rate_team, dn.rate_solo, dn.solo_windows, dn.team_at_end)
    config["team_stats"] = {"helper_tasks": dn.helper_tasks, "taken": dn.n_taken,
                            "wait": dn.wait_total, "wall": dn.t_done - dn.t_start,
                            "cpu": dn.cpu_done - dn.cpu_start, "meetings": dn.n_meet,
                            "threads": nt, "stalled": dn.stalled,
                            "phase_wall": [dn.ph_wall[i] for i in range(4)],
                            "phase_wait": [dn.ph_wait[i] for i in range(4)]}
    if nt > 1:
        backoff_record(config, not (dn.team_at_end and not dn.stalled))
    if status == 0:
        with nogil:
            for i in range(net.P):
                if not isfinite(prm[i]):
                    status = 1
                    break
    return status, t, loss_acc


# ---------------------------------------------------------------- entry points
#
# One kernel each for dense and CSR X. X comes as (data, indices, indptr, n_features):
# a CSR matrix's arrays (canonical or not: duplicates add; int32 or int64 indices used
# as they are), or, with indices and indptr None, the dense rows row-major in data.
# The CSR paths differ only in the first layer: blocks start at layer 1, a batch is
# grouped by column once to take the first layer's products by feature
# (first_layer_by_column, w0_rows_gradient), and W_0 is stepped by those feature tasks.

def mlp_epoch(
    const floating[::1] data,           # IN     X (see the section comment)
    const csr_index[::1] indices,       # IN     CSR column indices, or None
    const csr_index[::1] indptr,        # IN     (n_samples + 1,) CSR row pointers, or None
    Py_ssize_t n_features,
    const floating[:, ::1] Y,           # IN     (n_samples, n_outputs)
    const floating[::1] sample_weight,  # IN     (n_samples,)
    const intp_t[::1] order,            # IN     (n_train,) rows in visiting order
    const intp_t[::1] sizes,            # IN     (L + 1,) layer sizes
    floating[::1] params,               # IN/OUT (P,) flat parameters
    floating[:, ::1] opt_state,         # IN/OUT (2, P) velocity / adam moments / adagrad sums
    dict config,
    double t,                           # IN     number of the first update (adam), from 1
):
    """Train one epoch of mini-batch updates in place, as scikit-learn's MLPs.

    Each update on a batch B with S = sum of its sample weights:
    w <- step(w, (1/S) (sum_i s_i dl_i/dw + alpha w)), the L2 term on weights only,
    at the fixed rate ``config["learning_rate"]``. A batch whose weights sum to zero
    is skipped. Returns ``(status, t, loss)``: status 0 ok, 1 diverged, t the number
    of the next update, loss the sum over batches of |B| / S * (sum_i s_i l_i +
    alpha/2 ||W||^2) at the weights before each update (scikit-learn's accumulated
    loss; the squared error is averaged over the outputs as scikit-learn's).
    """
    import numpy as np
    cdef Layout net
    cdef Tasks tk
    cdef Scratch sc
    cdef Py_ssize_t n_order = order.shape[0], m = config["batch_size"], start, mb, i, s
    offsets = check_inputs(&net, data, indices, indptr, n_features, Y, sample_weight, order,
                           sizes, params, config, m)
    if opt_state.shape[0] < 2 or opt_state.shape[1] != net.P:
        raise ValueError("opt_state must have shape (2, P)")
    if n_order == 0:
        return 0, t, 0.0
    if indptr is None and min(m, n_order) <= TEAM_MAX_ROWS \
            and dense_tasks_fit(&net, min(m, n_order)):
        return dense_mlp_epoch(&net, data, Y, sample_weight, order, params, opt_state,
                               config, t, m, <int>config["n_threads"])
    fbuf, keep = prepare(&net, &tk, &sc, indptr, order, config, m,
                         np.float32 if floating is float else np.float64)
    cdef floating[::1] fb = fbuf
    cdef floating* buf = &fb[0]
    cdef const floating* X = &data[0]
    cdef const csr_index* ix = NULL if indptr is None else &indices[0]
    cdef const csr_index* ip = NULL if indptr is None else &indptr[0]
    cdef Py_ssize_t h = net.sizes[1]
    cdef int nt = config["n_threads"], status = 0
    cdef double alpha = config["alpha"], lr = config["learning_rate"]
    cdef double eps = np.finfo(np.float32 if floating is float else np.float64).eps
    cdef double out_scale = 1.0 / Y.shape[1] if net.out_act == ACT_IDENTITY else 1.0
    cdef double loss_acc = 0.0, data_loss, sq, sw_sum, last_check
    cdef Py_ssize_t nslots
    cdef OptimConfig oc = read_optim_config(config)
    cdef floating* prm = &params[0]
    with nogil:
        last_check = cgd_now()
        start = 0
        while start < n_order:
            mb = min(m, n_order - start)
            sw_sum = 0.0
            for i in range(start, start + mb):
                sw_sum += sample_weight[order[i]]
            if sw_sum > 0:
                if tk.sparse:
                    # the batch by column, and its first-layer products from it
                    transpose_rows(X, ix, ip, &order[start], mb, n_features, tk.colptr,
                                   tk.t_row, buf + sc.t_val)
                    for s in prange(nt, schedule="static", num_threads=nt):
                        first_layer_by_column(tk.colptr, tk.t_row, buf + sc.t_val, n_features,
                                              prm, prm + n_features * h, h, mb, s * h // nt,
                                              (s + 1) * h // nt, buf + sc.z1)
                batch_gradient(&net, X, ix, ip, &Y[0, 0], &sample_weight[0], &order[start], mb,
                               prm, eps, buf + sc.grad, buf + sc.act, buf + sc.delta,
                               sc.act_stride, buf + sc.z1, buf + sc.delta1, sc.block_loss, nt,
                               &data_loss, &nslots, &last_check)
                if not isfinite(data_loss):
                    status = 1
                    break
                finish_batch(&net, &tk, prm, buf + sc.grad, nslots, buf + sc.t_val,
                             buf + sc.delta1, buf + sc.w0, sw_sum, alpha, &oc,
                             &opt_state[0, 0], &opt_state[1, 0], lr, t, NULL, sc.seg_sq, nt)
                sq = 0.0
                for s in range(tk.n_chunks + tk.nseg):
                    sq += sc.seg_sq[s]
                loss_acc += mb / sw_sum * (data_loss * out_scale + 0.5 * alpha * sq)
                t += 1.0
            start += mb
            if cgd_now() - last_check >= SIGNAL_CHECK_SECONDS:
                with gil:
                    PyErr_CheckSignals()
                last_check = cgd_now()
        if status == 0:
            for i in range(net.P):
                if not isfinite(prm[i]):
                    status = 1
                    break
    return status, t, loss_acc


def mlp_objective(
    const floating[::1] data,           # IN  X (see the section comment)
    const csr_index[::1] indices,       # IN  CSR column indices, or None
    const csr_index[::1] indptr,        # IN  (n_samples + 1,) CSR row pointers, or None
    Py_ssize_t n_features,
    const floating[:, ::1] Y,           # IN  (n_samples, n_outputs)
    const floating[::1] sample_weight,  # IN  (n_samples,)
    const intp_t[::1] rows,             # IN  (m,) the training rows
    const intp_t[::1] sizes,            # IN  (L + 1,)
    const floating[::1] params,         # IN  (P,)
    double[::1] grad,                   # OUT (P,) gradient of the objective
    dict config,
):
    """The full-batch objective of scikit-learn's lbfgs solver and its gradient:
    (sum_i s_i l_i + alpha/2 ||W||^2) / sum_i s_i, biases unpenalised. Here the
    squared error is summed over outputs, so that the gradient is this function's
    (scikit-learn reports its mean over outputs but differentiates the sum).

    Returns ``(status, loss, penalty)``: status 1 when the loss is not finite, penalty
    the L2 part of loss. ``grad`` is float64 whatever the data's dtype, as
    scipy.optimize expects.
    """
    import numpy as np
    cdef Layout net
    cdef Tasks tk
    cdef Scratch sc
    cdef Py_ssize_t m = rows.shape[0], i, s
    if m < 1:
        raise ValueError("rows must not be empty")
    offsets = check_inputs(&net, data, indices, indptr, n_features, Y, sample_weight, rows,
                           sizes, params, config, m)
    fbuf, keep = prepare(&net, &tk, &sc, indptr, rows, config, m,  # one batch: all rows
                         np.float32 if floating is float else np.float64)
    if grad.shape[0] != net.P:
        raise ValueError(f"grad must have {net.P} entries")
    cdef floating[::1] fb = fbuf
    cdef floating* buf = &fb[0]
    cdef const floating* X = &data[0]
    cdef const csr_index* ix = NULL if indptr is None else &indices[0]
    cdef const csr_index* ip = NULL if indptr is None else &indptr[0]
    cdef int nt = config["n_threads"]
    cdef double alpha = config["alpha"], data_loss, sq = 0.0, sw_sum = 0.0, last_check
    cdef double eps = np.finfo(np.float32 if floating is float else np.float64).eps
    cdef Py_ssize_t nslots
    with nogil:
        last_check = cgd_now()
        for i in range(m):
            sw_sum += sample_weight[rows[i]]
        batch_gradient(&net, X, ix, ip, &Y[0, 0], &sample_weight[0], &rows[0], m, &params[0],
                       eps, buf + sc.grad, buf + sc.act, buf + sc.delta, sc.act_stride,
                       <floating*>NULL, buf + sc.delta1, sc.block_loss, nt, &data_loss,
                       &nslots, &last_check)
        if tk.sparse:
            transpose_rows(X, ix, ip, &rows[0], m, n_features, tk.colptr, tk.t_row,
                           buf + sc.t_val)
        # with grad_out given, finish_batch only reads the parameters
        finish_batch(&net, &tk, <floating*>&params[0], buf + sc.grad, nslots, buf + sc.t_val,
                     buf + sc.delta1, buf + sc.w0, sw_sum, alpha, NULL, NULL, NULL, 0.0, 0.0,
                     &grad[0], sc.seg_sq, nt)
        for s in range(tk.n_chunks + tk.nseg):
            sq += sc.seg_sq[s]
    loss = (data_loss + 0.5 * alpha * sq) * (1.0 / sw_sum)
    return (0 if np.isfinite(loss) else 1), loss, 0.5 * alpha * sq * (1.0 / sw_sum)


def mlp_forward(
    const floating[::1] data,           # IN  X (see the section comment)
    const csr_index[::1] indices,       # IN  CSR column indices, or None
    const csr_index[::1] indptr,        # IN  (n_samples + 1,) CSR row pointers, or None
    Py_ssize_t n_features,
    const intp_t[::1] rows,             # IN  (m,) rows to predict
    const intp_t[::1] sizes,            # IN  (L + 1,)
    const floating[::1] params,         # IN  (P,)
    int hidden_activation,
    int out_activation,
    floating[:, ::1] out,               # OUT (m, n_outputs) output activations
    int n_threads,
):
    """Output-layer activations of ``rows``, in blocks of FORWARD_ROWS rows spread over
    threads (each block's result does not depend on which thread computes it)."""
    import numpy as np
    cdef Layout net
    cdef Py_ssize_t n_rows
    if indptr is None:
        n_rows = data.shape[0] // n_features if n_features > 0 else 0
    else:
        n_rows = indptr.shape[0] - 1
        if n_rows < 0:
            raise ValueError("CSR indptr needs n_rows + 1 entries")
    check_x(data, indices, indptr, n_features, n_rows)
    offsets = make_layout(&net, sizes, n_features, out.shape[1], hidden_activation,
                          out_activation)
    cdef const floating* X = &data[0]
    cdef const csr_index* ix = NULL if indptr is None else &indices[0]
    cdef const csr_index* ip = NULL if indptr is None else &indptr[0]
    cdef Py_ssize_t m = rows.shape[0], nblk, b, r0, r1, r, j, width, last
    if out.shape[0] != m or params.shape[0] != net.P or n_threads < 1:
        raise ValueError("out must have one row per row, params P entries")
    if m and (np.min(rows) < 0 or np.max(rows) >= n_rows):
        raise ValueError("rows out of range")
    if m == 0:
        return
    nblk = (m + FORWARD_ROWS - 1) // FORWARD_ROWS
    cdef int nt = n_threads if n_threads < nblk else <int>nblk
    # activations of one row: every layer's, from layer 1 on for CSR X
    width = net.act_total - (n_features if ip != NULL else 0)
    cdef floating[:, ::1] work = np.empty(
        (nt, FORWARD_ROWS * width), dtype=np.float32 if floating is float else np.float64)
    cdef floating* a
    last = width - net.n_out   # start of the output layer, per row
    with nogil:
        for b in prange(nblk, schedule="static", num_threads=nt):
            r0 = b * FORWARD_ROWS
            r1 = min(m, r0 + FORWARD_ROWS)
            a = &work[threadid(), 0]
            if ip == NULL:
                forward_rows(X, n_features, &rows[r0], r1 - r0, &params[0], net.sizes,
                             net.offsets, net.L, net.hidden_act, net.out_act, a)
            else:
                sparse_forward_rows(X, ix, ip, &rows[r0], r1 - r0, &net, &params[0],
                                    <floating*>NULL, a)
            for r in range(r1 - r0):
                for j in range(net.n_out):
                    out[r0 + r, j] = a[(r1 - r0) * last + r * net.n_out + j]


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
    """Sum over ``rows`` of the weighted per-sample loss, and its gradient in ``grad``:
    one block's forward and backward pass over dense X, on the caller's thread (the
    estimators run it through mlp_epoch / mlp_objective, which cut batches into fixed
    blocks for thread-count-independent results).
    """
    import numpy as np
    cdef Layout net
    offsets = make_layout(&net, sizes, X.shape[1], Y.shape[1], hidden_activation,
                          out_activation)
    check_common(&net, X.shape[0], Y, sample_weight, rows, params)
    if grad.shape[0] != net.P:
        raise ValueError(f"grad must have {net.P} entries")
    cdef Py_ssize_t m = rows.shape[0], total = m * net.act_total
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] acts = np.empty(max(total, 1), dtype=dtype)
    cdef floating[::1] deltas = np.empty(max(total, 1), dtype=dtype)
    cdef double eps = np.finfo(np.float32 if floating is float else np.float64).eps
    cdef double loss
    grad[:] = 0
    if m == 0:
        return 0.0
    with nogil:
        loss = loss_grad_rows(&X[0, 0], X.shape[1], &Y[0, 0], &sample_weight[0], &rows[0], m,
                              &params[0], net.sizes, net.offsets, net.L, net.hidden_act,
                              net.out_act, eps, &grad[0], &acts[0], &deltas[0])
    return loss
