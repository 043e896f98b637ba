"""Linear-model epoch kernel: one call trains one epoch without the GIL.

A model has K outputs (1 for regression and binary classification, one per class for
one-vs-rest and multinomial) stored in one flat parameter buffer of length
P = K * (n_features + 1): the K coefficient rows, then the K intercepts.

One update on a batch B of m rows (sample weights s_i, penalty R):
    w <- w - eta_t * ( (1/m) sum_{i in B} s_i dl/dz_i x_i + alpha * grad R(w) )

Determinism (results must not depend on n_jobs): a batch of m rows is cut into nch = min(ceil(m / CHUNK_ROWS),
MAX_CHUNKS) chunks, chunk c holding rows [c*m // nch, (c+1)*m // nch): boundaries that
depend on the batch size only, never on the thread count; each chunk's
partial gradient goes to a row of its own; rows are summed in chunk order. Which
thread computes a chunk (see "the epoch's team") never matters, so any thread count
gives the same bits.

Memory (linear SGD is bound by reading X, not by arithmetic): each row is read once per update. Its dot products, loss
derivative and gradient contribution are computed while it sits in L1, and rows a few
places ahead in the visiting order are prefetched, since a shuffled order defeats the
hardware prefetcher.
"""

from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport isfinite
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free

from _math cimport (loss_and_dloss, log_loss_and_dloss, softmax_inplace, dot, abs_sum,
                    LOSS_LOG, LOSS_HINGE)
from _optim cimport (OptimConfig, optimizer_step, l1_cumulative, running_average,
                     schedule_eta, read_optim_config)
from _runtime cimport cgd_now, cgd_prefetch, PyErr_CheckSignals, SIGNAL_CHECK_SECONDS

cdef extern from "Python.h":
    # PyErr_CheckSignals declared without exception propagation: the epoch's master
    # calls it inside a parallel region, which it must leave normally (the helpers
    # are told to go first); the pending exception is raised after the region.
    int check_signals "PyErr_CheckSignals"() noexcept
from _reduce cimport reduce_rows
from _openmp cimport (cgd_atomic_load, cgd_atomic_store, cgd_atomic_cas, cgd_cpu_relax,
                      cgd_thread_nap, cgd_flag_wait, cgd_flag_set)
from _team cimport (CpuRule, CpuWatch, cpu_rule_default, cpu_watch_start, cpu_watch,
                    cgd_thread_cpu, backoff_threads, backoff_record,
                    CPU_DROP, CPU_PROBE, CPU_BACK)

ctypedef Py_ssize_t intp_t

from cgd._codes cimport SOLVER_SGD, TARGET_REGRESSION, TARGET_OVR, TARGET_MULTINOMIAL
from cgd._codes cimport SCHEDULE_OPTIMAL

cdef enum:
    CHUNK_ROWS = 32
    MAX_CHUNKS = 64
    PREFETCH_ROWS = 8

cdef enum:
    STATUS_OK = 0
    STATUS_DIVERGED = 1
    STATUS_INTERRUPTED = 3   # a signal handler raised (Ctrl-C): its exception is pending

cdef Py_ssize_t DENSE_PREFETCH = 8


def _set_prefetch(Py_ssize_t k):
    global DENSE_PREFETCH
    DENSE_PREFETCH = k


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
    double intercept_decay   # factor of the intercept's learning rate (CSR input only)
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
    cfg.intercept_decay = c.get("intercept_decay", 1.0)
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


# ---------------------------------------------------------------- per-row steps
# What every update does with a row once its decision values are known, whichever way
# X is stored: the loss and its derivative, the clamped L2 decay, the intercept's step.
# The dense and CSR paths differ only in how they read x (its dot products, and adding
# a multiple of it to the coefficients).

cdef inline double sample_loss_and_dloss(int loss, double z, double y, double eps,
                                         double* dl) noexcept nogil:
    """loss_and_dloss, the log loss by its one-exp twin (same bits)."""
    if loss == LOSS_LOG:
        return log_loss_and_dloss(z, y, dl)
    return loss_and_dloss(loss, z, y, eps, dl)


cdef inline double output_dloss(EpochConfig* cfg, double zk, floating yi, floating si,
                                Py_ssize_t k, const floating* pos_w, const floating* neg_w,
                                double* obj) noexcept nogil:
    """s_i * class weight * dl/dz of output k (regression, one-vs-rest) at decision
    value zk; adds the sample's loss to obj[k] (weighted if the objective is)."""
    cdef double sk, dl, l
    cdef double tk = target_and_weight(cfg, yi, si, k, pos_w, neg_w, &sk)
    l = sample_loss_and_dloss(cfg.loss, zk, tk, cfg.epsilon, &dl)
    obj[k] += sk * l if cfg.weighted_objective else l
    return dl * sk


cdef inline Py_ssize_t multinomial_loss(EpochConfig* cfg, floating* z, Py_ssize_t K,
                                        floating yi, floating si, double* obj) noexcept nogil:
    """z: the K decision values on entry, their softmax on exit. Adds the sample's
    cross-entropy to obj[0]; returns its class c (see multinomial_dl)."""
    cdef Py_ssize_t c = <Py_ssize_t>yi
    cdef double zc = z[c]
    cdef double lse = softmax_inplace(z, K)
    obj[0] += (si if cfg.weighted_objective else 1.0) * (lse - zc)
    return c


cdef inline double multinomial_dl(const floating* p, Py_ssize_t k, Py_ssize_t c,
                                  floating si) noexcept nogil:
    """s_i * dl/dz_k of the cross-entropy, from the softmax p and the class c."""
    return si * (p[k] - (1.0 if k == c else 0.0))


cdef inline double l2_decay(EpochConfig* cfg, double eta) noexcept nogil:
    """The factor 1 - eta * l2 of a plain SGD step, never below 0 (a huge eta * alpha
    must not flip the weights' signs), as scikit-learn's."""
    cdef double decay = 1.0 - eta * cfg.l2
    return decay if decay > 0.0 else 0.0


cdef inline void intercept_step(EpochConfig* cfg, floating* b, double step) noexcept nogil:
    """b <- b - step * intercept_decay (1 for dense X), when there is an intercept."""
    if cfg.fit_intercept:
        b[0] = <floating>(b[0] - step * cfg.intercept_decay)


cdef inline void prefetch_sample(const floating* X, const floating* y, const floating* sw,
                                 Py_ssize_t d, Py_ssize_t i) noexcept nogil:
    """Ask for everything the update of sample i reads: its row, target and weight
    (in a shuffled order each is a cache miss of its own)."""
    cgd_prefetch(X + i * d, d * sizeof(floating))
    cgd_prefetch(y + i, sizeof(floating))
    cgd_prefetch(sw + i, sizeof(floating))


cdef struct Job:
    # What every thread of a dense epoch reads, fixed for the epoch. (X itself is passed
    # typed beside it: it picks the float32 or float64 version of the functions.)
    Py_ssize_t d, K, P
    Py_ssize_t batch_size
    Py_ssize_t n_order
    const intp_t* order         # (n_order,) visiting order
    const void* y               # (n_samples,) targets or class indices (floating)
    const void* sw              # (n_samples,) sample weights (floating)
    const void* ysw             # (2 n_order,) y and sw in visiting order, or NULL
    Py_ssize_t gather_from      # ysw from this position on is there only once
    long long* gathered         #   *gathered == 2 (see gather_rest)
    const void* params          # (P,) (floating)
    const void* pos_w           # (K,) (floating)
    const void* neg_w           # (K,) (floating)
    const unsigned char* active # (K,)
    EpochConfig* cfg


cdef inline void job_init(Job* job, Py_ssize_t d, Py_ssize_t K, Py_ssize_t batch_size,
                          const intp_t[::1] order, const floating[::1] y,
                          const floating[::1] sample_weight, const void* ysw,
                          const floating[::1] params, const floating[::1] pos_weight,
                          const floating[::1] neg_weight, const unsigned char[::1] active,
                          EpochConfig* cfg) noexcept:
    job.d, job.K, job.P = d, K, K * (d + 1)
    job.batch_size = batch_size
    job.n_order = order.shape[0]
    job.order = &order[0]
    job.y = &y[0]
    job.sw = &sample_weight[0]
    job.ysw = ysw
    job.gather_from = job.n_order
    job.gathered = NULL
    job.params = &params[0]
    job.pos_w = &pos_weight[0]
    job.neg_w = &neg_weight[0]
    job.active = &active[0]
    job.cfg = cfg


cdef void chunk_gradient(
    Job* job,
    const floating* X,          # IN  (n_samples, d) row-major
    Py_ssize_t p0,              # IN  first position in `order` of this chunk
    Py_ssize_t p1,              # IN  one past its last position
    Py_ssize_t q0,              # IN  the positions the caller visits next, [q0, q1): their
    Py_ssize_t q1,              #     rows are prefetched while this chunk ends
    bint warm,                  # IN  ask for this chunk's first rows first (nobody has)
    floating* grad,             # OUT (P,) sum over the chunk of s_i dl/dz x_i (intercepts: of s_i dl/dz)
    double* obj,                # OUT (K,) sum over the chunk of s_i l_i (multinomial: obj[0])
    floating* z,                # scratch (K,)
) noexcept nogil:
    cdef Py_ssize_t p, i, k, j, c = 0, d = job.d, K = job.K, P = job.P
    cdef const intp_t* order = job.order
    cdef const floating* y = <const floating*>job.y
    cdef const floating* sw = <const floating*>job.sw
    cdef const floating* ysw = <const floating*>job.ysw
    cdef const floating* params = <const floating*>job.params
    if ysw != NULL and p1 > job.gather_from and cgd_atomic_load(job.gathered) != 2:
        ysw = NULL  # (not gathered yet: read y and sample_weight where they are)
    cdef const floating* pos_w = <const floating*>job.pos_w
    cdef const floating* neg_w = <const floating*>job.neg_w
    cdef const unsigned char* active = job.active
    cdef EpochConfig* cfg = job.cfg
    cdef const floating* x
    cdef floating* g
    cdef double dl
    memset(grad, 0, P * sizeof(floating))
    memset(obj, 0, K * sizeof(double))
    cdef Py_ssize_t r
    cdef floating yi, si
    if warm:
        for p in range(p0, min(p0 + DENSE_PREFETCH, p1)):
            if ysw != NULL:
                cgd_prefetch(X + order[p] * d, d * sizeof(floating))
            else:
                prefetch_sample(X, y, sw, d, order[p])
    for p in range(p0, p1):
        r = p + DENSE_PREFETCH
        if r >= p1:
            r = q0 + (r - p1)
            if r >= q1:
                r = -1
        if r >= 0:
            if ysw != NULL:
                cgd_prefetch(X + order[r] * d, d * sizeof(floating))
            else:
                prefetch_sample(X, y, sw, d, order[r])
        i = order[p]
        x = X + i * d
        if ysw != NULL:
            yi = ysw[2 * p]
            si = ysw[2 * p + 1]
        else:
            yi = y[i]
            si = sw[i]
        if cfg.target == TARGET_MULTINOMIAL:
            for k in range(K):
                z[k] = dot(params + k * d, x, d) + params[K * d + k]
            c = multinomial_loss(cfg, z, K, yi, si, obj)
        for k in range(K):
            if cfg.target == TARGET_MULTINOMIAL:
                dl = multinomial_dl(z, k, c, si)
            elif active[k]:
                dl = output_dloss(cfg, dot(params + k * d, x, d) + params[K * d + k], yi,
                                  si, k, pos_w, neg_w, obj)
            else:
                continue
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
    double* obj, floating* z, SparseOut* so,
) noexcept nogil:
    """Plain SGD on one sample (batch_size=1, no momentum): the dot, the loss derivative
    and the update w <- (1 - eta*l2) w - eta*dl*x.

    Without ``so`` the update is one pass over the row. With ``so`` (one per output:
    see the weight scale of the CSR kernel below, here with a dense row) the
    coefficients are w = scale * v: the decay multiplies the scale alone, and the step,
    when the loss has a gradient at all (a hinge loss mostly has none once a sample is
    on the right side of the margin), is one pass over v that also sums v_j^2 for the
    objective's L2 term, which would otherwise cost a pass of its own at every sample."""
    cdef Py_ssize_t k, c = 0
    cdef double step, decay, s
    if cfg.target == TARGET_MULTINOMIAL:
        for k in range(K):
            s = 1.0 if so == NULL else so[k].scale
            z[k] = <floating>(s * dot(params + k * d, x, d) + params[K * d + k])
        c = multinomial_loss(cfg, z, K, yi, si, obj)
    for k in range(K):
        if cfg.target == TARGET_MULTINOMIAL:
            step = eta[k] * multinomial_dl(z, k, c, si)
        elif active[k]:
            s = 1.0 if so == NULL else so[k].scale
            step = eta[k] * output_dloss(cfg, s * dot(params + k * d, x, d)
                                         + params[K * d + k], yi, si, k, pos_w, neg_w, obj)
        else:
            continue
        decay = l2_decay(cfg, eta[k])
        if so == NULL:
            dense_step(params + k * d, x, d, decay, step)
        else:
            dense_scaled_step(&so[k], decay, step, params + k * d, x, d)
        intercept_step(cfg, params + K * d + k, step)


cdef inline void dense_step(floating* w, const floating* x, Py_ssize_t d, double decay,
                            double step) noexcept nogil:
    """w <- decay * w - step * x."""
    cdef Py_ssize_t j
    if decay != 1.0:
        for j in range(d):
            w[j] = <floating>(w[j] * decay - step * x[j])
    elif step != 0.0:
        for j in range(d):
            w[j] = <floating>(w[j] - step * x[j])


cdef inline double axpy_sum_squares(floating* v, const floating* x, Py_ssize_t d,
                                    double c) noexcept nogil:
    """v <- v + c * x; returns sum_j v_j^2 of the new v, summed in double with four
    independent accumulators (so that the loop vectorises without -ffast-math)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef double a0, a1, a2, a3
    cdef Py_ssize_t j, d4 = d - d % 4
    for j in range(0, d4, 4):
        a0 = <floating>(v[j] + c * x[j])
        a1 = <floating>(v[j + 1] + c * x[j + 1])
        a2 = <floating>(v[j + 2] + c * x[j + 2])
        a3 = <floating>(v[j + 3] + c * x[j + 3])
        v[j] = <floating>a0
        v[j + 1] = <floating>a1
        v[j + 2] = <floating>a2
        v[j + 3] = <floating>a3
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
    for j in range(d4, d):
        a0 = <floating>(v[j] + c * x[j])
        v[j] = <floating>a0
        s0 += a0 * a0
    return (s0 + s1) + (s2 + s3)


# ---------------------------------------------------------------- per-sample epochs
# A row's dot products with several coefficient rows at once. dot() (in _math.pxd) sums
# a row in four accumulators, so a 64-wide dot is a chain of 16 dependent additions:
# one output at a time, per-sample SGD waits on that chain. Here each output keeps
# dot()'s own accumulators and order (accumulator r sums w_j x_j for j = r mod 4 up to
# d - d % 4, in increasing j; the last d % 4 products go to accumulator 0; the result is
# (s_0 + s_1) + (s_2 + s_3)), so every value has dot()'s bits, but several outputs run
# side by side, in groups of as even sizes as allow at most G_MAX each: independent
# chains that fill the pipelines (an addition's result is needed 3-4 cycles after it
# starts, and two can start per cycle), x loaded once for the group. With AVX (chosen at
# run time; never FMA, so nothing is contracted) one 4-double register holds an output's
# four accumulators and a group has up to 8; with SSE2, two registers of 2 doubles (or
# one of 4 floats), up to 4 (8 for floats): what the 16 vector registers hold.
cdef extern from *:
    """
    #if (defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)) \
        && !defined(CGD_ROWDOTS_NO_SIMD)   /* (the latter to test the portable path) */
    #include <emmintrin.h>
    #define CGD_ROWDOTS_SSE2 1
    #else
    #define CGD_ROWDOTS_SSE2 0
    #endif
    #if CGD_AVX_DISPATCH
    #include <immintrin.h>
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    #define CGD_UNROLL _Pragma("GCC unroll 8")
    #elif defined(__clang__)
    #define CGD_UNROLL _Pragma("unroll")
    #else
    #define CGD_UNROLL
    #endif

    /* the tail products into accumulator 0, then (s0 + s1) + (s2 + s3) */
    #define CGD_DOT_FINISH(T, s, w, x, d, d4, out) {                             \
        T s0_ = s[0]; Py_ssize_t j_;                                             \
        for (j_ = d4; j_ < d; j_++) s0_ = s0_ + w[j_] * x[j_];                   \
        out = (s0_ + s[1]) + (s[2] + s[3]); }

    /* one group of G outputs; w[r] is output r's coefficient row */
    #define CGD_GROUP_SCALAR(T, G)                                               \
    static void cgd_group_##T##_scalar_##G(const T* const* w, const T* x,          \
                                           Py_ssize_t d, Py_ssize_t d4, T* out) {  \
        T s[G][4]; int r; Py_ssize_t j;                                          \
        CGD_UNROLL for (r = 0; r < G; r++) s[r][0] = s[r][1] = s[r][2] = s[r][3] = 0; \
        for (j = 0; j < d4; j += 4) {                                            \
            CGD_UNROLL for (r = 0; r < G; r++) {                                 \
                s[r][0] = s[r][0] + w[r][j] * x[j];                              \
                s[r][1] = s[r][1] + w[r][j + 1] * x[j + 1];                      \
                s[r][2] = s[r][2] + w[r][j + 2] * x[j + 2];                      \
                s[r][3] = s[r][3] + w[r][j + 3] * x[j + 3];                      \
            }                                                                    \
        }                                                                        \
        CGD_UNROLL for (r = 0; r < G; r++) CGD_DOT_FINISH(T, s[r], w[r], x, d, d4, out[r]) \
    }

    #if CGD_ROWDOTS_SSE2
    #define CGD_GROUP_SSE2_F64(G)                                                \
    static void cgd_group_double_sse2_##G(const double* const* w, const double* x,  \
                                          Py_ssize_t d, Py_ssize_t d4, double* out) { \
        __m128d p[G], q[G]; double s[4]; int r; Py_ssize_t j;                    \
        CGD_UNROLL for (r = 0; r < G; r++) p[r] = q[r] = _mm_setzero_pd();       \
        for (j = 0; j < d4; j += 4) {                                            \
            __m128d xl = _mm_loadu_pd(x + j), xh = _mm_loadu_pd(x + j + 2);      \
            CGD_UNROLL for (r = 0; r < G; r++) {                                 \
                p[r] = _mm_add_pd(p[r], _mm_mul_pd(_mm_loadu_pd(w[r] + j), xl)); \
                q[r] = _mm_add_pd(q[r], _mm_mul_pd(_mm_loadu_pd(w[r] + j + 2), xh)); \
            }                                                                    \
        }                                                                        \
        CGD_UNROLL for (r = 0; r < G; r++) {                                     \
            _mm_storeu_pd(s, p[r]); _mm_storeu_pd(s + 2, q[r]);                  \
            CGD_DOT_FINISH(double, s, w[r], x, d, d4, out[r])                    \
        }                                                                        \
    }
    #define CGD_GROUP_SSE2_F32(G)                                                \
    static void cgd_group_float_sse2_##G(const float* const* w, const float* x,     \
                                         Py_ssize_t d, Py_ssize_t d4, float* out) {  \
        __m128 p[G]; float s[4]; int r; Py_ssize_t j;                            \
        CGD_UNROLL for (r = 0; r < G; r++) p[r] = _mm_setzero_ps();              \
        for (j = 0; j < d4; j += 4) {                                            \
            __m128 xv = _mm_loadu_ps(x + j);                                     \
            CGD_UNROLL for (r = 0; r < G; r++)                                   \
                p[r] = _mm_add_ps(p[r], _mm_mul_ps(_mm_loadu_ps(w[r] + j), xv)); \
        }                                                                        \
        CGD_UNROLL for (r = 0; r < G; r++) {                                     \
            _mm_storeu_ps(s, p[r]); CGD_DOT_FINISH(float, s, w[r], x, d, d4, out[r]) \
        }                                                                        \
    }
    CGD_GROUP_SSE2_F64(1) CGD_GROUP_SSE2_F64(2) CGD_GROUP_SSE2_F64(3) CGD_GROUP_SSE2_F64(4)
    CGD_GROUP_SSE2_F32(1) CGD_GROUP_SSE2_F32(2) CGD_GROUP_SSE2_F32(3) CGD_GROUP_SSE2_F32(4)
    CGD_GROUP_SSE2_F32(5) CGD_GROUP_SSE2_F32(6) CGD_GROUP_SSE2_F32(7) CGD_GROUP_SSE2_F32(8)
    #define CGD_F64_BASE_MAX 4
    #define CGD_F32_BASE_MAX 8
    #define CGD_F64_BASE sse2
    #define CGD_F32_BASE sse2
    #else
    CGD_GROUP_SCALAR(double, 1) CGD_GROUP_SCALAR(double, 2)
    CGD_GROUP_SCALAR(float, 1) CGD_GROUP_SCALAR(float, 2)
    #define CGD_F64_BASE_MAX 2
    #define CGD_F32_BASE_MAX 2
    #define CGD_F64_BASE scalar
    #define CGD_F32_BASE scalar
    #endif

    #if CGD_AVX_DISPATCH
    #define CGD_GROUP_AVX_F64(G)                                                 \
    CGD_TARGET_AVX static void cgd_group_double_avx_##G(const double* const* w,     \
            const double* x, Py_ssize_t d, Py_ssize_t d4, double* out) {          \
        __m256d p[G]; double s[4]; int r; Py_ssize_t j;                          \
        CGD_UNROLL for (r = 0; r < G; r++) p[r] = _mm256_setzero_pd();           \
        for (j = 0; j < d4; j += 4) {                                            \
            __m256d xv = _mm256_loadu_pd(x + j);                                 \
            CGD_UNROLL for (r = 0; r < G; r++)                                   \
                p[r] = _mm256_add_pd(p[r], _mm256_mul_pd(_mm256_loadu_pd(w[r] + j), xv)); \
        }                                                                        \
        CGD_UNROLL for (r = 0; r < G; r++) {                                     \
            _mm256_storeu_pd(s, p[r]); CGD_DOT_FINISH(double, s, w[r], x, d, d4, out[r]) \
        }                                                                        \
    }
    CGD_GROUP_AVX_F64(1) CGD_GROUP_AVX_F64(2) CGD_GROUP_AVX_F64(3) CGD_GROUP_AVX_F64(4)
    CGD_GROUP_AVX_F64(5) CGD_GROUP_AVX_F64(6) CGD_GROUP_AVX_F64(7) CGD_GROUP_AVX_F64(8)
    #endif

    #define CGD_CAT4_(a, b, c, e) a##b##c##e
    #define CGD_GROUP_FN(T, ISA, G) CGD_CAT4_(cgd_group_##T##_, ISA, _, G)

    /* n outputs into ceil(n / gmax) groups of sizes that differ by at most one */
    #define CGD_ROWDOTS_BODY(T, gmax, CALL)                                      \
        const T* w[8];                                                           \
        Py_ssize_t d4 = d - d % 4, a = 0, g, r, size;                            \
        Py_ssize_t ng = (n + gmax - 1) / gmax;                                   \
        for (g = 0; g < ng; g++) {                                               \
            size = n / ng + (g < n % ng);                                        \
            for (r = 0; r < size; r++) w[r] = W + rows[a + r] * d;               \
            CALL                                                                 \
            a += size;                                                           \
        }

    #define CGD_SWITCH8(T, ISA) switch (size) {                                  \
        case 1: CGD_GROUP_FN(T, ISA, 1)(w, x, d, d4, out + a); break;            \
        case 2: CGD_GROUP_FN(T, ISA, 2)(w, x, d, d4, out + a); break;            \
        case 3: CGD_GROUP_FN(T, ISA, 3)(w, x, d, d4, out + a); break;            \
        case 4: CGD_GROUP_FN(T, ISA, 4)(w, x, d, d4, out + a); break;            \
        case 5: CGD_GROUP_FN(T, ISA, 5)(w, x, d, d4, out + a); break;            \
        case 6: CGD_GROUP_FN(T, ISA, 6)(w, x, d, d4, out + a); break;            \
        case 7: CGD_GROUP_FN(T, ISA, 7)(w, x, d, d4, out + a); break;            \
        default: CGD_GROUP_FN(T, ISA, 8)(w, x, d, d4, out + a); break; }
    #define CGD_SWITCH4(T, ISA) switch (size) {                                  \
        case 1: CGD_GROUP_FN(T, ISA, 1)(w, x, d, d4, out + a); break;            \
        case 2: CGD_GROUP_FN(T, ISA, 2)(w, x, d, d4, out + a); break;            \
        case 3: CGD_GROUP_FN(T, ISA, 3)(w, x, d, d4, out + a); break;            \
        default: CGD_GROUP_FN(T, ISA, 4)(w, x, d, d4, out + a); break; }
    #define CGD_SWITCH2(T, ISA) switch (size) {                                  \
        case 1: CGD_GROUP_FN(T, ISA, 1)(w, x, d, d4, out + a); break;            \
        default: CGD_GROUP_FN(T, ISA, 2)(w, x, d, d4, out + a); break; }
    #define CGD_SWITCH_(T, ISA, gmax) CGD_SWITCH##gmax(T, ISA)
    #define CGD_SWITCH(T, ISA, gmax) CGD_SWITCH_(T, ISA, gmax)

    static void cgd_rowdots_f64_base(const double* W, const Py_ssize_t* rows, Py_ssize_t n,
                                     const double* x, Py_ssize_t d, double* out) {
        CGD_ROWDOTS_BODY(double, CGD_F64_BASE_MAX, CGD_SWITCH(double, CGD_F64_BASE, CGD_F64_BASE_MAX))
    }
    static void cgd_rowdots_f32(const float* W, const Py_ssize_t* rows, Py_ssize_t n,
                                const float* x, Py_ssize_t d, float* out) {
        CGD_ROWDOTS_BODY(float, CGD_F32_BASE_MAX, CGD_SWITCH(float, CGD_F32_BASE, CGD_F32_BASE_MAX))
    }
    #if CGD_AVX_DISPATCH
    CGD_TARGET_AVX static void cgd_rowdots_f64_avx(const double* W, const Py_ssize_t* rows,
                                                   Py_ssize_t n, const double* x,
                                                   Py_ssize_t d, double* out) {
        CGD_ROWDOTS_BODY(double, 8, CGD_SWITCH(double, avx, 8))
    }
    #endif
    static int cgd_rowdots_avx_allowed = 1;   /* tests turn it off to check the base path */
    static void cgd_rowdots_f64(const double* W, const Py_ssize_t* rows, Py_ssize_t n,
                                const double* x, Py_ssize_t d, double* out) {
    #if CGD_AVX_DISPATCH
        if (cgd_rowdots_avx_allowed && cgd_use_avx()) {
            cgd_rowdots_f64_avx(W, rows, n, x, d, out);
            return;
        }
    #endif
        cgd_rowdots_f64_base(W, rows, n, x, d, out);
    }
    """
    int cgd_rowdots_avx_allowed
    void cgd_rowdots_f64(const double* W, const Py_ssize_t* rows, Py_ssize_t n,
                         const double* x, Py_ssize_t d, double* out) noexcept nogil
    void cgd_rowdots_f32(const float* W, const Py_ssize_t* rows, Py_ssize_t n,
                         const float* x, Py_ssize_t d, float* out) noexcept nogil


cdef inline void row_dots(const floating* W, const Py_ssize_t* rows, Py_ssize_t n,
                          const floating* x, Py_ssize_t d, floating* out) noexcept nogil:
    """out[a] = dot(W + rows[a] * d, x, d) for a < n, with dot()'s bits (see above)."""
    if floating is double:
        cgd_rowdots_f64(W, rows, n, x, d, out)
    else:
        cgd_rowdots_f32(W, rows, n, x, d, out)


def _set_rowdots_avx(bint allowed):
    """Let row_dots use AVX where the CPU has it (the default), or not: for the tests,
    which check both builds against dot()."""
    global cgd_rowdots_avx_allowed
    cgd_rowdots_avx_allowed = allowed


def _row_dots(const floating[:, ::1] W, const intp_t[::1] rows, const floating[::1] x):
    """row_dots of x with the rows of W listed in rows, as a NumPy array (for tests)."""
    import numpy as np
    out = np.empty(rows.shape[0], dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] o = out
    if W.shape[1] != x.shape[0]:
        raise ValueError("W and x do not match")
    for r in rows:
        if not 0 <= r < W.shape[0]:
            raise ValueError("row out of range")
    if rows.shape[0] > 0:
        row_dots(&W[0, 0], &rows[0], rows.shape[0], &x[0], x.shape[0], &o[0])
    return out


def _dot(const floating[::1] a, const floating[::1] b):
    """dot() of _math.pxd (for tests)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError("a and b do not match")
    if a.shape[0] == 0:
        return 0.0
    return dot(&a[0], &b[0], a.shape[0])


# Plain per-sample SGD runs per_sample_epoch where it applies (tests switch it off to
# compare with the general loop, which takes sgd_single_row one row at a time).
cdef bint PER_SAMPLE_LOOP = True


def _set_per_sample_loop(bint on):
    global PER_SAMPLE_LOOP
    PER_SAMPLE_LOOP = on


cdef inline const floating* next_row(
    const floating[:, ::1] X, const floating[::1] y, const floating[::1] sample_weight,
    const floating* ysw, const intp_t[::1] order, Py_ssize_t p, floating* yj,
    floating* sj) noexcept nogil:
    """Row order[p] of X, its target and weight; asks for the row DENSE_PREFETCH places
    ahead (with its target and weight, unless those were gathered in visiting order)."""
    cdef Py_ssize_t n_order = order.shape[0], d = X.shape[1], i = order[p]
    if ysw != NULL:
        if p + DENSE_PREFETCH < n_order:
            cgd_prefetch(&X[order[p + DENSE_PREFETCH], 0], d * sizeof(floating))
        yj[0] = ysw[2 * p]
        sj[0] = ysw[2 * p + 1]
    else:
        if p + DENSE_PREFETCH < n_order:
            prefetch_sample(&X[0, 0], &y[0], &sample_weight[0], d, order[p + DENSE_PREFETCH])
        yj[0] = y[i]
        sj[0] = sample_weight[i]
    return &X[i, 0]


cdef inline double output_loss(EpochConfig* cfg, double zk, floating yi, floating si,
                               Py_ssize_t k, const floating* pos_w, const floating* neg_w,
                               double* step_dl) noexcept nogil:
    """output_dloss without the objective array: returns the loss entry it would add (0
    plus the loss, weighted if the objective is) and stores s_i * class weight * dl/dz in
    step_dl[0]. The hinge loss written out (loss_and_dloss's arithmetic: dl/dz is -y or
    0, which the clip leaves alone)."""
    cdef double sk, dl, l, m
    cdef double tk = target_and_weight(cfg, yi, si, k, pos_w, neg_w, &sk)
    if cfg.loss == LOSS_HINGE:
        m = tk * zk
        if m <= 1.0:
            l = 1.0 - m
            dl = -tk
        else:
            l = 0.0
            dl = 0.0
    else:
        l = sample_loss_and_dloss(cfg.loss, zk, tk, cfg.epsilon, &dl)
    step_dl[0] = dl * sk
    return 0.0 + (sk * l if cfg.weighted_objective else l)


cdef Py_ssize_t per_sample_epoch(
    const floating[:, ::1] X, const floating[::1] y, const floating[::1] sample_weight,
    const floating* ysw, const intp_t[::1] order, const floating* pos_w,
    const floating* neg_w, const unsigned char* active, const double[::1] eta_base,
    floating* prm, SparseOut* so, double* reg, floating* z, double[::1] obj_out,
    EpochConfig* cfg, double* t_io, int* status, double* work, double* next_clock,
    double* last_check,
) noexcept nogil:
    """dense_epoch's loop for plain per-sample SGD with the coefficients as scale * v
    (``so``: no averaging, no L1) and one output per problem (regression, one-vs-rest):
    the same arithmetic as sgd_single_row and the loop around it, in the same order for
    each output, so the same bits, with less done per row:

    - the outputs' dot products are computed together (row_dots); an output's update
      touches its own coefficients only, so its dot never depends on another's step;
    - when every output has the same learning rate (always with the 'optimal' schedule,
      which reads no base rate), the rate and its decay are computed once per row, and
      the outputs, whose scales all start the epoch at 1, share one scale: the same
      multiplications give each the same value, folded in at the same row; the penalty
      0.5 l2 scale^2 sum v_j^2 then shares its first three factors;
    - the objective is added up as record_objective does, without passes of its own.

    Returns the number of rows done: all of them, or 0 (out of memory) to leave the
    epoch to the general loop."""
    cdef Py_ssize_t n_order = order.shape[0], d = X.shape[1], K = eta_base.shape[0]
    cdef Py_ssize_t p, a, k, n_act = 0
    cdef Py_ssize_t* act = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t))
    cdef double* steps = <double*>malloc(K * sizeof(double))
    cdef double t = t_io[0], e = 0.0, decay = 1.0, scale = 1.0, step, lk, lsum, rsum, c
    cdef bint same_eta = True, has_b = cfg.fit_intercept
    cdef const floating* x
    cdef floating* b = prm + K * d
    cdef floating yj, sj
    if act == NULL or steps == NULL:
        free(act)
        free(steps)
        return 0
    for k in range(K):
        if active[k]:
            act[n_act] = k
            n_act += 1
    # (every scale starts the epoch at 1: dense_epoch's set-up)
    same_eta = n_act > 0
    for a in range(n_act):
        if eta_base[act[a]] != eta_base[act[0]] and cfg.schedule != SCHEDULE_OPTIMAL:
            same_eta = False
    for p in range(n_order):
        x = next_row(X, y, sample_weight, ysw, order, p, &yj, &sj)
        row_dots(prm, act, n_act, x, d, z)
        lsum = 0.0
        rsum = 0.0
        if same_eta:
            e = schedule_eta(cfg.schedule, eta_base[act[0]], cfg.alpha, t, cfg.power_t,
                             cfg.optimal_init)
            decay = l2_decay(cfg, e)
            for a in range(n_act):
                k = act[a]
                lk = output_loss(cfg, scale * z[a] + b[k], yj, sj, k, pos_w, neg_w, &step)
                steps[a] = e * step
                # record_objective's terms: the loss at the weights before the step, and
                # the penalty at those weights
                obj_out[k] += lk + reg[k]
                lsum += lk
                rsum += reg[k]
            if decay != 1.0:
                scale *= decay
                if scale < SCALE_FOLD:
                    for a in range(n_act):
                        so[act[a]].scale = scale
                        fold_output(&so[act[a]], prm + act[a] * d, 1, NULL, d, False, True)
                    scale = 1.0
            c = 0.5 * cfg.l2 * scale * scale
            for a in range(n_act):
                k = act[a]
                step = steps[a]
                if step != 0.0:
                    so[k].sq = axpy_sum_squares(prm + k * d, x, d, -step / scale)
                if has_b:  # (even for a zero step: -0.0 - -0.0 is +0.0)
                    b[k] = <floating>(b[k] - step * cfg.intercept_decay)
                reg[k] = c * so[k].sq
        else:
            for a in range(n_act):
                k = act[a]
                e = schedule_eta(cfg.schedule, eta_base[k], cfg.alpha, t, cfg.power_t,
                                 cfg.optimal_init)
                decay = l2_decay(cfg, e)
                lk = output_loss(cfg, so[k].scale * z[a] + b[k], yj, sj, k, pos_w, neg_w,
                                 &step)
                step = e * step
                obj_out[k] += lk + reg[k]
                lsum += lk
                rsum += reg[k]
                dense_scaled_step(&so[k], decay, step, prm + k * d, x, d)
                intercept_step(cfg, b + k, step)
                reg[k] = 0.5 * cfg.l2 * so[k].scale * so[k].scale * so[k].sq
        t += 1.0
        if not isfinite(lsum + rsum):
            status[0] = STATUS_DIVERGED
            break
        if signal_check_due(work, next_clock, last_check, K * d):
            with gil:
                if check_signals() != 0:
                    status[0] = STATUS_INTERRUPTED
            if status[0] != STATUS_OK:
                break
    if same_eta:
        for a in range(n_act):
            so[act[a]].scale = scale
    free(act)
    free(steps)
    t_io[0] = t
    return n_order


# ---------------------------------------------------------------- per-batch steps
# What the dense and CSR epoch loops share around a batch's update.

cdef inline void batch_rates(EpochConfig* cfg, const double[::1] eta_base, double* eta,
                             Py_ssize_t K, double t) noexcept nogil:
    """The learning rate of update number t for every output."""
    cdef Py_ssize_t k
    for k in range(K):
        eta[k] = schedule_eta(cfg.schedule, eta_base[k], cfg.alpha, t, cfg.power_t,
                              cfg.optimal_init)


cdef inline double record_objective(bint multinomial, const unsigned char* active,
                                    Py_ssize_t K, Py_ssize_t mb, const double* losses,
                                    const double* reg, double[::1] out) noexcept nogil:
    """Add a batch's objective to out: its losses at the weights before the update plus
    the penalty at those weights once per sample (as scikit-learn), per output (the
    multinomial one in out[0]). Returns the batch's total (for the divergence check)."""
    cdef Py_ssize_t k
    cdef double reg_sum = 0.0, total = 0.0
    for k in range(K):
        if multinomial or active[k]:
            reg_sum += reg[k]
    if multinomial:
        total = losses[0] + mb * reg_sum
        out[0] += total
        return total
    for k in range(K):
        if active[k]:
            out[k] += losses[k] + mb * reg[k]
            total += losses[k]
    return total + mb * reg_sum


cdef inline bint signal_check_due(double* work, double* next_clock, double* last_check,
                                  double amount) noexcept nogil:
    """Count amount of work; True when a look at pending signals (Ctrl-C) is due.
    Reading the clock costs ~20 ns: look at it every ~1e6 multiply-adds."""
    work[0] += amount
    if work[0] < next_clock[0]:
        return False
    next_clock[0] = work[0] + 1e6
    if cgd_now() - last_check[0] < SIGNAL_CHECK_SECONDS:
        return False
    last_check[0] = cgd_now()
    return True


cdef inline Py_ssize_t n_chunks_for(Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t nch = (m + CHUNK_ROWS - 1) // CHUNK_ROWS
    return nch if nch < MAX_CHUNKS else MAX_CHUNKS


# ---------------------------------------------------------------- the epoch's team
# A dense epoch with n_jobs > 1 runs in ONE parallel region: thread 0 (the master) runs
# the epoch loop; the others (helpers) wait for batches. For each batch the master
# publishes its description (where it starts, its size) under a new generation number;
# thread h of the nt threads computes the fixed share chunk_bounds(nch, nt, h) of the
# batch's chunks (the master the first one), into rows of its own, and counts each
# chunk done in a progress word of its own cache line. The master computes its share,
# waits for each helper's count, sums all chunks in chunk order, and steps alone. No
# fork / join per batch, and per batch one cache line goes from the master to each
# helper and one back, so small batches (2 chunks and up) go parallel too. Which thread
# computes a chunk never changes its bits: chunk boundaries and the summation order
# depend on the batch size only.
#
# A thread's chunks are consecutive positions of the visiting order, so it prefetches
# across its chunks as one pass does, and at the end of its share it asks for the first
# rows of its share of the next batch (known in advance: the next batch's size and the
# thread count fix it), so that a batch never starts on cold rows; and while it waits
# for the other threads (a helper for the next batch, the master for the helpers'
# chunks) it asks for the rest of that share's rows, one row per look at the word it
# waits on: reading rows is what bounds the epoch, and the wait would otherwise be lost.
# The targets and weights in visiting order (gather_targets) are gathered by the team
# too: the master the first half of the order, a helper the rest.
#
# Two threads are not always faster (a loaded machine, a slow second core). A helper
# whose core is taken by another process would hold up every batch, so the master, when
# a helper keeps it waiting too long, takes over the chunks that helper has not counted
# yet (one compare-and-swap on the helper's progress word; the late helper's next count
# fails and it drops its result) and computes them itself. And the master measures rows
# per second in windows of TEAM_WINDOW seconds, first with the team, then alone, and
# keeps the team only while it is faster by TEAM_GAIN; otherwise the helpers leave and
# the rest of the epoch runs on one thread. And it watches its own thread's CPU time
# (the CPU-share rule of _team.pxd): a master on its CPU for under 80% of a window of
# 2 ms or more shares the cores with more threads than there are cores, and the helper
# takes the master's turns; the team then leaves at once in a short epoch, or after the
# master has timed itself alone faster in a longer one. An epoch whose team left, by
# this rule or as slower, makes the next 1, 2, 4, ... 16 epochs of the fit run on one
# thread (the back-off). The results are the same either way.

cdef enum:
    MODE_SOLO = 0        # one thread for the rest of the epoch
    MODE_PROBE_TEAM = 1  # measuring the team
    MODE_PROBE_SOLO = 2  # measuring the master alone (helpers idle)
    MODE_TEAM = 3        # the team, measured faster
    MODE_WARM_UP = 4     # the team's first window (threads waking up): not measured
    MODE_CPU_PROBE = 5   # the master alone, timing itself: it was off its CPU too often

cdef extern from *:
    """
    /* A helper's progress word, its chunks counted from the start of its share:
       generation << 32 | TAKEN (the master took over the chunks not done) |
       limit << 16 (the helper's share ends there: the master takes the rest) |
       next << 8 (the first chunk nobody has begun) | done (chunks finished). */
    #define CGD_GEN_SHIFT 32
    #define CGD_TAKEN (1LL << 24)
    #define CGD_LIMIT_ONE (1LL << 16)
    #define CGD_NEXT_ONE (1LL << 8)
    #define CGD_FIELD(st, shift) (((st) >> (shift)) & 0xffLL)
    /* The master's post: the generation of the batch on offer, or this: leave. */
    #define CGD_POST_EXIT (-1LL)
    /* Busy-wait iterations (a pause each) before a waiting helper starts napping. */
    #define CGD_SPIN_LIMIT 4000
    /* The master takes over a helper's chunks after waiting this long plus four
       times its own last chunk's time. (A held-up helper is common even on an idle
       virtual machine, whose host takes a virtual core away for milliseconds every
       few milliseconds: so it costs little, and it alone never drops the team.) */
    #define CGD_TAKEOVER_SECONDS 20e-6
    """
    long long GEN_SHIFT "CGD_GEN_SHIFT"
    long long TAKEN "CGD_TAKEN"
    long long LIMIT_ONE "CGD_LIMIT_ONE"
    long long NEXT_ONE "CGD_NEXT_ONE"
    long long st_field "CGD_FIELD"(long long st, int shift) noexcept nogil
    long long POST_EXIT "CGD_POST_EXIT"
    int SPIN_LIMIT "CGD_SPIN_LIMIT"
    double TAKEOVER_SECONDS "CGD_TAKEOVER_SECONDS"

# Seconds per measuring window, and the speed-up the team must show to be kept.
cdef double TEAM_WINDOW = 4e-3
cdef double TEAM_GAIN = 1.05
# The CPU-share rule's figures (see _team.pxd).
cdef CpuRule CPU_RULE = cpu_rule_default()


def set_cpu_rule(double share, double window, double gain, double short_epoch):
    """For tests: the CPU-share rule's share of the wall time the master must spend on
    its CPU, the shortest window (seconds) it is measured over, the speed-up over the
    master alone the team must then show to stay, and the epoch length (seconds) under
    which the team leaves without that timing (share above 1 and window 0: the rule
    fires at the first batch); returns the previous four."""
    global CPU_RULE
    old = (CPU_RULE.share, CPU_RULE.window, CPU_RULE.gain, CPU_RULE.short_epoch)
    CPU_RULE.share = share
    CPU_RULE.window = window
    CPU_RULE.gain = gain
    CPU_RULE.short_epoch = short_epoch
    return old


def thread_cpu_time():
    """The calling thread's CPU time in seconds, as the CPU-share rule reads it, or -1
    where it is not read (the rule is then off)."""
    return cgd_thread_cpu()


def set_team_window(double seconds):
    """Set the team's measuring window (seconds); returns the previous one. For tests:
    0 switches between the team and one thread every two batches, and no epoch is run
    on one thread because an earlier one found the team slower."""
    global TEAM_WINDOW
    old = TEAM_WINDOW
    TEAM_WINDOW = seconds
    return old


# Tests: take over every helper's share not yet counted as soon as the master waits, and
# keep the team after doing so (the races of the takeover, at every batch).
cdef bint TAKEOVER_EAGER = False


def set_takeover_eager(bint eager):
    """For tests: the master takes over helpers' chunks at once (see the team's notes).
    Returns the previous setting."""
    global TAKEOVER_EAGER
    old = TAKEOVER_EAGER
    TAKEOVER_EAGER = eager
    return old


# Where the team's time goes (profiling): off unless asked for; then each epoch's
# config["team_stats"] has the seconds each thread spent computing and waiting.
cdef bint TEAM_STATS = False


def set_team_stats(bint on):
    """Record the team's time split in config["team_stats"]; returns the previous
    setting."""
    global TEAM_STATS
    old = TEAM_STATS
    TEAM_STATS = on
    return old


# Who gathers an epoch's targets on a team (see gather_rest): 1 the master and a helper
# half each; for tests, 0 the master all before the epoch, 2 the master the first half,
# then the rest when the epoch reaches it (what happens when the helper has not begun),
# 3 the master the first half and nobody the rest (as when the helper that claimed it is
# held up all epoch: every chunk there reads y and sample_weight where they are).
cdef int GATHER_SPLIT = 1


def set_gather_split(int mode):
    """For tests: who gathers the targets on a team (1, the default: the master and a
    helper; 0: the master before the epoch; 2: the master in two steps; 3: the master
    the first half only). Returns the previous mode."""
    global GATHER_SPLIT
    if mode not in (0, 1, 2, 3):
        raise ValueError("mode must be 0, 1, 2 or 3")
    old = GATHER_SPLIT
    GATHER_SPLIT = mode
    return old


cdef struct Slot:
    # Helper h's: its progress word (written by h, and by the master when it takes over),
    # then what only h writes (its chunk rows, set before the region) and reads.
    long long state
    char pad0[120]
    void* grad                  # (chunks of the largest batch, gstride) its chunk gradients
    double* obj                 # (same, ostride) its chunk losses
    void* z                     # (K,) scratch
    double busy, wait           # seconds computing / waiting for a batch (TEAM_STATS)
    char pad1[88]


cdef struct Team:
    char pad0[120]
    # The batch on offer: its description, written by the master before it stores the
    # generation in `post`; read by the helpers after they load `post`.
    long long post
    Py_ssize_t start, mb, nch
    int nt                      # threads sharing it
    char pad1[120]
    int finished                # set by the master when its epoch loop is over
    char pad2[120]
    long long gathered          # targets of positions [job.gather_from, n_order): 0 not
                                # gathered, 1 a thread is gathering them, 2 gathered
    char pad4[120]
    bint gather_pending         # the master has not tried to claim them yet
    Slot* slots                 # (n_threads,); slot 0 unused
    Py_ssize_t gstride, ostride # elements between two chunk rows of a helper
    long long gen               # the master's last generation
    int status                  # the epoch's (set by the master)
    int team_at_end             # the team was still on when the epoch ended
    int stalled                 # times the master took over a held-up helper's chunks
    double chunk_time           # seconds per chunk of the master's last share
    void* ysw                   # y and sample_weight in visiting order (floating), or NULL
    # the master's bookkeeping of the adaptive thread count
    int mode
    int n_threads
    Py_ssize_t win_batches, win_unbegun  # batches of the window; shared ones whose
                                         # helper had not begun when the master was done
    double win_t0, win_rows, rate_solo, rate_team
    int losses                  # probes in a row that found the team no faster
    int lost                    # the team was dropped (slower, or the CPU-share rule):
                                # the next epochs go alone (the back-off)
    # the CPU-share rule (see _team.pxd)
    CpuWatch cpu
    bint cpu_on                 # the rule applies (a thread CPU clock, a timed team)
    int cpu_dropped             # the team left by it
    int cpu_prev_mode           # the mode to return to when the team wins the probe
    Py_ssize_t batches, n_batches  # batches done, and in the epoch
    double t_start              # when the epoch loop began
    # TEAM_STATS: the master's seconds computing its share, waiting for (or doing)
    # the helpers' shares, and between two batch gradients (reduction excluded);
    # batches shared
    double t_busy, t_wait, t_serial, t_mark
    double t_done               # when the master's epoch loop ended (the region's end waits)
    Py_ssize_t n_shared
    char pad3[120]


cdef inline void team_init(Team* tm, int n_threads) noexcept nogil:
    tm.post = 0                 # generation 0: no batch yet
    tm.gathered = 2
    tm.gather_pending = False
    tm.gen = 0
    tm.finished = 0
    tm.slots = NULL
    tm.status = STATUS_OK
    tm.team_at_end = 0
    tm.stalled = 0
    tm.chunk_time = 0.0
    tm.n_threads = n_threads
    tm.mode = MODE_WARM_UP if n_threads > 1 else MODE_SOLO
    tm.win_batches = 0
    tm.win_unbegun = 0
    tm.losses = 0
    tm.lost = 0
    tm.win_rows = 0.0
    tm.win_t0 = cgd_now()
    memset(&tm.cpu, 0, sizeof(CpuWatch))
    tm.cpu_on = False
    tm.cpu_dropped = 0
    tm.cpu_prev_mode = MODE_SOLO
    tm.batches = 0
    tm.n_batches = 0
    tm.t_start = tm.win_t0
    tm.rate_solo = 0.0
    tm.rate_team = 0.0
    tm.t_busy = 0.0
    tm.t_wait = 0.0
    tm.t_serial = 0.0
    tm.t_mark = 0.0
    tm.n_shared = 0


cdef inline void team_dismiss(Team* tm) noexcept nogil:
    """Tell the helpers to leave (they wait for the end of the epoch off the CPU)."""
    if tm.n_threads > 1:
        cgd_atomic_store(&tm.post, POST_EXIT)
        tm.n_threads = 1
    tm.mode = MODE_SOLO


cdef inline void team_adapt(Team* tm, Py_ssize_t mb) noexcept nogil:
    """Count a finished batch of mb rows; at the end of a window, choose who does the next.

    Windows of a few milliseconds are noisy (a shared machine, a virtual one): the team
    is dropped after two probes in a row found it no faster than the master alone, or at
    once when the helpers had mostly not begun their shares by the time the master had
    done its own (they do not get a core). Before that, the CPU-share rule (_team.pxd)
    may drop the team, or have the master time itself alone (MODE_CPU_PROBE)."""
    cdef double now, rate
    cdef int r
    if tm.mode == MODE_SOLO:
        return
    tm.batches += 1
    if tm.cpu_on:
        now = cgd_now()
        r = cpu_watch(&tm.cpu, &CPU_RULE, mb, now, now - tm.t_start, tm.batches,
                      tm.n_batches)
        if r == CPU_DROP:
            tm.lost = 1
            tm.cpu_dropped = 1
            team_dismiss(tm)
            return
        if r == CPU_PROBE:
            tm.cpu_prev_mode = tm.mode
            tm.mode = MODE_CPU_PROBE
            return
        if r == CPU_BACK:
            tm.rate_team, tm.rate_solo = tm.cpu.rate_team, tm.cpu.rate_solo
            tm.mode = tm.cpu_prev_mode
            tm.win_rows = 0.0
            tm.win_batches = 0
            tm.win_unbegun = 0
            tm.win_t0 = now
            return
        if tm.mode == MODE_CPU_PROBE:
            return
    tm.win_rows += mb
    tm.win_batches += 1
    if tm.win_batches < 2:
        return
    now = cgd_now()
    if now - tm.win_t0 < TEAM_WINDOW:
        return
    rate = tm.win_rows / (now - tm.win_t0) if now > tm.win_t0 else 1e300
    if tm.mode == MODE_PROBE_TEAM:
        tm.rate_team = rate
    if (tm.mode == MODE_PROBE_TEAM or tm.mode == MODE_TEAM) and not TAKEOVER_EAGER \
            and 2 * tm.win_unbegun > tm.win_batches:
        tm.lost = 1
        team_dismiss(tm)
    elif tm.mode == MODE_WARM_UP:
        # An earlier epoch of the fit found the team faster: keep it (still watched).
        tm.mode = MODE_TEAM if tm.rate_team > TEAM_GAIN * tm.rate_solo > 0.0 \
            else MODE_PROBE_TEAM
    elif tm.mode == MODE_PROBE_TEAM:
        tm.mode = MODE_PROBE_SOLO
    elif tm.mode == MODE_PROBE_SOLO:
        tm.rate_solo = rate
        if tm.rate_team > TEAM_GAIN * tm.rate_solo:
            tm.mode = MODE_TEAM
            tm.losses = 0
        else:
            tm.losses += 1
            if tm.losses >= 2:
                tm.lost = tm.rate_team < tm.rate_solo
                team_dismiss(tm)
            else:
                tm.mode = MODE_PROBE_TEAM
    elif rate * TEAM_GAIN < tm.rate_team and rate < TEAM_GAIN * tm.rate_solo:
        # The team slowed down (another process took a core?): measure one thread again.
        tm.rate_team = rate
        tm.mode = MODE_PROBE_SOLO
    tm.win_rows = 0.0
    tm.win_batches = 0
    tm.win_unbegun = 0
    tm.win_t0 = cgd_now()


cdef inline bint team_active(Team* tm) noexcept nogil:
    """The next batch is shared (the mode says so only while helpers are there)."""
    return tm.mode == MODE_PROBE_TEAM or tm.mode == MODE_TEAM or tm.mode == MODE_WARM_UP


cdef inline void chunk_bounds(Py_ssize_t nch, Py_ssize_t nt, Py_ssize_t h, Py_ssize_t* c0,
                              Py_ssize_t* c1) noexcept nogil:
    """Thread h's share [c0, c1) of a batch's nch chunks among nt threads: consecutive
    chunks, thread 0 (the master, which also steps) the first and never the larger."""
    c0[0] = (h * nch) // nt
    c1[0] = ((h + 1) * nch) // nt


cdef inline void share_positions(Job* job, Py_ssize_t start, Py_ssize_t nt, Py_ssize_t h,
                                 Py_ssize_t* q0, Py_ssize_t* q1) noexcept nogil:
    """The positions [q0, q1) of thread h's share of the batch that starts at `start`
    (empty past the end of the order)."""
    cdef Py_ssize_t mb, nch, c0, c1
    q0[0] = 0
    q1[0] = 0
    if start >= job.n_order:
        return
    mb = min(job.batch_size, job.n_order - start)
    nch = n_chunks_for(mb)
    if nch < 2:
        nt = 1
    chunk_bounds(nch, nt, h, &c0, &c1)
    q0[0] = start + (c0 * mb) // nch
    q1[0] = start + (c1 * mb) // nch


cdef inline Py_ssize_t prefetch_next(Job* job, const floating* X, Py_ssize_t p,
                                      Py_ssize_t q1) noexcept nogil:
    """A waiting thread's use of its time: ask for the row at position p of its coming
    share, if p < q1; returns the next position to ask for. (A thread of the team
    waits for the other once per batch; the rows of its next share are known, and
    reading rows is what bounds the epoch, so the wait loads them into cache.)"""
    cdef Py_ssize_t i
    if p >= q1:
        return p
    i = job.order[p]
    if job.ysw != NULL:
        cgd_prefetch(X + i * job.d, job.d * sizeof(floating))
    else:
        prefetch_sample(X, <const floating*>job.y, <const floating*>job.sw, job.d, i)
    return p + 1


cdef void share_gradient(
    Job* job, const floating* X,
    Py_ssize_t start, Py_ssize_t mb, Py_ssize_t nch,   # IN the batch
    Py_ssize_t c0, Py_ssize_t c1,   # IN its chunks to compute
    Py_ssize_t q0, Py_ssize_t q1,   # IN positions visited after them (prefetched)
    floating* grad, Py_ssize_t gstride,  # OUT chunk c's gradient at grad + (c - c0) * gstride
    double* obj, Py_ssize_t ostride,     # OUT its losses at obj + (c - c0) * ostride
    floating* z,                    # scratch (K,)
) noexcept nogil:
    """Chunks [c0, c1) of a batch, one pass of prefetches over their positions."""
    cdef Py_ssize_t c, p1, n1, n2
    for c in range(c0, c1):
        p1 = start + ((c + 1) * mb) // nch
        n1, n2 = q0, q1
        if c + 1 < c1:
            n1, n2 = p1, start + ((c + 2) * mb) // nch
        chunk_gradient(job, X, start + (c * mb) // nch, p1, n1, n2, c == c0,
                       grad + (c - c0) * gstride, obj + (c - c0) * ostride, z)


cdef void helper_share(
    Team* tm, Job* job, const floating* X, Slot* sl, long long st,
    Py_ssize_t start, Py_ssize_t mb, Py_ssize_t nch, Py_ssize_t c0,
    Py_ssize_t q0, Py_ssize_t q1,
) noexcept nogil:
    """A helper's share of a batch, from chunk c0 on, `st` its progress word as it
    began the batch: it begins chunk `next` unless that is the limit (the master has
    taken the chunks from there), and counts each chunk done; it stops, dropping its
    result, once the master has taken over (either move then fails)."""
    cdef Py_ssize_t i, p0, p1, n1, n2
    while True:
        i = st_field(st, 8)
        if i >= st_field(st, 16) or st & TAKEN:
            return
        if not cgd_atomic_cas(&sl.state, st, st + NEXT_ONE):
            st = cgd_atomic_load(&sl.state)
            continue
        st += NEXT_ONE
        p0 = start + ((c0 + i) * mb) // nch
        p1 = start + ((c0 + i + 1) * mb) // nch
        n1, n2 = q0, q1
        if i + 1 < st_field(st, 16):
            n1, n2 = p1, start + ((c0 + i + 2) * mb) // nch
        chunk_gradient(job, X, p0, p1, n1, n2, i == 0, <floating*>sl.grad + i * tm.gstride,
                       sl.obj + i * tm.ostride, <floating*>sl.z)
        while not cgd_atomic_cas(&sl.state, st, st + 1):
            st = cgd_atomic_load(&sl.state)  # (the master moved the limit meanwhile)
            if st & TAKEN:
                return
        st += 1


cdef void team_helper(Team* tm, Job* job, const floating* X, int h) noexcept nogil:
    """Helper h: compute its share of each batch until told to leave, then wait off the
    CPU for the end of the epoch (at the end of the parallel region the OpenMP runtime
    would spin for milliseconds, taking CPU time from the master when another process
    wants the cores)."""
    cdef Slot* sl = &tm.slots[h]
    cdef long long seen = 0, g, st
    cdef Py_ssize_t start, mb, nch, nt, c0, c1, q0 = 0, q1 = 0, pf = 0
    cdef int spins
    cdef double t0 = 0.0, t1 = 0.0
    cdef bint stats = TEAM_STATS
    while True:
        spins = 0
        if stats:
            t0 = cgd_now()
        while True:
            g = cgd_atomic_load(&tm.post)
            if g != seen:
                break
            if pf < q1:
                pf = prefetch_next(job, X, pf, q1)
            elif spins < SPIN_LIMIT:
                spins += 1
                cgd_cpu_relax()
            else:
                cgd_thread_nap()
        q1 = 0  # (nothing to prefetch unless this batch gives a share)
        if g == POST_EXIT:
            break
        seen = g
        start, mb, nch, nt = tm.start, tm.mb, tm.nch, tm.nt
        chunk_bounds(nch, nt, h, &c0, &c1)
        if c0 >= c1:
            continue
        # Begin generation g, unless the master has taken it over already.
        st = cgd_atomic_load(&sl.state)
        if (st >> GEN_SHIFT) == g:
            continue
        if not cgd_atomic_cas(&sl.state, st, (g << GEN_SHIFT) | ((c1 - c0) * LIMIT_ONE)):
            continue
        if stats:
            t1 = cgd_now()
            sl.wait += t1 - t0
        share_positions(job, start + mb, nt, h, &q0, &q1)
        helper_share(tm, job, X, sl, (g << GEN_SHIFT) | ((c1 - c0) * LIMIT_ONE), start, mb,
                     nch, c0, q0, q1)
        pf = min(q0 + DENSE_PREFETCH, q1)  # (its share's last rows asked for these)
        if stats:
            sl.busy += cgd_now() - t1
    cgd_flag_wait(&tm.finished)


cdef Py_ssize_t collect_share(Team* tm, Job* job, const floating* X, int h, long long g,
                              Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t q0, Py_ssize_t q1,
                              floating* work_grad, double* work_obj,
                              floating* work_z, Py_ssize_t* pf) noexcept nogil:
    """Master, its own share done: finish helper h's share [c0, c1) of generation g.
    While the helper has chunks it has not begun, the master takes the last of them
    (moving the helper's limit down) and computes it; then it waits for the chunks the
    helper has begun, unless the helper keeps it waiting too long: then it takes over the
    ones not done. A chunk the master computes goes to its row of work_grad / work_obj.
    Returns how many of the share's chunks (its first ones) are in the helper's rows.
    While it waits, it asks for the rows of its own next share, [q0, q1), from
    position pf[0] on (see prefetch_next)."""
    cdef Slot* sl = &tm.slots[h]
    cdef long long st
    cdef Py_ssize_t P = job.P, K = job.K, i, lim, done
    cdef int spins = 0
    cdef double t_wait = 0.0, now
    while True:
        st = cgd_atomic_load(&sl.state)
        if (st >> GEN_SHIFT) != g:
            # The helper has not begun this batch while the master did its whole share:
            # it is napping (or its core is taken), not about to begin. Waiting for it
            # would cost more than its share.
            if cgd_atomic_cas(&sl.state, st, (g << GEN_SHIFT) | TAKEN):
                share_gradient(job, X, tm.start, tm.mb, tm.nch, c0, c1, q0, q1,
                               work_grad + c0 * P, P, work_obj + c0 * K, K, work_z)
                tm.win_unbegun += 1
                return 0
            continue
        lim = st_field(st, 16)
        done = st_field(st, 0)
        if done == lim:
            return lim
        i = st_field(st, 8)
        if i < lim:
            if cgd_atomic_cas(&sl.state, st, st - LIMIT_ONE):
                share_gradient(job, X, tm.start, tm.mb, tm.nch, c0 + lim - 1, c0 + lim, q0, q1,
                               work_grad + (c0 + lim - 1) * P, P,
                               work_obj + (c0 + lim - 1) * K, K, work_z)
            continue
        if pf[0] < q1:
            pf[0] = prefetch_next(job, X, pf[0], q1)
        else:
            cgd_cpu_relax()
        spins += 1
        if spins % 256 != 0 and not TAKEOVER_EAGER:
            continue
        now = cgd_now()
        if t_wait == 0.0 and not TAKEOVER_EAGER:
            t_wait = now
            continue
        if TAKEOVER_EAGER or now - t_wait > TAKEOVER_SECONDS + 4.0 * tm.chunk_time:
            if cgd_atomic_cas(&sl.state, st, st | TAKEN):
                share_gradient(job, X, tm.start, tm.mb, tm.nch, c0 + done, c0 + lim, q0, q1,
                               work_grad + (c0 + done) * P, P, work_obj + (c0 + done) * K, K,
                               work_z)
                if not TAKEOVER_EAGER:
                    tm.stalled += 1
                return done
            # (the helper counted a chunk meanwhile: look again)


cdef void batch_gradient(
    Team* tm, Job* job, const floating* X,
    Py_ssize_t start, Py_ssize_t mb,   # IN the batch: positions [start, start + mb)
    floating* work_grad,        # OUT row 0: the batch's gradient sum; (chunks, P) scratch
    double* work_obj,           # OUT row 0: the batch's loss sums; (chunks, K) scratch
    floating* work_z,           # scratch (K,)
) noexcept nogil:
    """Gradient sum of one batch: each fixed chunk into a row of its own (the master's
    and taken-over chunks in work_grad, a helper's in its slot), by the team when it is
    on, else by the master alone; then all rows summed in chunk order."""
    cdef Py_ssize_t P = job.P, K = job.K, nch = n_chunks_for(mb), nt = 1
    cdef Py_ssize_t c, k, h, c0, c1, q0, q1, n_own, pf
    cdef long long g = 0
    cdef floating* rows[MAX_CHUNKS]
    cdef double* orows[MAX_CHUNKS]
    cdef Slot* sl
    cdef double t0 = 0.0, t1
    cdef bint stats = TEAM_STATS
    if tm.gather_pending and start + mb > job.gather_from:
        gather_rest(tm, job, X)
        tm.gather_pending = False
    if team_active(tm) and nch > 1:
        nt = tm.n_threads
        tm.gen += 1
        g = tm.gen
        tm.start, tm.mb, tm.nch, tm.nt = start, mb, nch, <int>nt
        cgd_atomic_store(&tm.post, g)
    chunk_bounds(nch, nt, 0, &c0, &c1)
    share_positions(job, start + mb, tm.n_threads, 0, &q0, &q1)
    t0 = cgd_now()
    if stats and tm.t_mark > 0.0:
        tm.t_serial += t0 - tm.t_mark
    share_gradient(job, X, start, mb, nch, c0, c1, q0, q1, work_grad + c0 * P, P,
                   work_obj + c0 * K, K, work_z)
    t1 = cgd_now()
    if c1 > c0:
        tm.chunk_time = (t1 - t0) / (c1 - c0)
    pf = min(q0 + DENSE_PREFETCH, q1)  # (its share's last rows asked for these)
    for c in range(nch):
        rows[c] = work_grad + c * P
        orows[c] = work_obj + c * K
    for h in range(1, nt):
        chunk_bounds(nch, nt, h, &c0, &c1)
        if c0 >= c1:
            continue
        n_own = collect_share(tm, job, X, <int>h, g, c0, c1, q0, q1, work_grad, work_obj,
                              work_z, &pf)
        sl = &tm.slots[h]
        for c in range(c0, c0 + n_own):
            rows[c] = <floating*>sl.grad + (c - c0) * tm.gstride
            orows[c] = sl.obj + (c - c0) * tm.ostride
    if stats:
        tm.t_busy += t1 - t0
        if nt > 1:
            tm.n_shared += 1
            tm.t_wait += cgd_now() - t1
    reduce_rows(work_grad, rows, nch, P)
    reduce_rows(work_obj, orows, nch, K)
    if stats:
        tm.t_mark = cgd_now()


cdef inline Py_ssize_t row_stride(Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Elements between two rows of n items that start on their own cache lines."""
    return ((n * itemsize + 63) // 64) * 64 // itemsize


cdef char* team_slots(Team* tm, Py_ssize_t nt, Py_ssize_t nch, Py_ssize_t P, Py_ssize_t K,
                      Py_ssize_t itemsize) noexcept nogil:
    """Allocate the helpers' slots and chunk rows (one block, freed by the caller);
    NULL when out of memory."""
    cdef Py_ssize_t gs = row_stride(P, itemsize), os = row_stride(K, 8)
    cdef Py_ssize_t zb = row_stride(K, itemsize) * itemsize
    cdef Py_ssize_t per = nch * (gs * itemsize + os * 8) + zb
    cdef char* mem = <char*>malloc(nt * (sizeof(Slot) + per) + 128)
    cdef char* q
    cdef Py_ssize_t h
    if mem == NULL:
        return NULL
    tm.slots = <Slot*>((<size_t>mem + 63) & ~(<size_t>63))
    tm.gstride = gs
    tm.ostride = os
    q = <char*>(tm.slots + nt)
    for h in range(nt):
        tm.slots[h].state = 0
        tm.slots[h].busy = 0.0
        tm.slots[h].wait = 0.0
        tm.slots[h].grad = q
        tm.slots[h].obj = <double*>(q + nch * gs * itemsize)
        tm.slots[h].z = q + nch * (gs * itemsize + os * 8)
        q += per
    return mem


def grad_rows_needed(Py_ssize_t batch_size, Py_ssize_t n_train, bint per_sample_plain):
    """Rows of ``work_grad`` an epoch needs: one per chunk of its largest batch, none
    for plain per-sample SGD (which never builds a batch gradient)."""
    if per_sample_plain and min(batch_size, n_train) == 1:
        return 0
    return n_chunks_for(min(batch_size, n_train))


cdef enum:
    GATHER_AHEAD = 32


cdef void gather_targets(const floating* y, const floating* sw, const intp_t* order,
                         Py_ssize_t n, floating* ysw) noexcept nogil:
    """ysw[2p], ysw[2p + 1] = y[order[p]], sw[order[p]]. The epoch then reads targets
    and weights in one sequential stream, and all its random accesses are rows of X: a
    row's 800 bytes are one DRAM page, while y[i] and sw[i] would be two more pages
    opened (and two more cache misses in flight) per row, in a loop that cannot keep
    many in flight. This loop has nothing else to wait for, so it keeps many."""
    cdef Py_ssize_t p, i
    for p in range(n):
        if p + GATHER_AHEAD < n:
            i = order[p + GATHER_AHEAD]
            cgd_prefetch(y + i, sizeof(floating))
            cgd_prefetch(sw + i, sizeof(floating))
        i = order[p]
        ysw[2 * p] = y[i]
        ysw[2 * p + 1] = sw[i]


cdef void gather_rest(Team* tm, Job* job, const floating* X) noexcept nogil:
    """Gather the targets of positions [job.gather_from, n_order) unless another thread
    has claimed them (one compare-and-swap). On a team the master gathers the first half
    of the order while a helper gathers the rest; the master calls this before the first
    batch that reaches the rest, so that a helper that has not begun by then leaves it
    to the master. Nobody waits for the gathering: until *job.gathered is 2 a chunk in
    the rest reads y and sample_weight where they are (the same values)."""
    if cgd_atomic_load(&tm.gathered) == 0 and cgd_atomic_cas(&tm.gathered, 0, 1):
        gather_targets(<const floating*>job.y, <const floating*>job.sw,
                       job.order + job.gather_from, job.n_order - job.gather_from,
                       <floating*>tm.ysw + 2 * job.gather_from)
        cgd_atomic_store(&tm.gathered, 2)


cdef void dense_epoch(
    Team* tm, Job* job,
    const floating[:, ::1] X, const floating[::1] y, const floating[::1] sample_weight,
    const intp_t[::1] order, const floating[::1] pos_weight,
    const floating[::1] neg_weight, const unsigned char[::1] active,
    const double[::1] eta_base, floating[::1] params, floating[:, ::1] opt_state,
    floating[::1] l1_q, double[::1] l1_u, double[::1] avg_params, double[::1] avg_n,
    floating[:, ::1] work_grad, double[:, ::1] work_obj, floating[:, ::1] work_z,
    double[:, ::1] work_k, double[::1] obj_out, EpochConfig* cfg, double* t_io,
) noexcept nogil:
    """The epoch loop of linear_epoch (run by the team's master). Sets tm.status; t_io
    is the number of the next update."""
    cdef Py_ssize_t n_order = order.shape[0], d = X.shape[1], K = eta_base.shape[0]
    cdef Py_ssize_t P = K * (d + 1)
    cdef Py_ssize_t m = cfg.batch_size, start, mb, k, j
    cdef int status = STATUS_OK
    cdef double* eta = &work_k[0, 0]
    cdef double* reg = &work_k[1, 0]
    cdef double obj_batch, gscale, t = t_io[0]
    cdef double work = 0.0, next_clock = 0.0, last_check
    cdef bint plain = (cfg.optim.solver == SOLVER_SGD and cfg.optim.momentum == 0.0)
    cdef bint multinomial = cfg.target == TARGET_MULTINOMIAL
    cdef floating* prm = &params[0]
    cdef floating* g
    cdef floating* wg = &work_grad[0, 0] if work_grad.shape[0] > 0 else NULL
    cdef const floating* ysw = <const floating*>tm.ysw
    cdef floating yj, sj
    cdef const floating* x
    # Per-sample plain SGD without averaging or L1 keeps each output's coefficients
    # as a scale times v (see sgd_single_row): its objective's L2 term comes from
    # the scale and sum v_j^2, and the scale is folded in before the epoch returns.
    cdef SparseOut* so = NULL
    if m == 1 and plain and cfg.average == 0.0 and cfg.l1 == 0.0:
        so = <SparseOut*>malloc(K * sizeof(SparseOut))

    for k in range(K):
        reg[k] = penalty_value(cfg, prm + k * d, d)
        if so != NULL:
            memset(&so[k], 0, sizeof(SparseOut))
            so[k].scale = 1.0
            so[k].avg_g = 1.0
            norms_of(&so[k], prm + k * d, 1, d)
    last_check = cgd_now()
    tm.win_t0 = last_check
    tm.t_start = last_check
    tm.n_batches = (n_order + m - 1) // m
    if tm.cpu_on:
        cpu_watch_start(&tm.cpu, &CPU_RULE, last_check)
    start = 0
    # (so: batches of one row, which are never shared; the team's mode is MODE_SOLO)
    if so != NULL and not multinomial and PER_SAMPLE_LOOP:
        start = per_sample_epoch(X, y, sample_weight, ysw, order, &pos_weight[0],
                                 &neg_weight[0], &active[0], eta_base, prm, so, reg,
                                 &work_z[0, 0], obj_out, cfg, &t, &status, &work,
                                 &next_clock, &last_check)
    while start < n_order:
        mb = min(m, n_order - start)
        batch_rates(cfg, eta_base, eta, K, t)
        if mb == 1 and plain:
            for k in range(K):
                work_obj[0, k] = 0.0
            # (yj and sj are set by next_row: a statement of its own, since C leaves the
            # order in which a call's arguments are evaluated open)
            x = next_row(X, y, sample_weight, ysw, order, start, &yj, &sj)
            sgd_single_row(x, yj, sj, prm, K, d,
                           &pos_weight[0], &neg_weight[0], &active[0], eta, cfg,
                           &work_obj[0, 0], &work_z[0, 0], so)
        else:
            batch_gradient(tm, job, &X[0, 0], start, mb, wg, &work_obj[0, 0], &work_z[0, 0])
            g = wg
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

        obj_batch = record_objective(multinomial, &active[0], K, mb, &work_obj[0, 0], reg,
                                     obj_out)

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
            if so != NULL:
                reg[k] = 0.5 * cfg.l2 * so[k].scale * so[k].scale * so[k].sq
            elif cfg.l1 != 0.0 or cfg.l2 != 0.0:
                reg[k] = penalty_value(cfg, prm + k * d, d)

        t += 1.0
        start += mb
        team_adapt(tm, mb)
        if not isfinite(obj_batch):
            status = STATUS_DIVERGED
            break
        if signal_check_due(&work, &next_clock, &last_check, mb * K * d):
            with gil:
                if check_signals() != 0:
                    status = STATUS_INTERRUPTED
            if status != STATUS_OK:
                break
    if so != NULL:
        for k in range(K):
            fold_output(&so[k], prm + k * d, 1, NULL, d, False, False)
        free(so)
    tm.team_at_end = team_active(tm)
    team_dismiss(tm)
    cgd_flag_set(&tm.finished)
    tm.t_done = cgd_now()
    if status == STATUS_OK:
        for j in range(P):
            if not isfinite(prm[j]):
                status = STATUS_DIVERGED
                break
    t_io[0] = t
    tm.status = status


cdef int raise_pending() except -1:
    """Propagate the exception already set (by a signal handler)."""
    return -1


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
    cdef Py_ssize_t m = cfg.batch_size
    cdef int status = STATUS_OK
    cdef bint plain = (cfg.optim.solver == SOLVER_SGD and cfg.optim.momentum == 0.0)
    cdef Team tm
    cdef Job job
    cdef int nt = cfg.n_threads
    cdef floating* ysw
    cdef char* slots = NULL

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
    # A team when a batch has chunks to share. (Per-sample SGD runs on one thread: a
    # helper thread prefetching the coming rows was measured slower than none once the
    # targets and weights were gathered in visiting order.)
    if n_chunks_for(min(m, n_order)) < 2:
        nt = 1
    # An epoch whose team lost to one thread (a busy machine) makes the next 1, 2, 4,
    # ... 16 epochs of this fit run on one thread (_team.pxd).
    nt = backoff_threads(config, nt, TEAM_WINDOW > 0.0)
    team_init(&tm, nt)
    if nt > 1 and TEAM_WINDOW > 0.0:
        tm.rate_team, tm.rate_solo = config.get("team_known", (0.0, 0.0))
        tm.cpu_on = cgd_thread_cpu() >= 0.0
    if nt > 1:
        slots = team_slots(&tm, nt, n_chunks_for(min(m, n_order)), P, K, sizeof(floating))
        if slots == NULL:  # (out of memory: one thread)
            nt = 1
            team_init(&tm, nt)
    ysw = <floating*>malloc(2 * n_order * sizeof(floating))
    # Freed only once the helpers have left: a helper that a busy machine holds up may
    # still read it after the master has finished the chunk in its place.
    tm.ysw = ysw
    job_init(&job, d, K, m, order, y, sample_weight, ysw, params, pos_weight, neg_weight,
             active, &cfg)
    # The team gathers: the master the first half, a helper the rest (gather_rest);
    # not when the epoch ends on a one-row batch of plain SGD, whose per-sample step
    # reads the gathered targets without asking whether they are there.
    if ysw != NULL and nt > 1 and GATHER_SPLIT != 0 and not (plain and n_order % m == 1):
        job.gather_from = n_order // 2
        job.gathered = &tm.gathered
        tm.gathered = 1 if GATHER_SPLIT == 3 else 0
        tm.gather_pending = True
    elif ysw != NULL:  # (else y and sample_weight are read where they are)
        with nogil:
            gather_targets(&y[0], &sample_weight[0], &order[0], n_order, ysw)
    if nt > 1:
        with nogil, parallel(num_threads=nt):
            if threadid() == 0:
                if tm.gather_pending:
                    gather_targets(&y[0], &sample_weight[0], &order[0], job.gather_from, ysw)
                dense_epoch(&tm, &job, X, y, sample_weight, order, pos_weight, neg_weight,
                            active, eta_base, params, opt_state, l1_q, l1_u, avg_params,
                            avg_n, work_grad, work_obj, work_z, work_k, obj_out, &cfg, &t)
            else:
                if threadid() == 1 and GATHER_SPLIT == 1:
                    gather_rest(&tm, &job, &X[0, 0])
                team_helper(&tm, &job, &X[0, 0], threadid())
    else:
        with nogil:
            dense_epoch(&tm, &job, X, y, sample_weight, order, pos_weight, neg_weight, active,
                        eta_base, params, opt_state, l1_q, l1_u, avg_params, avg_n,
                        work_grad, work_obj, work_z, work_k, obj_out, &cfg, &t)
    # (the region ends when every helper has seen the end of the epoch)
    tm.t_done = cgd_now() - tm.t_done
    free(ysw)
    status = tm.status
    if TEAM_STATS:
        config["team_stats"] = {
            "master_busy": tm.t_busy, "master_wait": tm.t_wait, "master_serial": tm.t_serial,
            "helper_busy": [tm.slots[j].busy for j in range(1, nt)] if nt > 1 else [],
            "helper_wait": [tm.slots[j].wait for j in range(1, nt)] if nt > 1 else [],
            "shared_batches": tm.n_shared, "takeovers": tm.stalled,
            "lost": bool(tm.lost), "cpu_dropped": bool(tm.cpu_dropped),
            "cpu_probes": tm.cpu.probes, "team_batches": tm.batches, "exit_wait": tm.t_done}
    free(slots)
    # What the adaptive thread count measured (rows per second), for tests and
    # benchmarks: (team, one thread, ended on the team, dropped a held-up helper).
    config["team_rates"] = (tm.rate_team, tm.rate_solo, bool(tm.team_at_end),
                            tm.stalled > 0)
    if nt > 1:
        backoff_record(config, tm.lost)
        # The next epoch skips the probes when this one ended on a team measured faster.
        config["team_known"] = ((tm.rate_team, tm.rate_solo) if tm.team_at_end
                                else (0.0, 0.0))
    if status == STATUS_INTERRUPTED:
        raise_pending()
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
    cdef Team tm
    cdef Job job
    obj = np.zeros(K)
    grad = np.zeros(P)
    cdef double[::1] o = obj
    cdef double[::1] gr = grad
    if params.shape[0] != P or y.shape[0] != n or sample_weight.shape[0] != n:
        raise ValueError("inconsistent shapes passed to linear_objective_gradient")
    team_init(&tm, 1)
    job_init(&job, d, K, n, order, y, sample_weight, NULL, params, pos_weight, neg_weight,
             active, &cfg)
    with nogil:
        batch_gradient(&tm, &job, &X[0, 0], 0, n, &work_grad[0, 0], &work_obj[0, 0],
                       &work_z[0, 0])
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
    cdef double l = sample_loss_and_dloss(loss, z, y, epsilon, &dl)
    return l, dl


def _sample_loss_generic(int loss, double z, double y, double epsilon):
    """sample_loss through the all-losses switch (for tests of the log loss's twin)."""
    cdef double dl
    cdef double l = loss_and_dloss(loss, z, y, epsilon, &dl)
    return l, dl


# ---------------------------------------------------------------------- CSR input
#
# The same updates over rows stored as CSR, each entry read in stored order (unsorted
# indices and duplicate entries are fine: a duplicate is one more term of the dot
# product and one more addition to its coefficient, as in scikit-learn), each update
# costing what its rows hold, never n_features. Per output k the kernel keeps, during
# one epoch:
#
# * a weight scale: w = scale * v, with v the stored coefficients. The L2 decay of a
#   plain SGD step, w <- (1 - eta l2) w, multiplies the scale only; a step's gradient
#   goes to v divided by the scale. When the scale falls below 1e-9 it is folded into v
#   (an O(n_features) pass, rare), as scikit-learn does.
# * the averaged coefficients as A = avg_g * (D + avg_c * v), with D stored in
#   avg_params. An averaging step A <- (1 - mu) A + mu w (mu = 1 / count) changes only
#   the two scalars: avg_g <- (1 - mu) avg_g, avg_c <- avg_c + mu * scale / avg_g. A
#   change delta of v_j (a gradient step, an L1 truncation) keeps A as it was by
#   D_j -= avg_c * delta. So the mean is that of the true iterates, truncations
#   included, at the cost of the touched coordinates.
# * sum(v_j^2) and sum(|v_j|), updated with every change of v, for the penalty part of
#   the recorded objective.
#
# At the end of the epoch both are folded back (v <- scale * v, avg_params <- A), so
# between calls the state means what the dense kernel's means.
#
# L1 / elastic net: the cumulative penalty (l1_u, l1_q) is applied to the coordinates
# an update touches (the row's columns, or the batch's), as scikit-learn does for sparse
# data; a coordinate that no row touches is not pulled to zero until one does.
#
# Mini-batches, plain SGD without an L1 part: the loss derivatives dl_i of all the
# batch's rows at its starting weights (fixed chunks of rows, spread over threads when
# the batch is large enough; each row's value is computed alone), then the decay of the
# scale and the step v_j += -eta / (m scale) dl_i x_ij applied row by row in batch
# order. The step costs the batch's stored entries, with no gradient buffer or column
# list, and no bit depends on the thread count.
#
# Other mini-batches (momentum, Adam, Adagrad, L1): the batch's touched columns get
# global slots 0..T-1 (first appearance in batch order; a marker array of n_features
# entries, reset only where it was set), and each fixed chunk of rows its own compact
# slots for the columns it touches; a chunk accumulates its gradient over its own
# slots, and the chunks are added into the global slots in chunk order (so the bits
# never depend on the thread count), at the cost of the batch's entries, not of
# T x chunks. Momentum, Adam and Adagrad update only the touched coordinates, with the
# L2 gradient of those coordinates; the velocities and moments of the others are left
# as they are (PyTorch's SparseAdam rule), and Adam's bias correction uses the global
# update count.

from libc.stdint cimport int32_t, int64_t
from libc.math cimport fabs, isnan

ctypedef fused index_t:
    int32_t
    int64_t

cdef enum:
    STATUS_WORK_TOO_SMALL = 2
    # A stored entry costs an indirect load: count it as this many dense
    # multiply-adds when deciding whether a batch is worth spreading over threads.
    SPARSE_ENTRY_WORK = 4
    # Columns per block when copying coefficients between layouts.
    TRANSPOSE_BLOCK = 256

cdef extern from *:
    """
    #define CGD_SCALE_FOLD 1e-9
    """
    double SCALE_FOLD "CGD_SCALE_FOLD"


cdef struct SparseOut:
    double scale    # w = scale * v
    double avg_g    # averaged coefficients: avg_g * (D + avg_c * v)
    double avg_c
    double sq       # sum of v_j^2 (when a penalty needs it)
    double ab       # sum of |v_j|
    double rsq      # scikit-learn's stopping norms: ||w||^2 and ||w||_1 over the
    double rab      # columns of the last row that moved w, scaled since (see below)
    double stop_reg # the penalty of the stopping objective before the next update


cdef inline double sparse_dot(const floating* w, Py_ssize_t ws, const floating* xd,
                              const index_t* xi, Py_ssize_t nnz) noexcept nogil:
    """sum_e w[xi[e] * ws] * xd[e]: w's coefficients are ws apart."""
    cdef double acc = 0.0
    cdef Py_ssize_t e
    for e in range(nnz):
        acc += w[xi[e] * ws] * xd[e]
    return acc


cdef inline void track(SparseOut* o, double* D, double old, double new,
                       bint track_avg, bint track_norms) noexcept nogil:
    """Book-keeping of one changed coefficient v_j (D points at D_j)."""
    if track_norms:
        o.sq += new * new - old * old
        o.ab += fabs(new) - fabs(old)
    if track_avg:
        D[0] -= o.avg_c * (new - old)


cdef inline void norms_of(SparseOut* o, const floating* v, Py_ssize_t vs,
                         Py_ssize_t d) noexcept nogil:
    cdef Py_ssize_t j
    cdef double sq = 0.0, ab = 0.0
    for j in range(d):
        sq += <double>v[j * vs] * v[j * vs]
        ab += fabs(v[j * vs])
    o.sq = sq
    o.ab = ab


cdef void fold_output(SparseOut* o, floating* v, Py_ssize_t vs, double* D, Py_ssize_t d,
                      bint track_avg, bint track_norms) noexcept nogil:
    """Fold the scale into v and the averaging scalars into D (O(d))."""
    cdef Py_ssize_t j
    cdef double s = o.scale, g = o.avg_g, c = o.avg_c
    if track_avg and not (g == 1.0 and c == 0.0):
        for j in range(d):
            D[j] = g * (D[j] + c * v[j * vs])
    o.avg_g = 1.0
    o.avg_c = 0.0
    if s != 1.0:
        for j in range(d):
            v[j * vs] = <floating>(s * v[j * vs])
        o.scale = 1.0
        if track_norms:
            norms_of(o, v, vs, d)


cdef inline void scale_output(SparseOut* o, double decay, floating* v, Py_ssize_t vs,
                              double* D, Py_ssize_t d, bint track_avg,
                              bint track_norms) noexcept nogil:
    """w <- decay * w through the scale alone, folding it in when it gets tiny."""
    o.scale *= decay
    o.rsq *= decay * decay
    o.rab *= decay
    if o.scale < SCALE_FOLD:
        fold_output(o, v, vs, D, d, track_avg, track_norms)


cdef inline void add_row(SparseOut* o, floating* v, Py_ssize_t vs, double* D,
                         const floating* xd, const index_t* xi, Py_ssize_t nnz, double coef,
                         bint track_avg, bint track_norms) noexcept nogil:
    """v <- v + coef * x over the row's columns (coef already divided by the scale).

    The running sums are kept in locals (v may alias o's fields as far as the compiler
    knows, which would put a store and a load on every entry); each is the same
    sequence of additions as track() makes."""
    cdef Py_ssize_t e, j
    cdef floating old, nv
    cdef double rsq = 0.0, rab = 0.0
    cdef double sq = o.sq, ab = o.ab, c = o.avg_c
    for e in range(nnz):
        j = xi[e]
        old = v[j * vs]
        nv = <floating>(old + xd[e] * coef)
        v[j * vs] = nv
        rsq += <double>nv * nv
        rab += fabs(nv)
        if track_norms:
            sq += <double>nv * <double>nv - <double>old * <double>old
            ab += fabs(<double>nv) - fabs(<double>old)
        if track_avg:
            D[j] -= c * (<double>nv - <double>old)
    if track_norms:
        o.sq = sq
        o.ab = ab
    o.rsq = rsq * (o.scale * o.scale)
    o.rab = rab * o.scale


cdef void sgd_single_row_csr(
    const floating* xd, const index_t* xi, Py_ssize_t nnz, floating yi, floating si,
    floating* params, floating* coef, Py_ssize_t ko, Py_ssize_t vs, SparseOut* so,
    double* avg_params, Py_ssize_t K, Py_ssize_t d,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    const double* eta, EpochConfig* cfg, bint track_avg, bint track_norms,
    double* obj, floating* z,
) noexcept nogil:
    """Plain SGD on one CSR row, in scikit-learn's order: decay the scale, add the
    gradient step to the row's coordinates, step the intercept (times intercept_decay).
    Coefficient j of output k is coef[k * ko + j * vs]; the intercepts are in params."""
    cdef Py_ssize_t k, c = 0
    cdef double step
    if cfg.target == TARGET_MULTINOMIAL:
        for k in range(K):
            z[k] = <floating>(so[k].scale * sparse_dot(coef + k * ko, vs, xd, xi, nnz)
                              + params[K * d + k])
        c = multinomial_loss(cfg, z, K, yi, si, obj)
    for k in range(K):
        if cfg.target == TARGET_MULTINOMIAL:
            step = eta[k] * multinomial_dl(z, k, c, si)
        elif active[k]:
            step = eta[k] * output_dloss(
                cfg, so[k].scale * sparse_dot(coef + k * ko, vs, xd, xi, nnz)
                + params[K * d + k], yi, si, k, pos_w, neg_w, obj)
        else:
            continue
        csr_step(&so[k], l2_decay(cfg, eta[k]), step, coef + k * ko, vs, avg_params + k * d,
                 d, xd, xi, nnz, track_avg, track_norms)
        intercept_step(cfg, params + K * d + k, step)


cdef inline void csr_step(SparseOut* o, double decay, double step, floating* v,
                          Py_ssize_t vs, double* D, Py_ssize_t d, const floating* xd,
                          const index_t* xi, Py_ssize_t nnz, bint track_avg,
                          bint track_norms) noexcept nogil:
    """w <- decay * w - step * x for w = scale * v: the decay through the scale, the
    step on the row's coordinates, in scikit-learn's order."""
    if decay != 1.0:
        scale_output(o, decay, v, vs, D, d, track_avg, track_norms)
    if step != 0.0:
        add_row(o, v, vs, D, xd, xi, nnz, -step / o.scale, track_avg, track_norms)


cdef inline void dense_scaled_step(SparseOut* o, double decay, double step, floating* v,
                                  const floating* x, Py_ssize_t d) noexcept nogil:
    """csr_step for a dense row (the per-sample dense kernels): the decay through the
    scale, the step on all d coordinates, keeping sum v_j^2 for the penalty."""
    if decay != 1.0:
        scale_output(o, decay, v, 1, NULL, d, False, True)
    if step != 0.0:
        o.sq = axpy_sum_squares(v, x, d, -step / o.scale)


cdef inline void sparse_dots(const floating* coef, Py_ssize_t K, const floating* xd,
                             const index_t* xi, Py_ssize_t nnz, double* acc) noexcept nogil:
    """acc[k] = sum_e coef[xi[e] * K + k] * xd[e] for all K outputs of a column-major
    coef in one pass over the row. Each sum runs over e in order with the arithmetic of
    sparse_dot, so the bits are those of K separate passes."""
    cdef Py_ssize_t e, k
    cdef const floating* w
    cdef floating x
    for k in range(K):
        acc[k] = 0.0
    for e in range(nnz):
        w = coef + xi[e] * K
        x = xd[e]
        for k in range(K):
            acc[k] += w[k] * x


cdef void sgd_single_row_csr_multi(
    const floating* xd, const index_t* xi, Py_ssize_t nnz, floating yi, floating si,
    floating* params, floating* coef, SparseOut* so,
    double* avg_params, Py_ssize_t K, Py_ssize_t d,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    const double* eta, EpochConfig* cfg, bint track_avg, bint track_norms,
    double* obj, floating* z, double* buf, Py_ssize_t* ks,
) noexcept nogil:
    """sgd_single_row_csr for K > 1 outputs held column-major (coefficient j of output
    k at coef[j * K + k]): the K dot products in one pass over the row, then the updates
    of the outputs that move, one add_row each (the row's coefficients are in cache by
    then). The outputs share no coefficient, so each gets the bits of
    sgd_single_row_csr. buf: scratch (2 K,), ks: scratch (K,)."""
    cdef Py_ssize_t k, c = 0, nk = 0
    cdef double step
    cdef double* acc = buf
    cdef double* cs = buf + K
    sparse_dots(coef, K, xd, xi, nnz, acc)
    if cfg.target == TARGET_MULTINOMIAL:
        for k in range(K):
            z[k] = <floating>(so[k].scale * acc[k] + params[K * d + k])
        c = multinomial_loss(cfg, z, K, yi, si, obj)
    for k in range(K):
        if cfg.target == TARGET_MULTINOMIAL:
            step = eta[k] * multinomial_dl(z, k, c, si)
        elif active[k]:
            step = eta[k] * output_dloss(cfg, so[k].scale * acc[k] + params[K * d + k], yi,
                                         si, k, pos_w, neg_w, obj)
        else:
            continue
        # The decays now, the row's additions below (one pass over the row per output
        # that moves, its coefficients in cache by then).
        csr_step(&so[k], l2_decay(cfg, eta[k]), 0.0, coef + k, K, avg_params + k * d, d,
                 xd, xi, nnz, track_avg, track_norms)
        if step != 0.0:
            ks[nk] = k
            cs[nk] = -step / so[k].scale
            nk += 1
        intercept_step(cfg, params + K * d + k, step)
    for c in range(nk):
        k = ks[c]
        add_row(&so[k], coef + k, K, avg_params + k * d, xd, xi, nnz, cs[c], track_avg,
                track_norms)


cdef void chunk_gradient_csr(
    const floating* data,       # IN  (nnz,)
    const index_t* indices,     # IN  (nnz,)
    const index_t* indptr,      # IN  (n_samples + 1,)
    const floating* y,          # IN  (n_samples,)
    const floating* sw,         # IN  (n_samples,)
    const intp_t* order,        # IN  visiting order
    Py_ssize_t p0,              # IN  first position in `order` of this chunk
    Py_ssize_t p1,              # IN  one past its last position
    const floating* params,     # IN  (P,) intercepts at K * d + k
    const floating* coef,       # IN  coefficient j of output k at k * ko + j * vs
    Py_ssize_t ko,
    Py_ssize_t vs,
    const SparseOut* so,        # IN  (K,) scales
    const index_t* loc,         # IN  (entries of the chunk,) each entry's slot in `grad`
    Py_ssize_t T,               # IN  slots of the chunk
    Py_ssize_t K,
    Py_ssize_t d,
    const floating* pos_w,
    const floating* neg_w,
    const unsigned char* active,
    EpochConfig* cfg,
    floating* grad,             # OUT (K * T + K,) row k: sum of s_i dl/dz x_i per slot;
                                #     then the K intercept sums
    double* obj,                # OUT (K,)
    floating* z,                # scratch (K,)
) noexcept nogil:
    """The chunk's gradient sums over its own compact slots (see compact_batch): the
    buffer to clear and, later, to reduce holds the chunk's columns only. Its rows
    were read by compact_batch just before, so they are in cache."""
    cdef Py_ssize_t p, i, k, e, a, b, c = 0, q = 0
    cdef floating* g
    cdef double dl
    memset(grad, 0, (K * T + K) * sizeof(floating))
    memset(obj, 0, K * sizeof(double))
    for p in range(p0, p1):
        i = order[p]
        a = indptr[i]
        b = indptr[i + 1]
        if cfg.target == TARGET_MULTINOMIAL:
            for k in range(K):
                z[k] = <floating>(so[k].scale * sparse_dot(coef + k * ko, vs, data + a,
                                                           indices + a, b - a)
                                  + params[K * d + k])
            c = multinomial_loss(cfg, z, K, y[i], sw[i], obj)
        for k in range(K):
            if cfg.target == TARGET_MULTINOMIAL:
                dl = multinomial_dl(z, k, c, sw[i])
            elif active[k]:
                dl = output_dloss(cfg, so[k].scale * sparse_dot(coef + k * ko, vs, data + a,
                                                                indices + a, b - a)
                                  + params[K * d + k], y[i], sw[i], k, pos_w, neg_w, obj)
            else:
                continue
            if dl != 0.0:
                g = grad + k * T
                for e in range(a, b):
                    g[loc[q + e - a]] = g[loc[q + e - a]] + <floating>dl * data[e]
                grad[K * T + k] += <floating>dl
        q += b - a


cdef struct BatchLayout:
    # Filled by compact_batch for one batch of nch chunks (nch <= MAX_CHUNKS).
    Py_ssize_t T             # distinct columns of the batch (global slots 0..T-1)
    Py_ssize_t nnz           # stored entries of the batch
    Py_ssize_t nch
    Py_ssize_t eofs[MAX_CHUNKS + 1]  # chunk c's entries are loc[eofs[c]:eofs[c + 1]]
    Py_ssize_t lofs[MAX_CHUNKS + 1]  # its columns (global slots) lcols[lofs[c]:lofs[c + 1]]


cdef bint compact_batch(
    const index_t* indices, const index_t* indptr, const intp_t* order,
    Py_ssize_t start, Py_ssize_t mb, Py_ssize_t n_order,
    index_t* pos,       # IN/OUT (d,) -1 where unset; set at the batch's columns
    index_t* cols,      # OUT    (T,) the batch's columns in order of first appearance
    Py_ssize_t cap,     # IN     room in cols
    index_t* loc,       # OUT    (nnz,) per entry, in batch order: its slot in its chunk
                        #        (the global slot when the batch is one chunk)
    index_t* lcols,     # OUT    per chunk, the global slots of its own slots
    Py_ssize_t loc_cap, # IN     room in loc and in lcols
    Py_ssize_t* stamp,  # IN/OUT (cap,) per global slot, the last chunk stamp that listed it
    index_t* lidx,      # scratch (cap,) that chunk's slot for it
    Py_ssize_t stamp0,  # IN     a stamp above every one in `stamp` (chunk c uses stamp0 + c)
    BatchLayout* lay,   # OUT
) noexcept nogil:
    """Give the batch's columns global slots (for the optimizer step) and each chunk
    its own compact slots (for the gradient sums), in one pass over the batch's
    entries. So a chunk clears and the reduction adds only what the chunk touched: the
    batch costs O(its entries), not O(columns touched x chunks). Returns False if a
    capacity is exceeded."""
    cdef Py_ssize_t nch = lay.nch, c, p, p1, i, e, j, g, T = 0, q = 0, nl = 0, tc
    cdef Py_ssize_t s
    for c in range(nch):
        lay.eofs[c] = q
        lay.lofs[c] = nl
        s = stamp0 + c
        tc = 0
        p1 = start + ((c + 1) * mb) // nch
        for p in range(start + (c * mb) // nch, p1):
            # The batch's rows are first read here, in a shuffled order: ask for them
            # ahead in two stages (indptr, then the entries it points at).
            if p + 2 * PREFETCH_ROWS < n_order:
                cgd_prefetch(indptr + order[p + 2 * PREFETCH_ROWS], 2 * sizeof(index_t))
            if p + PREFETCH_ROWS < n_order:
                i = order[p + PREFETCH_ROWS]
                cgd_prefetch(indices + indptr[i], (indptr[i + 1] - indptr[i]) * sizeof(index_t))
            i = order[p]
            if q + indptr[i + 1] - indptr[i] > loc_cap:
                lay.T = T
                return False
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                g = pos[j]
                if g < 0:
                    if T >= cap:
                        lay.T = T
                        return False
                    g = T
                    pos[j] = <index_t>g
                    cols[T] = <index_t>j
                    T += 1
                if nch == 1:
                    loc[q] = <index_t>g
                else:
                    if stamp[g] != s:
                        stamp[g] = s
                        lidx[g] = <index_t>tc
                        lcols[nl + tc] = <index_t>g
                        tc += 1
                    loc[q] = lidx[g]
                q += 1
        nl += tc
    lay.eofs[nch] = q
    lay.lofs[nch] = nl
    lay.T = T
    lay.nnz = q
    return True


cdef void batch_gradient_csr(
    const floating* data, const index_t* indices, const index_t* indptr,
    const floating* y, const floating* sw, const intp_t* order, Py_ssize_t start,
    Py_ssize_t mb, const floating* params, const floating* coef,
    Py_ssize_t ko, Py_ssize_t vs, const SparseOut* so, const index_t* loc,
    const index_t* lcols, BatchLayout* lay, Py_ssize_t K, Py_ssize_t d,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    EpochConfig* cfg,
    floating* work_grad,        # OUT the batch's gradient sums, K * T + K entries at
                                #     the returned offset
    double[:, ::1] work_obj,    # OUT row 0: the batch's loss sums
    floating[:, ::1] work_z,    # scratch
    Py_ssize_t* grad_at,        # OUT offset of the sums in work_grad
) noexcept nogil:
    """Gradient sums of one batch over its T touched columns: each fixed chunk of rows
    into its own compact slots, then added into the global slots chunk by chunk in
    chunk order, so the bits never depend on the thread count. (Chunk c's buffer
    starts at K * (lofs[c] + c); the global sums follow the last chunk's.)"""
    cdef Py_ssize_t nch = lay.nch, T = lay.T, c, k, l, tc, nt = cfg.n_threads
    cdef floating* g
    cdef const floating* gc
    cdef const index_t* lc
    if <double>lay.nnz * K * SPARSE_ENTRY_WORK < cfg.parallel_min_work:
        nt = 1
    if nch == 1:
        chunk_gradient_csr(data, indices, indptr, y, sw, order, start, start + mb,
                           params, coef, ko, vs, so, loc, T, K, d, pos_w, neg_w,
                           active, cfg, work_grad, &work_obj[0, 0], &work_z[0, 0])
        grad_at[0] = 0
        return
    if nt == 1:
        for c in range(nch):
            chunk_gradient_csr(data, indices, indptr, y, sw, order,
                               start + (c * mb) // nch, start + ((c + 1) * mb) // nch,
                               params, coef, ko, vs, so, loc + lay.eofs[c],
                               lay.lofs[c + 1] - lay.lofs[c], K, d, pos_w, neg_w,
                               active, cfg, work_grad + K * (lay.lofs[c] + c),
                               &work_obj[c, 0], &work_z[c, 0])
    else:
        for c in prange(nch, schedule="static", num_threads=nt):
            chunk_gradient_csr(data, indices, indptr, y, sw, order,
                               start + (c * mb) // nch, start + ((c + 1) * mb) // nch,
                               params, coef, ko, vs, so, loc + lay.eofs[c],
                               lay.lofs[c + 1] - lay.lofs[c], K, d, pos_w, neg_w,
                               active, cfg, work_grad + K * (lay.lofs[c] + c),
                               &work_obj[c, 0], &work_z[c, 0])
    grad_at[0] = K * (lay.lofs[nch] + nch)
    g = work_grad + grad_at[0]
    memset(g, 0, (K * T + K) * sizeof(floating))
    for c in range(nch):
        tc = lay.lofs[c + 1] - lay.lofs[c]
        gc = work_grad + K * (lay.lofs[c] + c)
        lc = lcols + lay.lofs[c]
        for k in range(K):
            for l in range(tc):
                g[k * T + lc[l]] = g[k * T + lc[l]] + gc[k * tc + l]
            g[K * T + k] = g[K * T + k] + gc[K * tc + k]
    for c in range(1, nch):
        for k in range(K):
            work_obj[0, k] += work_obj[c, k]


cdef void chunk_dloss_csr(
    const floating* data, const index_t* indices, const index_t* indptr,
    const floating* y, const floating* sw, const intp_t* order,
    Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t n_order,
    const floating* params,     # IN  (P,) intercepts at K * d + k
    const floating* coef,       # IN  coefficient j of output k at k * ko + j * vs
    Py_ssize_t ko, Py_ssize_t vs,
    const SparseOut* so, Py_ssize_t K, Py_ssize_t d,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    EpochConfig* cfg,
    double* dls,                # OUT (p1 - p0, K) s_i dl/dz per row and output (0 when
                                #     the output is not training)
    double* obj,                # OUT (K,) sum over the chunk of the losses
    floating* z,                # scratch (K,)
) noexcept nogil:
    """Loss derivatives of a chunk of rows at the batch's starting weights (plain SGD
    needs nothing else from a row before its step)."""
    cdef Py_ssize_t p, i, k, a, b, c, nxt
    cdef double* r
    memset(obj, 0, K * sizeof(double))
    for p in range(p0, p1):
        if p + 2 * PREFETCH_ROWS < n_order:
            cgd_prefetch(indptr + order[p + 2 * PREFETCH_ROWS], 2 * sizeof(index_t))
        if p + PREFETCH_ROWS < n_order:
            nxt = order[p + PREFETCH_ROWS]
            cgd_prefetch(data + indptr[nxt], (indptr[nxt + 1] - indptr[nxt]) * sizeof(floating))
            cgd_prefetch(indices + indptr[nxt],
                         (indptr[nxt + 1] - indptr[nxt]) * sizeof(index_t))
        i = order[p]
        a = indptr[i]
        b = indptr[i + 1]
        r = dls + (p - p0) * K
        if K > 1 and ko == 1 and vs == K:
            sparse_dots(coef, K, data + a, indices + a, b - a, r)
        else:
            for k in range(K):
                r[k] = sparse_dot(coef + k * ko, vs, data + a, indices + a, b - a)
        if cfg.target == TARGET_MULTINOMIAL:
            for k in range(K):
                z[k] = <floating>(so[k].scale * r[k] + params[K * d + k])
            c = multinomial_loss(cfg, z, K, y[i], sw[i], obj)
            for k in range(K):
                r[k] = multinomial_dl(z, k, c, sw[i])
        else:
            for k in range(K):
                r[k] = (output_dloss(cfg, so[k].scale * r[k] + params[K * d + k], y[i], sw[i],
                                     k, pos_w, neg_w, obj) if active[k] else 0.0)


cdef void batch_dloss_csr(
    const floating* data, const index_t* indices, const index_t* indptr,
    const floating* y, const floating* sw, const intp_t* order, Py_ssize_t start,
    Py_ssize_t mb, Py_ssize_t n_order, const floating* params, const floating* coef,
    Py_ssize_t ko, Py_ssize_t vs, const SparseOut* so, Py_ssize_t nnz_batch,
    Py_ssize_t K, Py_ssize_t d,
    const floating* pos_w, const floating* neg_w, const unsigned char* active,
    EpochConfig* cfg,
    double* dls,                # OUT (mb, K)
    double[:, ::1] work_obj,    # OUT row 0: the batch's loss sums
    floating[:, ::1] work_z,    # scratch
) noexcept nogil:
    """chunk_dloss_csr over the batch's fixed chunks (threads take whole chunks; each
    row's values are computed alone, and the chunks' loss sums are added in chunk
    order, so no bit depends on the thread count)."""
    cdef Py_ssize_t nch = n_chunks_for(mb), c, k, nt = cfg.n_threads
    if <double>nnz_batch * K * SPARSE_ENTRY_WORK < cfg.parallel_min_work:
        nt = 1
    if nch == 1 or nt == 1:
        for c in range(nch):
            chunk_dloss_csr(data, indices, indptr, y, sw, order,
                            start + (c * mb) // nch, start + ((c + 1) * mb) // nch, n_order,
                            params, coef, ko, vs, so, K, d, pos_w, neg_w, active, cfg,
                            dls + ((c * mb) // nch) * K, &work_obj[c, 0], &work_z[c, 0])
    else:
        for c in prange(nch, schedule="static", num_threads=nt):
            chunk_dloss_csr(data, indices, indptr, y, sw, order,
                            start + (c * mb) // nch, start + ((c + 1) * mb) // nch, n_order,
                            params, coef, ko, vs, so, K, d, pos_w, neg_w, active, cfg,
                            dls + ((c * mb) // nch) * K, &work_obj[c, 0], &work_z[c, 0])
    for c in range(1, nch):
        for k in range(K):
            work_obj[0, k] += work_obj[c, k]


cdef void step_touched(
    EpochConfig* cfg, SparseOut* o, floating* v, Py_ssize_t vs, double* D, floating* s0,
    floating* s1,
    const floating* g, double gscale, const index_t* cols, Py_ssize_t T, Py_ssize_t d,
    double lr, double t, bint plain, floating* tw, floating* ts0, floating* ts1,
    bint track_avg, bint track_norms,
) noexcept nogil:
    """The optimizer step of one output's coefficients on a batch's touched columns.

    Plain SGD: the L2 decay goes to the scale, the gradient step to the touched v_j.
    Momentum / Adam / Adagrad (the scale stays 1): the dense step on the gathered
    touched coordinates (same arithmetic as the dense kernel), scattered back."""
    cdef Py_ssize_t e, j
    cdef double decay, coef
    cdef floating old
    if plain:
        decay = 1.0 - lr * cfg.l2
        if decay < 0.0:
            decay = 0.0
        if decay != 1.0:
            scale_output(o, decay, v, vs, D, d, track_avg, track_norms)
        coef = -(lr * gscale) / o.scale
        for e in range(T):
            j = cols[e]
            old = v[j * vs]
            v[j * vs] = <floating>(old + g[e] * coef)
            if track_avg or track_norms:
                track(o, D + j, old, v[j * vs], track_avg, track_norms)
        return
    for e in range(T):
        j = cols[e]
        tw[e] = v[j * vs]
        ts0[e] = s0[j]
        ts1[e] = s1[j]
    optimizer_step(&cfg.optim, tw, g, gscale, ts0, ts1, T, lr, cfg.l2, t)
    for e in range(T):
        j = cols[e]
        old = v[j * vs]
        v[j * vs] = tw[e]
        s0[j] = ts0[e]
        s1[j] = ts1[e]
        if track_avg or track_norms:
            track(o, D + j, old, v[j * vs], track_avg, track_norms)


cdef inline void average_step(SparseOut* o, double* D, Py_ssize_t d, double count,
                              double* avg_b, const floating* b) noexcept nogil:
    """One averaging step A <- A + (w - A) / count through the scalars (see above); the
    first (count 1) starts the mean at w, which clears D once (O(d))."""
    cdef double mu
    if count <= 1.0:
        memset(D, 0, d * sizeof(double))
        o.avg_g = 1.0
        o.avg_c = o.scale
    else:
        mu = 1.0 / count
        o.avg_g = o.avg_g * (1.0 - mu)
        o.avg_c = o.avg_c + mu * o.scale / o.avg_g
    running_average(avg_b, b, 1, count)


cdef void l1_touched(SparseOut* o, floating* v, Py_ssize_t vs, floating* q, double* D,
                     const index_t* cols, Py_ssize_t T, double u,
                     bint track_avg, bint track_norms) noexcept nogil:
    """Cumulative L1 penalty (Tsuruoka et al., 2009) on the touched coordinates only:
    each is pulled towards zero by what it is owed, u - q_j, in units of w = scale * v,
    clipping at zero."""
    cdef Py_ssize_t e, j
    cdef double s = o.scale, nv
    cdef floating old
    for e in range(T):
        j = cols[e]
        old = v[j * vs]
        if old > 0:
            nv = old - (u + q[j]) / s
            v[j * vs] = <floating>(nv if nv > 0.0 else 0.0)
        elif old < 0:
            nv = old + (u - q[j]) / s
            v[j * vs] = <floating>(nv if nv < 0.0 else 0.0)
        else:
            continue
        q[j] = <floating>(q[j] + s * (<double>v[j * vs] - old))
        if track_avg or track_norms:
            track(o, D + j, old, v[j * vs], track_avg, track_norms)


cdef inline double penalty_of(EpochConfig* cfg, const SparseOut* o) noexcept nogil:
    """R(w) = l2/2 ||w||^2 + l1 ||w||_1 of one output, from the tracked sums."""
    cdef double r = 0.0
    if cfg.l2 != 0.0:
        r += 0.5 * cfg.l2 * o.scale * o.scale * o.sq
    if cfg.l1 != 0.0:
        r += cfg.l1 * o.scale * o.ab
    return r


cdef inline double stop_penalty_of(EpochConfig* cfg, const SparseOut* o) noexcept nogil:
    """The penalty term of scikit-learn's sparse stopping objective (see
    linear_epoch_csr)."""
    cdef double r = 0.0
    if cfg.l2 != 0.0:
        r += 0.5 * cfg.l2 * o.rsq
    if cfg.l1 != 0.0:
        r += cfg.l1 * o.rab
    return r


def linear_epoch_csr(
    const floating[::1] X_data,         # IN     (nnz,) CSR values
    const index_t[::1] X_indices,       # IN     (nnz,) column indices (any order, duplicates add)
    const index_t[::1] X_indptr,        # IN     (n_samples + 1,)
    const floating[::1] y,              # IN     (n_samples,)
    const floating[::1] sample_weight,  # IN     (n_samples,)
    const intp_t[::1] order,            # IN     (n_train,) rows in visiting order
    const floating[::1] pos_weight,     # IN     (K,)
    const floating[::1] neg_weight,     # IN     (K,)
    const unsigned char[::1] active,    # IN     (K,)
    const double[::1] eta_base,         # IN     (K,)
    const floating[::1] params,         # IN     (P,) coefficients then intercepts
    floating[::1] params_out,           # OUT    (P,) the same after the epoch (another
                                        #        buffer: a failed or interrupted epoch
                                        #        leaves `params` as it was)
    floating[::1] coef_out,             # OUT    (K * n_features,) a copy of the
                                        #        coefficients of params_out, or empty
    floating[:, ::1] opt_state,         # IN/OUT (2, P)
    floating[::1] l1_q,                 # IN/OUT (P,)
    double[::1] l1_u,                   # IN/OUT (K,)
    double[::1] avg_params,             # IN/OUT (P,)
    double[::1] avg_n,                  # IN/OUT (K,)
    floating[::1] work_grad,            # scratch (K * (E_max + T_max + chunks + 1),), E_max
                                        #         the most entries a batch holds; may be
                                        #         empty for per-sample plain SGD
    floating[:, ::1] work_touched,      # scratch (3, T_max) gathered coordinates / moments
    index_t[::1] work_pos,              # scratch (n_features,) all -1 on entry and on exit;
                                        #         may be empty for per-sample plain SGD
    index_t[::1] work_cols,             # scratch (T_max,) a batch's touched columns
    index_t[:, ::1] work_loc,           # scratch (2, E_max) per entry its chunk slot; per
                                        #         chunk its slots' columns
    floating[::1] work_coef,            # scratch (K * n_features,) for K > 1, else empty
    double[:, ::1] work_obj,            # scratch (MAX_CHUNKS, K)
    floating[:, ::1] work_z,            # scratch (MAX_CHUNKS, K)
    double[:, ::1] work_k,              # scratch (2, K)
    double[::1] obj_out,                # OUT    (K,) sum over training rows of l_i + R(w)
    double[::1] stop_out,               # OUT    (K,) the same sum with the stopping penalty
    double[:, ::1] stop_norms,          # IN/OUT (2, K) stopping norms (NaN: start from w's)
    dict config,
    double t,                           # IN     number of the first update (from 1)
):
    """Train one epoch over CSR rows in place (see the section comment above). Returns
    ``(status, t)`` as :func:`linear_epoch`.

    ``stop_out`` is what the stopping rule reads. For plain per-sample SGD
    (batch_size 1) it is scikit-learn's sparse objective, so that fits stop at the same
    epoch: its penalty is that of the norms scikit-learn keeps, which a step recomputes
    over the columns of the row it adds (the other coefficients are left out) and a
    decay scales; the L1 truncation leaves them as they are. These norms start from the
    full norms of w at the first epoch of a call and carry over between epochs (in
    ``stop_norms``). Otherwise ``stop_out`` equals ``obj_out``, the true objective."""
    cdef EpochConfig cfg = read_config(config)
    cdef Py_ssize_t n = X_indptr.shape[0] - 1, K = eta_base.shape[0]
    cdef Py_ssize_t P = params.shape[0], d = P // K - 1, n_order = order.shape[0]
    cdef Py_ssize_t m = cfg.batch_size, start, mb, k, j, T, T_cap = work_cols.shape[0]
    cdef Py_ssize_t a, nnz_batch, nxt, grad_at = 0, stamp_next = 0
    cdef Py_ssize_t loc_cap = work_loc.shape[1]
    cdef bint batch_plain
    cdef double* dls = NULL
    cdef double row_nnz_mean = (<double>X_indptr[n] / n) if n > 0 else 0.0
    cdef Py_ssize_t* stamp = NULL
    cdef index_t* lidx = NULL
    cdef BatchLayout lay
    cdef int status = STATUS_OK
    cdef double* eta
    cdef double* reg
    cdef double obj_batch, gscale
    cdef double work = 0.0, next_clock = 0.0, last_check
    cdef bint plain = (cfg.optim.solver == SOLVER_SGD and cfg.optim.momentum == 0.0)
    cdef bint multinomial = cfg.target == TARGET_MULTINOMIAL
    cdef bint track_avg = cfg.average > 0.0
    cdef bint track_norms = cfg.l1 != 0.0 or cfg.l2 != 0.0
    cdef bint sklearn_stop = m == 1 and plain
    # Plain SGD batches without an L1 part step row by row (see the loop); the others
    # sum the batch's gradient per column first.
    batch_plain = plain and cfg.l1 == 0.0 and m > 1
    cdef floating* prm = &params_out[0]
    cdef const floating* pin = &params[0]
    cdef bint coef_done = False, nonfinite = False
    cdef floating* g
    cdef const floating* xd0
    cdef const index_t* xi0
    cdef const index_t* ip = &X_indptr[0]
    cdef const index_t* touched = NULL
    cdef Py_ssize_t n_touched = 0
    cdef SparseOut* so
    cdef double* rowbuf
    cdef double sk
    cdef Py_ssize_t jb, je
    cdef Py_ssize_t* rowks
    # Coefficient j of output k is coef[k * ko + j * vs]. With several outputs the
    # epoch works on a column-major copy (ko 1, vs K): the K coefficients of a column
    # share cache lines, so a row's K dot products and updates cost about one miss per
    # entry instead of K.
    cdef floating* coef = prm
    cdef Py_ssize_t ko = d, vs = 1

    if y.shape[0] != n or sample_weight.shape[0] != n or P != K * (d + 1) or d < 1 \
            or params_out.shape[0] != P or coef_out.shape[0] not in (0, K * d):
        raise ValueError("inconsistent shapes passed to linear_epoch_csr")
    if X_indices.shape[0] != X_data.shape[0] or X_indptr[n] > X_data.shape[0]:
        raise ValueError("inconsistent CSR arrays passed to linear_epoch_csr")
    if opt_state.shape[0] < 2 or opt_state.shape[1] != P or l1_q.shape[0] != P \
            or avg_params.shape[0] != P or l1_u.shape[0] != K or avg_n.shape[0] != K:
        raise ValueError("optimizer state does not match the parameters")
    nxt = grad_rows_needed(m, n_order, plain)
    if nxt > 0 and (
            work_pos.shape[0] != d or work_loc.shape[0] < 2
            or work_grad.shape[0] < K * (loc_cap + T_cap + nxt + 1)
            or work_touched.shape[0] < 3 or work_touched.shape[1] < T_cap):
        raise ValueError("work buffers do not match the parameters")
    if K > 1 and work_coef.shape[0] != K * d:
        raise ValueError("work buffers do not match the parameters")
    if (work_obj.shape[0] < MAX_CHUNKS or work_obj.shape[1] != K
            or work_z.shape[0] < MAX_CHUNKS or work_z.shape[1] != K
            or work_k.shape[0] < 2 or work_k.shape[1] != K):
        raise ValueError("work buffers do not match the parameters")
    if pos_weight.shape[0] != K or neg_weight.shape[0] != K or active.shape[0] != K \
            or obj_out.shape[0] != K or stop_out.shape[0] != K or stop_norms.shape[0] != 2 \
            or stop_norms.shape[1] != K:
        raise ValueError("per-output arrays must have one entry per output")
    obj_out[:] = 0.0
    stop_out[:] = 0.0
    if n_order == 0:
        params_out[:] = params
        if coef_out.shape[0] > 0:
            coef_out[:] = params[:K * d]
        return STATUS_OK, t
    eta = &work_k[0, 0]
    reg = &work_k[1, 0]
    # Empty arrays have no element 0 to take the address of.
    xd0 = &X_data[0] if X_data.shape[0] > 0 else NULL
    xi0 = &X_indices[0] if X_indices.shape[0] > 0 else NULL
    so = <SparseOut*>malloc(K * sizeof(SparseOut))
    rowbuf = <double*>malloc(2 * K * sizeof(double))
    rowks = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t))
    if batch_plain:
        dls = <double*>malloc(min(m, n_order) * K * sizeof(double))
    if nxt > 0:
        # Chunk stamps of the global slots (see compact_batch): none is >= 0 yet.
        stamp = <Py_ssize_t*>malloc((T_cap + 1) * sizeof(Py_ssize_t))
        lidx = <index_t*>malloc((T_cap + 1) * sizeof(index_t))
        if stamp != NULL:
            for j in range(T_cap + 1):
                stamp[j] = -1
    if so == NULL or rowbuf == NULL or rowks == NULL or (nxt > 0 and (stamp == NULL
                                                                      or lidx == NULL)) \
            or (batch_plain and dls == NULL):
        free(so)
        free(rowbuf)
        free(rowks)
        free(stamp)
        free(lidx)
        free(dls)
        raise MemoryError()
    try:
        with nogil:
            # The epoch trains on params_out (K > 1: on the column-major copy, written
            # back to params_out at the end), never on params.
            if K > 1:
                coef = &work_coef[0]
                ko = 1
                vs = K
                # In blocks of columns: contiguous reads of each output's row, writes
                # within a block that stays in cache.
                for jb in range((d + TRANSPOSE_BLOCK - 1) // TRANSPOSE_BLOCK):
                    je = min((jb + 1) * TRANSPOSE_BLOCK, d)
                    for k in range(K):
                        for j in range(jb * TRANSPOSE_BLOCK, je):
                            coef[j * K + k] = pin[k * d + j]
                memcpy(prm + K * d, pin + K * d, K * sizeof(floating))
            elif prm != pin:
                memcpy(prm, pin, P * sizeof(floating))
            for k in range(K):
                so[k].scale = 1.0
                so[k].avg_g = 1.0
                so[k].avg_c = 0.0
                so[k].sq = 0.0
                so[k].ab = 0.0
                if track_norms:
                    # From the row-major parameters, whose values the copy holds
                    # exactly: one contiguous pass per output instead of a strided one.
                    norms_of(&so[k], pin + k * d, 1, d)
                reg[k] = penalty_of(&cfg, &so[k])
                if isnan(stop_norms[0, k]):
                    stop_norms[0, k] = so[k].sq
                    stop_norms[1, k] = so[k].ab
                so[k].rsq = stop_norms[0, k]
                so[k].rab = stop_norms[1, k]
                so[k].stop_reg = stop_penalty_of(&cfg, &so[k])
            last_check = cgd_now()
            start = 0
            while start < n_order:
                mb = min(m, n_order - start)
                batch_rates(&cfg, eta_base, eta, K, t)
                if mb == 1 and plain:
                    for k in range(K):
                        work_obj[0, k] = 0.0
                    # Two stages: the row's indptr entries 2 * PREFETCH_ROWS ahead (in a
                    # shuffled order each is a miss, and reading one to find the row
                    # would stall here), its entries PREFETCH_ROWS ahead.
                    if start + 2 * PREFETCH_ROWS < n_order:
                        cgd_prefetch(ip + order[start + 2 * PREFETCH_ROWS], 2 * sizeof(index_t))
                    if start + PREFETCH_ROWS < n_order:
                        nxt = order[start + PREFETCH_ROWS]
                        cgd_prefetch(xd0 + ip[nxt], (ip[nxt + 1] - ip[nxt]) * sizeof(floating))
                        cgd_prefetch(xi0 + ip[nxt], (ip[nxt + 1] - ip[nxt]) * sizeof(index_t))
                        cgd_prefetch(&y[nxt], sizeof(floating))
                        cgd_prefetch(&sample_weight[nxt], sizeof(floating))
                    # With several outputs, the coefficients of a row whose entries
                    # were asked for PREFETCH_ROWS / 2 rows ago (by now in cache): a
                    # column's K coefficients are a cache miss of their own. (With one
                    # output the vector mostly stays in cache and this measured slower.)
                    if K > 1 and start + PREFETCH_ROWS // 2 < n_order:
                        nxt = order[start + PREFETCH_ROWS // 2]
                        for a in range(ip[nxt], ip[nxt + 1]):
                            cgd_prefetch(coef + xi0[a] * vs, K * sizeof(floating))
                    j = order[start]
                    a = ip[j]
                    touched = xi0 + a
                    n_touched = ip[j + 1] - a
                    nnz_batch = n_touched
                    if K > 1:
                        sgd_single_row_csr_multi(
                            xd0 + a, touched, n_touched, y[j], sample_weight[j], prm, coef,
                            so, &avg_params[0], K, d, &pos_weight[0], &neg_weight[0],
                            &active[0], eta, &cfg, track_avg, track_norms, &work_obj[0, 0],
                            &work_z[0, 0], rowbuf, rowks)
                    else:
                        sgd_single_row_csr(xd0 + a, touched, n_touched, y[j],
                                           sample_weight[j], prm, coef, ko, vs, so,
                                           &avg_params[0], K, d, &pos_weight[0],
                                           &neg_weight[0], &active[0], eta, &cfg, track_avg,
                                           track_norms, &work_obj[0, 0], &work_z[0, 0])
                elif batch_plain:
                    # Plain SGD on a batch: the loss derivatives of all its rows at the
                    # batch's starting weights, then w <- decay * w - eta / mb * sum_i
                    # dl_i x_i applied row by row (in batch order), so the step costs the
                    # batch's entries and needs no gradient buffer, reduction or column
                    # list. (The objective's penalty: as below.)
                    nnz_batch = <Py_ssize_t>(mb * row_nnz_mean)
                    batch_dloss_csr(xd0, xi0, ip, &y[0], &sample_weight[0], &order[0],
                                    start, mb, n_order, prm, coef, ko, vs, so, nnz_batch,
                                    K, d, &pos_weight[0], &neg_weight[0], &active[0], &cfg,
                                    dls, work_obj, work_z)
                    gscale = 1.0 / mb
                    for k in range(K):
                        rowbuf[k] = 0.0
                        if not (multinomial or active[k]):
                            continue
                        csr_step(&so[k], l2_decay(&cfg, eta[k]), 0.0, coef + k * ko, vs,
                                 &avg_params[k * d], d, xd0, xi0, 0, track_avg, track_norms)
                        rowbuf[k] = -(eta[k] * gscale) / so[k].scale
                    for a in range(mb):
                        j = order[start + a]
                        for k in range(K):
                            if dls[a * K + k] != 0.0:
                                add_row(&so[k], coef + k * ko, vs, &avg_params[k * d],
                                        xd0 + ip[j], xi0 + ip[j], ip[j + 1] - ip[j],
                                        dls[a * K + k] * rowbuf[k], track_avg, track_norms)
                    if cfg.fit_intercept:
                        for k in range(K):
                            if not (multinomial or active[k]):
                                continue
                            sk = 0.0
                            for a in range(mb):
                                sk += dls[a * K + k]
                            intercept_step(&cfg, prm + K * d + k, eta[k] * gscale * sk)
                else:
                    lay.nch = n_chunks_for(mb)
                    if not compact_batch(xi0, ip, &order[0], start, mb, n_order, &work_pos[0],
                                         &work_cols[0], T_cap, &work_loc[0, 0],
                                         &work_loc[1, 0], loc_cap, stamp, lidx, stamp_next,
                                         &lay):
                        status = STATUS_WORK_TOO_SMALL
                        for j in range(lay.T):
                            work_pos[work_cols[j]] = -1
                        break
                    stamp_next += lay.nch
                    T = lay.T
                    nnz_batch = lay.nnz
                    touched = &work_cols[0]
                    n_touched = T
                    batch_gradient_csr(xd0, xi0, ip, &y[0], &sample_weight[0], &order[0],
                                       start, mb, prm, coef, ko, vs, so, &work_loc[0, 0],
                                       &work_loc[1, 0], &lay, K, d, &pos_weight[0],
                                       &neg_weight[0], &active[0], &cfg, &work_grad[0],
                                       work_obj, work_z, &grad_at)
                    for j in range(T):
                        work_pos[work_cols[j]] = -1
                    g = &work_grad[grad_at]
                    gscale = 1.0 / mb
                    for k in range(K):
                        if not (multinomial or active[k]):
                            continue
                        step_touched(&cfg, &so[k], coef + k * ko, vs, &avg_params[k * d],
                                     &opt_state[0, k * d], &opt_state[1, k * d],
                                     g + k * T, gscale, touched, T, d, eta[k], t, plain,
                                     &work_touched[0, 0], &work_touched[1, 0],
                                     &work_touched[2, 0], track_avg, track_norms)
                        if cfg.fit_intercept:
                            optimizer_step(&cfg.optim, prm + K * d + k, g + K * T + k, gscale,
                                           &opt_state[0, K * d + k], &opt_state[1, K * d + k],
                                           1, eta[k] * cfg.intercept_decay, 0.0, t)

                # The objective: as the dense kernel; the stopping rule's (see the
                # docstring) with the penalty of scikit-learn's norms for per-sample SGD.
                obj_batch = record_objective(multinomial, &active[0], K, mb, &work_obj[0, 0],
                                             reg, obj_out)
                if sklearn_stop:
                    for k in range(K):
                        rowbuf[k] = so[k].stop_reg
                record_objective(multinomial, &active[0], K, mb, &work_obj[0, 0],
                                 rowbuf if sklearn_stop else reg, stop_out)

                if cfg.average > 0.0 and cfg.average <= t:
                    for k in range(K):
                        if multinomial or active[k]:
                            avg_n[k] += 1.0
                            average_step(&so[k], &avg_params[k * d], d, avg_n[k],
                                         &avg_params[K * d + k], prm + K * d + k)
                for k in range(K):
                    if not (multinomial or active[k]):
                        continue
                    if cfg.l1 != 0.0:
                        l1_u[k] += cfg.l1 * eta[k]
                        l1_touched(&so[k], coef + k * ko, vs, &l1_q[k * d], &avg_params[k * d],
                                   touched, n_touched, l1_u[k], track_avg, track_norms)
                    if track_norms:
                        reg[k] = penalty_of(&cfg, &so[k])
                        so[k].stop_reg = stop_penalty_of(&cfg, &so[k])

                t += 1.0
                start += mb
                if not isfinite(obj_batch):
                    status = STATUS_DIVERGED
                    break
                if signal_check_due(&work, &next_clock, &last_check, (nnz_batch + 1) * K):
                    with gil:
                        PyErr_CheckSignals()
            if K > 1:
                # Copy back first and fold on the row-major parameters: the same
                # element-wise operations as folding the copy, in contiguous passes.
                # Without averaging the scale's fold is the copy's multiplication
                # (fold_output's <floating>(s * v)), which saves a pass over K * d.
                for k in range(K):
                    rowbuf[k] = 1.0 if track_avg else so[k].scale
                # Without averaging these are the final coefficients: coef_out gets
                # them in the same pass.
                coef_done = coef_out.shape[0] > 0 and not track_avg
                for jb in range((d + TRANSPOSE_BLOCK - 1) // TRANSPOSE_BLOCK):
                    je = min((jb + 1) * TRANSPOSE_BLOCK, d)
                    for k in range(K):
                        sk = rowbuf[k]
                        if sk != 1.0:
                            for j in range(jb * TRANSPOSE_BLOCK, je):
                                prm[k * d + j] = <floating>(sk * coef[j * K + k])
                        else:
                            for j in range(jb * TRANSPOSE_BLOCK, je):
                                prm[k * d + j] = coef[j * K + k]
                        if coef_done:
                            memcpy(&coef_out[k * d + jb * TRANSPOSE_BLOCK],
                                   prm + k * d + jb * TRANSPOSE_BLOCK,
                                   (je - jb * TRANSPOSE_BLOCK) * sizeof(floating))
                        # The divergence check of these coefficients, while in cache.
                        for j in range(jb * TRANSPOSE_BLOCK, je):
                            if not isfinite(prm[k * d + j]):
                                nonfinite = True
                if not track_avg:
                    for k in range(K):
                        so[k].scale = 1.0
            for k in range(K):
                fold_output(&so[k], prm + k * d, 1, &avg_params[k * d], d, track_avg, False)
                stop_norms[0, k] = so[k].rsq
                stop_norms[1, k] = so[k].rab
            if coef_out.shape[0] > 0 and not coef_done:
                memcpy(&coef_out[0], prm, K * d * sizeof(floating))
            if nonfinite and status == STATUS_OK:
                status = STATUS_DIVERGED
            if status == STATUS_OK:
                # (K > 1: the coefficients were checked in the copy back.)
                for j in range(K * d if K > 1 and not track_avg else 0, P):
                    if not isfinite(prm[j]):
                        status = STATUS_DIVERGED
                        break
    finally:
        free(so)
        free(rowbuf)
        free(rowks)
        free(stamp)
        free(lidx)
        free(dls)
    if status == STATUS_WORK_TOO_SMALL:
        raise ValueError("work buffers too small for a batch's columns")
    return status, t


def linear_decision_csr(
    const floating[::1] X_data,     # IN  (nnz,)
    const index_t[::1] X_indices,   # IN  (nnz,)
    const index_t[::1] X_indptr,    # IN  (n_samples + 1,)
    const intp_t[::1] rows,         # IN  (n_rows,) rows to evaluate
    const floating[::1] params,     # IN  (K * (n_features + 1),)
    floating[:, ::1] out,           # OUT (n_rows, K)
    int n_threads,
):
    """Decision values X[rows] @ W.T + b of CSR rows (early stopping on a split kept
    by index: the rows are read in place)."""
    cdef Py_ssize_t K = out.shape[1], d, r, k, i, a
    cdef const floating* xd0
    cdef const index_t* xi0
    if K < 1 or params.shape[0] % K != 0 or out.shape[0] != rows.shape[0]:
        raise ValueError("inconsistent shapes passed to linear_decision_csr")
    d = params.shape[0] // K - 1
    if rows.shape[0] == 0:
        return
    xd0 = &X_data[0] if X_data.shape[0] > 0 else NULL
    xi0 = &X_indices[0] if X_indices.shape[0] > 0 else NULL
    with nogil:
        for r in prange(rows.shape[0], schedule="static", num_threads=n_threads):
            i = rows[r]
            a = X_indptr[i]
            for k in range(K):
                out[r, k] = <floating>(sparse_dot(&params[k * d], 1, xd0 + a, xi0 + a,
                                                  X_indptr[i + 1] - a)
                                       + params[K * d + k])
