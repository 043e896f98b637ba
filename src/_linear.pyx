"""Linear-model epoch kernel: one call trains one epoch without the GIL.

A model has K outputs (1 for regression and binary classification, one per class for
one-vs-rest and multinomial) stored in one flat parameter buffer of length
P = K * (n_features + 1): the K coefficient rows, then the K intercepts.

One update on a batch B of m rows (sample weights s_i, penalty R):
    w <- w - eta_t * ( (1/m) sum_{i in B} s_i dl/dz_i x_i + alpha * grad R(w) )

Determinism (results must not depend on n_jobs): a batch of m rows is cut into nch = min(ceil(m / CHUNK_ROWS),
MAX_CHUNKS) chunks, chunk c holding rows [c*m // nch, (c+1)*m // nch): boundaries that
depend on the batch size only, never on the thread count; each chunk's
partial gradient goes to its own row of `work_grad`; rows are summed in chunk order.
Threads take chunks with a static schedule, so any thread count gives the same bits.

Memory (linear SGD is bound by reading X, not by arithmetic): each row is read once per update. Its dot products, loss
derivative and gradient contribution are computed while it sits in L1, and rows a few
places ahead in the visiting order are prefetched, since a shuffled order defeats the
hardware prefetcher.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport isfinite
from libc.string cimport memset

from _math cimport loss_and_dloss, softmax_inplace, dot, abs_sum
from _optim cimport (OptimConfig, optimizer_step, l1_cumulative, running_average,
                     schedule_eta, read_optim_config, SOLVER_SGD)
from _runtime cimport cgd_now, cgd_prefetch, PyErr_CheckSignals, SIGNAL_CHECK_SECONDS
from _reduce cimport reduce_chunks

ctypedef Py_ssize_t intp_t

cdef enum:
    TARGET_REGRESSION = 0
    TARGET_OVR = 1
    TARGET_MULTINOMIAL = 2

cdef enum:
    CHUNK_ROWS = 32
    MAX_CHUNKS = 64
    PREFETCH_ROWS = 8
    # Parameters per block in the parallel chunk reduction.
    REDUCE_BLOCK = 2048

cdef enum:
    STATUS_OK = 0
    STATUS_DIVERGED = 1

# Python-visible copies of the constants the estimators need.
MAX_CHUNKS_ = MAX_CHUNKS


cdef struct EpochConfig:
    int loss
    int target
    int class_offset      # TARGET_OVR: output k is the class with index k + class_offset
    int schedule
    double alpha          # for the 'optimal' schedule
    double l1             # alpha * l1_ratio (0 without an L1 part)
    double l2             # alpha * (1 - l1_ratio) (0 without an L2 part)
    double epsilon        # of the huber / epsilon-insensitive losses
    double power_t
    double optimal_init
    bint fit_intercept
    Py_ssize_t batch_size
    double average        # 0: off; else the update number from which to average
    int n_threads
    double parallel_min_work  # multiply-adds a batch needs before it is spread over threads
    bint weighted_objective  # weight the recorded losses by s_i (scikit-learn's stopping
                             # objective does not; the gradient always does)
    OptimConfig optim


cdef EpochConfig read_config(dict c) except *:
    cdef EpochConfig cfg
    cfg.loss = c["loss"]
    cfg.target = c["target"]
    cfg.class_offset = c.get("class_offset", 0)
    cfg.schedule = c["schedule"]
    cfg.alpha = c["alpha"]
    cfg.l1 = c["l1"]
    cfg.l2 = c["l2"]
    cfg.epsilon = c["epsilon"]
    cfg.power_t = c["power_t"]
    cfg.optimal_init = c["optimal_init"]
    cfg.fit_intercept = c["fit_intercept"]
    cfg.batch_size = c["batch_size"]
    cfg.average = c["average"]
    cfg.n_threads = c["n_threads"]
    cfg.weighted_objective = c.get("weighted_objective", False)
    cfg.parallel_min_work = c.get("parallel_min_work", 0.0)
    cfg.optim = read_optim_config(c)
    if cfg.batch_size < 1 or cfg.n_threads < 1:
        raise ValueError("batch_size and n_threads must be >= 1")
    return cfg


cdef inline double target_and_weight(EpochConfig* cfg, floating yi, floating si,
                                     Py_ssize_t k, const floating* pos_w,
                                     const floating* neg_w, double* weight) noexcept nogil:
    """The target of output k for one sample and its weight s_i * class_weight."""
    if cfg.target == TARGET_OVR:
        if <Py_ssize_t>yi == k + cfg.class_offset:
            weight[0] = si * pos_w[k]
            return 1.0
        weight[0] = si * neg_w[k]
        return -1.0
    weight[0] = si
    return yi


cdef inline void prefetch_sample(const floating* X, const floating* y, const floating* sw,
                                 Py_ssize_t d, Py_ssize_t i) noexcept nogil:
    """Ask for everything the update of sample i reads: its row, target and weight
    (in a shuffled order each is a cache miss of its own)."""
    cgd_prefetch(X + i * d, d * sizeof(floating))
    cgd_prefetch(y + i, sizeof(floating))
    cgd_prefetch(sw + i, sizeof(floating))


cdef void chunk_gradient(
    const floating* X,          # IN  (n_samples, d) row-major
    Py_ssize_t d,
    const floating* y,          # IN  (n_samples,) targets or class indices
    const floating* sw,         # IN  (n_samples,) sample weights
    const intp_t* order,        # IN  (n_order,) visiting order
    Py_ssize_t p0,              # IN  first position in `order` of this chunk
    Py_ssize_t p1,              # IN  one past its last position
    Py_ssize_t n_order,
    const floating* params,     # IN  (P,)
    Py_ssize_t K,
    const floating* pos_w,      # IN  (K,)
    const floating* neg_w,      # IN  (K,)
    const unsigned char* active,  # IN (K,)
    EpochConfig* cfg,
    floating* grad,             # OUT (P,) sum over the chunk of s_i dl/dz x_i (intercepts: of s_i dl/dz)
    double* obj,                # OUT (K,) sum over the chunk of s_i l_i (multinomial: obj[0])
    floating* z,                # scratch (K,)
) noexcept nogil:
    cdef Py_ssize_t p, i, k, j, c, P = K * (d + 1)
    cdef const floating* x
    cdef floating* g
    cdef double zk, tk, sk, l, dl, lse, zc
    memset(grad, 0, P * sizeof(floating))
    memset(obj, 0, K * sizeof(double))
    for p in range(p0, p1):
        if p + PREFETCH_ROWS < n_order:
            prefetch_sample(X, y, sw, d, order[p + PREFETCH_ROWS])
        i = order[p]
        x = X + i * d
        if cfg.target == TARGET_MULTINOMIAL:
            for k in range(K):
                z[k] = dot(params + k * d, x, d) + params[K * d + k]
            c = <Py_ssize_t>y[i]
            zc = z[c]
            lse = softmax_inplace(z, K)
            obj[0] += (sw[i] if cfg.weighted_objective else 1.0) * (lse - zc)
            for k in range(K):
                dl = sw[i] * (z[k] - (1.0 if k == c else 0.0))
                if dl != 0.0:
                    g = grad + k * d
                    for j in range(d):
                        g[j] = g[j] + <floating>dl * x[j]
                    grad[K * d + k] += <floating>dl
        else:
            for k in range(K):
                if not active[k]:
                    continue
                zk = dot(params + k * d, x, d) + params[K * d + k]
                tk = target_and_weight(cfg, y[i], sw[i], k, pos_w, neg_w, &sk)
                l = loss_and_dloss(cfg.loss, zk, tk, cfg.epsilon, &dl)
                obj[k] += sk * l if cfg.weighted_objective else l
                dl = dl * sk
                if dl != 0.0:
                    g = grad + k * d
                    for j in range(d):
                        g[j] = g[j] + <floating>dl * x[j]
                    grad[K * d + k] += <floating>dl


cdef inline double penalty_value(EpochConfig* cfg, const floating* w, Py_ssize_t d) noexcept nogil:
    """R_alpha(w) = l2/2 ||w||^2 + l1 ||w||_1 of one coefficient row."""
    cdef double r = 0.0
    if cfg.l2 != 0.0:
        r += 0.5 * cfg.l2 * dot(w, w, d)
    if cfg.l1 != 0.0:
        r += cfg.l1 * abs_sum(w, d)
    return r


cdef void sgd_single_row(
    const floating* x, floating yi, floating si, floating* params, Py_ssize_t K,
    Py_ssize_t d, const floating* pos_w, const floating* neg_w,
    const unsigned char* active, const double* eta, EpochConfig* cfg,
    double* obj, floating* z,
) noexcept nogil:
    """Plain SGD on one sample (batch_size=1, no momentum): dot, loss derivative and
    the decayed update w <- (1 - eta*l2) w - eta*dl*x in one pass over the row."""
    cdef Py_ssize_t k, j, c
    cdef double zk, tk, sk, l, dl, decay, step, lse, zc
    cdef floating* w
    if cfg.target == TARGET_MULTINOMIAL:
        for k in range(K):
            z[k] = dot(params + k * d, x, d) + params[K * d + k]
        c = <Py_ssize_t>yi
        zc = z[c]
        lse = softmax_inplace(z, K)
        obj[0] += (si if cfg.weighted_objective else 1.0) * (lse - zc)
        for k in range(K):
            dl = si * (z[k] - (1.0 if k == c else 0.0))
            decay = 1.0 - eta[k] * cfg.l2
            if decay < 0.0:
                decay = 0.0
            step = eta[k] * dl
            w = params + k * d
            for j in range(d):
                w[j] = <floating>(w[j] * decay - step * x[j])
            if cfg.fit_intercept:
                params[K * d + k] = <floating>(params[K * d + k] - step)
        return
    for k in range(K):
        if not active[k]:
            continue
        w = params + k * d
        zk = dot(w, x, d) + params[K * d + k]
        tk = target_and_weight(cfg, yi, si, k, pos_w, neg_w, &sk)
        l = loss_and_dloss(cfg.loss, zk, tk, cfg.epsilon, &dl)
        obj[k] += sk * l if cfg.weighted_objective else l
        decay = 1.0 - eta[k] * cfg.l2
        if decay < 0.0:
            decay = 0.0
        step = eta[k] * dl * sk
        if decay != 1.0:
            for j in range(d):
                w[j] = <floating>(w[j] * decay - step * x[j])
        elif step != 0.0:
            for j in range(d):
                w[j] = <floating>(w[j] - step * x[j])
        if cfg.fit_intercept:
            params[K * d + k] = <floating>(params[K * d + k] - step)


cdef inline Py_ssize_t n_chunks_for(Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t nch = (m + CHUNK_ROWS - 1) // CHUNK_ROWS
    return nch if nch < MAX_CHUNKS else MAX_CHUNKS


cdef void batch_gradient(
    const floating[:, ::1] X, const floating[::1] y, const floating[::1] sw,
    const intp_t* order, Py_ssize_t start, Py_ssize_t mb, Py_ssize_t n_order,
    const floating* params, Py_ssize_t K,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    EpochConfig* cfg,
    floating[:, ::1] work_grad,     # OUT row 0: the batch's gradient sum (rows 1.. scratch)
    double[:, ::1] work_obj,        # OUT row 0: the batch's loss sums (rows 1.. scratch)
    floating[:, ::1] work_z,        # scratch
) noexcept nogil:
    """Gradient sum of one batch, reduced deterministically into work_grad[0]."""
    cdef Py_ssize_t d = X.shape[1], P = K * (d + 1)
    cdef Py_ssize_t nch = n_chunks_for(mb), c, k, blk, nblk
    cdef Py_ssize_t nt = cfg.n_threads
    # Chunk boundaries never depend on nt, so using fewer threads for small batches
    # changes no bit of the result, only the time.
    if <double>mb * K * d < cfg.parallel_min_work:
        nt = 1
    if nch == 1 or nt == 1:
        for c in range(nch):
            chunk_gradient(&X[0, 0], d, &y[0], &sw[0], order,
                           start + (c * mb) // nch, start + ((c + 1) * mb) // nch, n_order,
                           params, K, pos_w, neg_w, active, cfg,
                           &work_grad[c, 0], &work_obj[c, 0], &work_z[c, 0])
    else:
        for c in prange(nch, schedule="static", num_threads=nt):
            chunk_gradient(&X[0, 0], d, &y[0], &sw[0], order,
                           start + (c * mb) // nch, start + ((c + 1) * mb) // nch, n_order,
                           params, K, pos_w, neg_w, active, cfg,
                           &work_grad[c, 0], &work_obj[c, 0], &work_z[c, 0])
    if nch > 1:
        nblk = (P + REDUCE_BLOCK - 1) // REDUCE_BLOCK
        if nt > 1 and nblk > 1 and P * nch >= 65536:
            for blk in prange(nblk, schedule="static", num_threads=nt):
                reduce_chunks(&work_grad[0, 0], P, nch, blk * REDUCE_BLOCK,
                              min((blk + 1) * REDUCE_BLOCK, P))
        else:
            reduce_chunks(&work_grad[0, 0], P, nch, 0, P)
        for c in range(1, nch):
            for k in range(K):
                work_obj[0, k] += work_obj[c, k]


def grad_rows_needed(Py_ssize_t batch_size, Py_ssize_t n_train, bint per_sample_plain):
    """Rows of ``work_grad`` an epoch needs: one per chunk of its largest batch, none
    for plain per-sample SGD (which never builds a batch gradient)."""
    if per_sample_plain and min(batch_size, n_train) == 1:
        return 0
    return n_chunks_for(min(batch_size, n_train))


def linear_epoch(
    const floating[:, ::1] X,           # IN     (n_samples, n_features)
    const floating[::1] y,              # IN     (n_samples,) targets, or class indices (classifiers)
    const floating[::1] sample_weight,  # IN     (n_samples,)
    const intp_t[::1] order,            # IN     (n_train,) rows in visiting order (training rows only)
    const floating[::1] pos_weight,     # IN     (K,) class weight when the sample is output k's class
    const floating[::1] neg_weight,     # IN     (K,) class weight otherwise
    const unsigned char[::1] active,    # IN     (K,) outputs still training (one-vs-rest stops each alone)
    const double[::1] eta_base,         # IN     (K,) base learning rate per output
    floating[::1] params,               # IN/OUT (P,) coefficients then intercepts
    floating[:, ::1] opt_state,         # IN/OUT (2, P) optimizer moments / velocity
    floating[::1] l1_q,                 # IN/OUT (P,) L1 penalty applied to each coefficient
    double[::1] l1_u,                   # IN/OUT (K,) L1 penalty owed to every coefficient
    double[::1] avg_params,             # IN/OUT (P,) averaged parameters (average > 0)
    double[::1] avg_n,                  # IN/OUT (K,) updates averaged so far, per output
    floating[:, ::1] work_grad,         # scratch (chunks of the largest batch, P); may have
                                        #         0 rows for per-sample plain SGD
    double[:, ::1] work_obj,            # scratch (MAX_CHUNKS, K)
    floating[:, ::1] work_z,            # scratch (MAX_CHUNKS, K)
    double[:, ::1] work_k,              # scratch (2, K): learning rates, penalties
    double[::1] obj_out,                # OUT    (K,) sum over training rows of l_i + R(w)
    dict config,
    double t,                           # IN     number of the first update (from 1)
):
    """Train one epoch in place. Returns ``(status, t)``: status 0 ok, 1 diverged (a
    non-finite loss or parameter); t the number the next update will have."""
    cdef EpochConfig cfg = read_config(config)
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = eta_base.shape[0]
    cdef Py_ssize_t P = K * (d + 1), n_order = order.shape[0]
    cdef Py_ssize_t m = cfg.batch_size, start, mb, k, j
    cdef int status = STATUS_OK
    cdef double* eta
    cdef double* reg
    cdef double reg_sum, obj_batch, gscale
    cdef double work = 0.0, next_clock = 0.0, last_check
    cdef bint plain = (cfg.optim.solver == SOLVER_SGD and cfg.optim.momentum == 0.0)
    cdef bint multinomial = cfg.target == TARGET_MULTINOMIAL
    cdef Py_ssize_t n_obj = 1 if multinomial else K
    cdef floating* prm = &params[0]
    cdef floating* g

    if y.shape[0] != n or sample_weight.shape[0] != n or params.shape[0] != P:
        raise ValueError("inconsistent shapes passed to linear_epoch")
    if opt_state.shape[0] < 2 or opt_state.shape[1] != P or l1_q.shape[0] != P \
            or avg_params.shape[0] != P or l1_u.shape[0] != K or avg_n.shape[0] != K:
        raise ValueError("optimizer state does not match the parameters")
    if (work_grad.shape[0] < grad_rows_needed(m, n_order, plain)
            or work_grad.shape[1] != P
            or work_obj.shape[0] < MAX_CHUNKS or work_obj.shape[1] != K
            or work_z.shape[0] < MAX_CHUNKS or work_z.shape[1] != K
            or work_k.shape[0] < 2 or work_k.shape[1] != K):
        raise ValueError("work buffers do not match the parameters")
    if pos_weight.shape[0] != K or neg_weight.shape[0] != K or active.shape[0] != K \
            or obj_out.shape[0] != K:
        raise ValueError("per-output arrays must have one entry per output")
    obj_out[:] = 0.0
    if n_order == 0:
        return STATUS_OK, t
    eta = &work_k[0, 0]
    reg = &work_k[1, 0]

    with nogil:
        for k in range(K):
            reg[k] = penalty_value(&cfg, prm + k * d, d)
        last_check = cgd_now()
        start = 0
        while start < n_order:
            mb = min(m, n_order - start)
            for k in range(K):
                eta[k] = schedule_eta(cfg.schedule, eta_base[k], cfg.alpha, t,
                                      cfg.power_t, cfg.optimal_init)
            if mb == 1 and plain:
                for k in range(K):
                    work_obj[0, k] = 0.0
                if start + PREFETCH_ROWS < n_order:
                    prefetch_sample(&X[0, 0], &y[0], &sample_weight[0], d,
                                    order[start + PREFETCH_ROWS])
                j = order[start]
                sgd_single_row(&X[j, 0], y[j], sample_weight[j], prm, K, d,
                               &pos_weight[0], &neg_weight[0], &active[0], eta, &cfg,
                               &work_obj[0, 0], &work_z[0, 0])
            else:
                batch_gradient(X, y, sample_weight, &order[0], start, mb, n_order, prm, K,
                               &pos_weight[0], &neg_weight[0], &active[0], &cfg,
                               work_grad, work_obj, work_z)
                g = &work_grad[0, 0]
                gscale = 1.0 / mb
                for k in range(K):
                    if not (multinomial or active[k]):
                        continue
                    optimizer_step(&cfg.optim, prm + k * d, g + k * d, gscale,
                                   &opt_state[0, k * d], &opt_state[1, k * d], d,
                                   eta[k], cfg.l2, t)
                    if cfg.fit_intercept:
                        optimizer_step(&cfg.optim, prm + K * d + k, g + K * d + k, gscale,
                                       &opt_state[0, K * d + k], &opt_state[1, K * d + k],
                                       1, eta[k], 0.0, t)

            # The objective of this batch: its losses at the weights before the update,
            # plus the penalty at those weights once per sample (as scikit-learn).
            reg_sum = 0.0
            for k in range(K):
                if multinomial or active[k]:
                    reg_sum += reg[k]
            if multinomial:
                obj_batch = work_obj[0, 0] + mb * reg_sum
                obj_out[0] += obj_batch
            else:
                obj_batch = 0.0
                for k in range(K):
                    if active[k]:
                        obj_out[k] += work_obj[0, k] + mb * reg[k]
                        obj_batch += work_obj[0, k]
                obj_batch += mb * reg_sum

            if cfg.average > 0.0 and cfg.average <= t:
                # Each output counts its own averaged updates: a one-vs-rest problem
                # that stopped early keeps the mean of the iterates it had.
                for k in range(K):
                    if multinomial or active[k]:
                        avg_n[k] += 1.0
                        running_average(&avg_params[k * d], prm + k * d, d, avg_n[k])
                        running_average(&avg_params[K * d + k], prm + K * d + k, 1, avg_n[k])
            for k in range(K):
                if not (multinomial or active[k]):
                    continue
                if cfg.l1 != 0.0:
                    l1_u[k] += cfg.l1 * eta[k]
                    l1_cumulative(prm + k * d, &l1_q[k * d], d, l1_u[k])
                if cfg.l1 != 0.0 or cfg.l2 != 0.0:
                    reg[k] = penalty_value(&cfg, prm + k * d, d)

            t += 1.0
            start += mb
            if not isfinite(obj_batch):
                status = STATUS_DIVERGED
                break
            work += mb * K * d
            if work >= next_clock:
                # Reading the clock costs ~20 ns: look at it every ~1e6 multiply-adds.
                next_clock = work + 1e6
                if cgd_now() - last_check >= SIGNAL_CHECK_SECONDS:
                    with gil:
                        PyErr_CheckSignals()
                    last_check = cgd_now()
        if status == STATUS_OK:
            for j in range(P):
                if not isfinite(prm[j]):
                    status = STATUS_DIVERGED
                    break
    return status, t


def linear_decision(
    const floating[:, ::1] X,       # IN  (n_samples, n_features)
    const intp_t[::1] rows,         # IN  (n_rows,) rows of X to evaluate
    const floating[::1] params,     # IN  (K * (n_features + 1),)
    floating[:, ::1] out,           # OUT (n_rows, K) decision values
    int n_threads,
):
    """Decision values X[rows] @ W.T + b, for early stopping on a split kept by index."""
    cdef Py_ssize_t d = X.shape[1], K = out.shape[1], r, k, i
    if params.shape[0] != K * (d + 1) or out.shape[0] != rows.shape[0]:
        raise ValueError("inconsistent shapes passed to linear_decision")
    with nogil:
        for r in prange(rows.shape[0], schedule="static", num_threads=n_threads):
            i = rows[r]
            for k in range(K):
                out[r, k] = dot(&params[k * d], &X[i, 0], d) + params[K * d + k]


def linear_objective_gradient(
    const floating[:, ::1] X,           # IN  (n_samples, n_features)
    const floating[::1] y,              # IN  (n_samples,)
    const floating[::1] sample_weight,  # IN  (n_samples,)
    const floating[::1] pos_weight,     # IN  (K,)
    const floating[::1] neg_weight,     # IN  (K,)
    const floating[::1] params,         # IN  (P,)
    dict config,
):
    """Mean objective (1/n) sum_i s_i l_i + R(w) and its gradient, over all rows in
    storage order, through the same chunked code path as training (the losses are
    weighted here whatever ``config["weighted_objective"]`` says).

    The L1 part of the gradient is the subgradient l1 * sign(w) (training itself uses
    the cumulative-penalty truncation). Returns ``(objective (K,), gradient (P,))``;
    for the multinomial loss the objective is in entry 0.
    """
    import numpy as np
    cdef EpochConfig cfg = read_config(config)
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], K = pos_weight.shape[0]
    cdef Py_ssize_t P = K * (d + 1), k, j
    cfg.weighted_objective = True
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] work_grad = np.zeros((MAX_CHUNKS, P), dtype=dtype)
    cdef double[:, ::1] work_obj = np.zeros((MAX_CHUNKS, K))
    cdef floating[:, ::1] work_z = np.zeros((MAX_CHUNKS, K), dtype=dtype)
    cdef const intp_t[::1] order = np.arange(n, dtype=np.intp)
    cdef unsigned char[::1] active = np.ones(K, dtype=np.uint8)
    obj = np.zeros(K)
    grad = np.zeros(P)
    cdef double[::1] o = obj
    cdef double[::1] gr = grad
    if params.shape[0] != P or y.shape[0] != n or sample_weight.shape[0] != n:
        raise ValueError("inconsistent shapes passed to linear_objective_gradient")
    with nogil:
        batch_gradient(X, y, sample_weight, &order[0], 0, n, n, &params[0], K,
                       &pos_weight[0], &neg_weight[0], &active[0], &cfg,
                       work_grad, work_obj, work_z)
        for k in range(K):
            o[k] = work_obj[0, k] / n
        for k in range(K):
            if cfg.target == TARGET_MULTINOMIAL:
                o[0] += penalty_value(&cfg, &params[k * d], d)
            else:
                o[k] += penalty_value(&cfg, &params[k * d], d)
            for j in range(d):
                gr[k * d + j] = work_grad[0, k * d + j] / n + cfg.l2 * params[k * d + j]
                if params[k * d + j] > 0:
                    gr[k * d + j] += cfg.l1
                elif params[k * d + j] < 0:
                    gr[k * d + j] -= cfg.l1
            gr[K * d + k] = work_grad[0, K * d + k] / n
    if cfg.target == TARGET_MULTINOMIAL:
        obj[1:] = 0.0
    return obj, grad


def sample_loss(int loss, double z, double y, double epsilon):
    """``(l(z, y), dl/dz)`` of one sample: for tests and the 'optimal' schedule's start."""
    cdef double dl
    cdef double l = loss_and_dloss(loss, z, y, epsilon, &dl)
    return l, dl
