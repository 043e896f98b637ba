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
            adam_float(w, g, <float>gscale, s0, s1, n, <float>lr_t, <float>l2, <float>b1,
                       <float>b2, <float>(1.0 - b1), <float>(1.0 - b2), <float>eps)
        else:
            for j in range(n):
                gj = gscale * g[j] + l2 * w[j]
                s0[j] = b1 * s0[j] + (1.0 - b1) * gj
                s1[j] = b2 * s1[j] + (1.0 - b2) * gj * gj
                w[j] = w[j] - lr_t * s0[j] / (sqrt(s1[j]) + eps)
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
cdef inline void adam_float(float* w, const float* g, float gscale, float* m, float* v,
                            Py_ssize_t n, float lr_t, float l2, float b1, float b2,
                            float c1, float c2, float eps) noexcept nogil:
    """c1 = 1 - b1 and c2 = 1 - b2 rounded from double (in float, 1 - 0.999 would be
    off by 1e-5 relative)."""
    cdef Py_ssize_t j
    cdef float gj
    for j in range(n):
        gj = gscale * g[j] + l2 * w[j]
        m[j] = b1 * m[j] + c1 * gj
        v[j] = b2 * v[j] + c2 * gj * gj
        w[j] = w[j] - lr_t * m[j] / (sqrtf(v[j]) + eps)


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
