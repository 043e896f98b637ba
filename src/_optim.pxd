# Optimizer steps, penalties and learning-rate schedules over flat parameter buffers.
#
# One call updates n contiguous parameters (a coefficient row, an intercept block or a
# whole layer), so a kernel covers all its parameters with a few calls per update.
# The gradient g is the *unscaled* batch sum; `gscale` (1/m for a batch of m samples)
# is folded in here so no pass is spent rescaling it. `l2` is the coefficient of the
# L2 term (alpha * (1 - l1_ratio)), 0 for intercepts.

from libc.math cimport sqrt, sqrtf, pow
from cython cimport floating

from cgd._codes cimport (SOLVER_SGD, SOLVER_ADAM, SOLVER_ADAGRAD, SCHEDULE_CONSTANT,
                     SCHEDULE_OPTIMAL, SCHEDULE_INVSCALING, SCHEDULE_ADAPTIVE)


# Adam's step in C, built twice on x86: for the baseline instruction set and for AVX,
# chosen at run time. Its square root and division dominate the step (they are not
# pipelined like additions), and AVX does four doubles or eight floats of each per
# instruction where SSE2 does two or four. Both builds give the same bits: every element
# takes the same IEEE operations in the same order (AVX without FMA, so nothing can be
# contracted), and vectorising an elementwise loop reorders nothing.
cdef extern from *:
    """
    #include <math.h>
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define CGD_AVX_DISPATCH 1
    #define CGD_TARGET_AVX __attribute__((target("avx")))
    #else
    #define CGD_AVX_DISPATCH 0
    #endif

    #define CGD_ADAM_LOOP(T, SQRT)                                          \
        Py_ssize_t j;                                                        \
        T gj;                                                                \
        for (j = 0; j < n; j++) {                                            \
            gj = gscale * g[j] + l2 * w[j];                                  \
            m[j] = b1 * m[j] + c1 * gj;                                      \
            v[j] = b2 * v[j] + c2 * gj * gj;                                 \
            w[j] = w[j] - lr_t * m[j] / (SQRT(v[j]) + eps);                  \
        }

    #define CGD_ADAM_ARGS(T) T* __restrict w, const T* __restrict g, T gscale,    \
        T* __restrict m, T* __restrict v, Py_ssize_t n, T lr_t, T l2, T b1, T b2, \
        T c1, T c2, T eps

    static void cgd_adam_f64_base(CGD_ADAM_ARGS(double)) { CGD_ADAM_LOOP(double, sqrt) }
    static void cgd_adam_f32_base(CGD_ADAM_ARGS(float)) { CGD_ADAM_LOOP(float, sqrtf) }
    #if CGD_AVX_DISPATCH
    CGD_TARGET_AVX static void cgd_adam_f64_avx(CGD_ADAM_ARGS(double)) { CGD_ADAM_LOOP(double, sqrt) }
    CGD_TARGET_AVX static void cgd_adam_f32_avx(CGD_ADAM_ARGS(float)) { CGD_ADAM_LOOP(float, sqrtf) }
    static int cgd_use_avx(void) {
        static int has = -1;   /* the same answer whichever thread asks first */
        if (has < 0) has = __builtin_cpu_supports("avx") ? 1 : 0;
        return has;
    }
    #define CGD_ADAM_DISPATCH(name, ...) \
        if (cgd_use_avx()) name##_avx(__VA_ARGS__); else name##_base(__VA_ARGS__);
    #else
    #define CGD_ADAM_DISPATCH(name, ...) name##_base(__VA_ARGS__);
    #endif

    static void cgd_adam_f64(CGD_ADAM_ARGS(double)) {
        CGD_ADAM_DISPATCH(cgd_adam_f64, w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps)
    }
    static void cgd_adam_f32(CGD_ADAM_ARGS(float)) {
        CGD_ADAM_DISPATCH(cgd_adam_f32, w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps)
    }
    """
    void cgd_adam_f64(double* w, const double* g, double gscale, double* m, double* v,
                      Py_ssize_t n, double lr_t, double l2, double b1, double b2,
                      double c1, double c2, double eps) noexcept nogil
    void cgd_adam_f32(float* w, const float* g, float gscale, float* m, float* v,
                      Py_ssize_t n, float lr_t, float l2, float b1, float b2,
                      float c1, float c2, float eps) noexcept nogil


cdef struct OptimConfig:
    int solver
    double momentum
    bint nesterov
    double beta_1
    double beta_2
    double eps
    bint clamp_decay    # plain SGD: never let the L2 decay factor go below 0 (linear SGD)


cdef inline OptimConfig read_optim_config(dict c) except *:
    """The optimizer settings of a kernel's config dict (keys as the estimators write)."""
    cdef OptimConfig oc
    oc.solver = c["solver"]
    oc.momentum = c["momentum"]
    oc.nesterov = c["nesterov"]
    oc.beta_1 = c["beta_1"]
    oc.beta_2 = c["beta_2"]
    oc.eps = c["adam_epsilon"]
    oc.clamp_decay = c.get("clamp_decay", True)
    return oc


cdef inline double schedule_eta(int schedule, double eta_base, double alpha, double t,
                                double power_t, double optimal_init) noexcept nogil:
    """Learning rate of update number t (t counts updates from 1), as scikit-learn."""
    if schedule == SCHEDULE_OPTIMAL:
        return 1.0 / (alpha * (optimal_init + t - 1.0))
    if schedule == SCHEDULE_INVSCALING:
        return eta_base / pow(t, power_t)
    return eta_base


cdef inline void optimizer_step(
    OptimConfig* cfg,
    floating* w,            # IN/OUT (n,) parameters
    const floating* g,      # IN     (n,) unscaled batch gradient sum of the loss
    double gscale,          # IN     scale of g (1/m)
    floating* s0,           # IN/OUT (n,) velocity (sgd+momentum), first moment (adam), sum of squares (adagrad)
    floating* s1,           # IN/OUT (n,) second moment (adam); unused otherwise
    Py_ssize_t n,
    double lr,              # learning rate of this update
    double l2,              # L2 coefficient (0 for intercepts)
    double t,               # update number, from 1 (adam's bias correction)
) noexcept nogil:
    """One step w <- w - lr * direction(gscale * g + l2 * w)."""
    cdef Py_ssize_t j
    cdef double gj, decay, mu = cfg.momentum, b1 = cfg.beta_1, b2 = cfg.beta_2
    cdef double eps = cfg.eps, lr_t, v
    if cfg.solver == SOLVER_SGD:
        if mu == 0.0:
            # Plain SGD with weight decay; like scikit-learn's linear SGD, never let a
            # huge lr*alpha flip the weights' signs: the factor stops at zero (its MLPs
            # do not clamp: clamp_decay False).
            decay = 1.0 - lr * l2
            if decay < 0.0 and cfg.clamp_decay:
                decay = 0.0
            for j in range(n):
                w[j] = <floating>(w[j] * decay - lr * gscale * g[j])
        elif cfg.nesterov:
            for j in range(n):
                gj = gscale * g[j] + l2 * w[j]
                v = mu * s0[j] - lr * gj
                s0[j] = <floating>v
                w[j] = <floating>(w[j] + mu * v - lr * gj)
        else:
            for j in range(n):
                gj = gscale * g[j] + l2 * w[j]
                v = mu * s0[j] - lr * gj
                s0[j] = <floating>v
                w[j] = <floating>(w[j] + v)
    elif cfg.solver == SOLVER_ADAM:
        lr_t = lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t))
        if floating is float:
            # 1 - b1 and 1 - b2 rounded from double: in float, 1 - 0.999 would be off
            # by 1e-5 relative.
            cgd_adam_f32(w, g, <float>gscale, s0, s1, n, <float>lr_t, <float>l2, <float>b1,
                         <float>b2, <float>(1.0 - b1), <float>(1.0 - b2), <float>eps)
        else:
            # gj = gscale g + l2 w; m = b1 m + (1 - b1) gj; v = b2 v + (1 - b2) gj gj;
            # w -= lr_t m / (sqrt(v) + eps)
            cgd_adam_f64(w, g, gscale, s0, s1, n, lr_t, l2, b1, b2, 1.0 - b1, 1.0 - b2, eps)
    else:  # SOLVER_ADAGRAD
        if floating is float:
            adagrad_float(w, g, <float>gscale, s0, n, <float>lr, <float>l2, <float>eps)
        else:
            for j in range(n):
                gj = gscale * g[j] + l2 * w[j]
                s0[j] = s0[j] + gj * gj
                w[j] = w[j] - lr * gj / (sqrt(s0[j]) + eps)


# float32 data takes adam's and adagrad's steps in float arithmetic, as scikit-learn's
# MLP and PyTorch do: a float32 square root and division vectorise twice as wide as
# double ones and need no conversions (these steps cost as much as a layer's GEMM).
cdef inline void adagrad_float(float* w, const float* g, float gscale, float* s,
                               Py_ssize_t n, float lr, float l2, float eps) noexcept nogil:
    cdef Py_ssize_t j
    cdef float gj
    for j in range(n):
        gj = gscale * g[j] + l2 * w[j]
        s[j] = s[j] + gj * gj
        w[j] = w[j] - lr * gj / (sqrtf(s[j]) + eps)


cdef inline void l1_cumulative(
    floating* w,            # IN/OUT (n,) coefficients
    floating* q,            # IN/OUT (n,) L1 penalty actually applied to each coefficient so far
    Py_ssize_t n,
    double u,               # IN     total L1 penalty every coefficient could have received
) noexcept nogil:
    """Cumulative L1 penalty (Tsuruoka, Tsujii & Ananiadou, 2009): pull each coefficient
    towards zero by what it is owed, clipping at zero, so that L1 yields exact zeros."""
    cdef Py_ssize_t j
    cdef floating z, nz
    for j in range(n):
        z = w[j]
        if z > 0:
            nz = <floating>(z - (u + q[j]))
            w[j] = nz if nz > 0 else 0
        elif z < 0:
            nz = <floating>(z + (u - q[j]))
            w[j] = nz if nz < 0 else 0
        q[j] = q[j] + (w[j] - z)


cdef inline void running_average(
    double* avg,            # IN/OUT (n,) running mean, in double whatever w's dtype: in
                            #        float32 a step (w - avg) / count below half an ulp
                            #        would round to zero and freeze the mean
    const floating* w,      # IN     (n,) current value
    Py_ssize_t n,
    double count,           # IN     number of values averaged, this one included
) noexcept nogil:
    cdef Py_ssize_t j
    cdef double inv = 1.0 / count
    for j in range(n):
        avg[j] = avg[j] + (w[j] - avg[j]) * inv
