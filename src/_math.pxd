# Per-sample math shared by every kernel: losses and their derivatives w.r.t. the
# decision value z, numerically stable sigmoid / log(1 + exp) / softmax, dense dot.
#
# Conventions: squared loss is 1/2 (z - y)^2 (the half makes its derivative exactly
# (z - y), the residual the delta rule propagates); classification margin losses take y in {-1, +1}. Loss codes are plain
# integers so a kernel chooses one with a switch (a well-predicted branch), never a
# virtual call per sample.

from libc.math cimport exp, log, log1p, fabs, sqrt, isfinite, INFINITY
from cython cimport floating

from cgd._codes cimport (
    LOSS_SQUARED_ERROR, LOSS_HUBER, LOSS_EPSILON_INSENSITIVE,
    LOSS_SQUARED_EPSILON_INSENSITIVE, LOSS_HINGE, LOSS_PERCEPTRON, LOSS_SQUARED_HINGE,
    LOSS_LOG, LOSS_MODIFIED_HUBER, LOSS_MULTINOMIAL)

# scikit-learn clips |dloss/dz| at this value to stay finite for wild samples; so do we.
cdef extern from *:
    """
    #define CGD_MAX_DLOSS 1e12
    """
    double MAX_DLOSS "CGD_MAX_DLOSS"


cdef inline double log1pexp(double x) noexcept nogil:
    """log(1 + exp(x)) without overflow for large x or loss of digits for small x."""
    if x > 0.0:
        return x + log1p(exp(-x))
    return log1p(exp(x))


cdef inline double sigmoid(double x) noexcept nogil:
    """1 / (1 + exp(-x)), never evaluating exp of a large positive number."""
    cdef double e
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


cdef inline double loss_and_dloss(int loss, double z, double y, double eps,
                                  double* dloss) noexcept nogil:
    """Return l(z, y) and store dl/dz (clipped to +-MAX_DLOSS) in dloss[0].

    Regression losses take a real y; margin losses take y in {-1, +1}.
    """
    cdef double r, m, l, d
    if loss == LOSS_SQUARED_ERROR:
        r = z - y
        l = 0.5 * r * r
        d = r
    elif loss == LOSS_LOG:
        m = y * z
        l = log1pexp(-m)
        d = -y * sigmoid(-m)
    elif loss == LOSS_HINGE or loss == LOSS_PERCEPTRON:
        m = y * z
        r = 1.0 if loss == LOSS_HINGE else 0.0
        if m <= r:
            l = r - m
            d = -y
        else:
            l = 0.0
            d = 0.0
    elif loss == LOSS_SQUARED_HINGE:
        r = 1.0 - y * z
        if r > 0.0:
            l = r * r
            d = -2.0 * y * r
        else:
            l = 0.0
            d = 0.0
    elif loss == LOSS_MODIFIED_HUBER:
        m = y * z
        if m >= 1.0:
            l = 0.0
            d = 0.0
        elif m >= -1.0:
            l = (1.0 - m) * (1.0 - m)
            d = -2.0 * (1.0 - m) * y
        else:
            l = -4.0 * m
            d = -4.0 * y
    elif loss == LOSS_HUBER:
        r = z - y
        if fabs(r) <= eps:
            l = 0.5 * r * r
            d = r
        else:
            l = eps * (fabs(r) - 0.5 * eps)
            d = eps if r > 0.0 else -eps
    elif loss == LOSS_EPSILON_INSENSITIVE:
        r = fabs(y - z) - eps
        l = r if r > 0.0 else 0.0
        if y - z > eps:
            d = -1.0
        elif z - y > eps:
            d = 1.0
        else:
            d = 0.0
    else:  # LOSS_SQUARED_EPSILON_INSENSITIVE
        r = fabs(y - z) - eps
        l = r * r if r > 0.0 else 0.0
        r = y - z
        if r > eps:
            d = -2.0 * (r - eps)
        elif r < -eps:
            d = 2.0 * (-r - eps)
        else:
            d = 0.0
    if d > MAX_DLOSS:
        d = MAX_DLOSS
    elif d < -MAX_DLOSS:
        d = -MAX_DLOSS
    dloss[0] = d
    return l


cdef inline double softmax_inplace(floating* z, Py_ssize_t k) noexcept nogil:
    """Replace z by softmax(z); return logsumexp(z) (computed from the max, stable)."""
    cdef Py_ssize_t j
    cdef double zmax = z[0], s = 0.0, e
    for j in range(1, k):
        if z[j] > zmax:
            zmax = z[j]
    for j in range(k):
        e = exp(z[j] - zmax)
        z[j] = <floating>e
        s += e
    for j in range(k):
        z[j] = <floating>(z[j] / s)
    return zmax + log(s)


cdef inline floating dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """Dense dot product with four independent accumulators, so that the compiler
    vectorises it without -ffast-math. The summation order depends on n only."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t j, n4 = n - n % 4
    for j in range(0, n4, 4):
        s0 = s0 + a[j] * b[j]
        s1 = s1 + a[j + 1] * b[j + 1]
        s2 = s2 + a[j + 2] * b[j + 2]
        s3 = s3 + a[j + 3] * b[j + 3]
    for j in range(n4, n):
        s0 = s0 + a[j] * b[j]
    return (s0 + s1) + (s2 + s3)


cdef inline double abs_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    cdef double s0 = 0, s1 = 0
    cdef Py_ssize_t j, n2 = n - n % 2
    for j in range(0, n2, 2):
        s0 += fabs(a[j])
        s1 += fabs(a[j + 1])
    if n2 < n:
        s0 += fabs(a[n2])
    return s0 + s1


cdef inline double log_loss_and_dloss(double z, double y, double* dloss) noexcept nogil:
    """loss_and_dloss(LOSS_LOG, z, y, ...) with one exp where it takes two: the loss
    log(1 + exp(-m)) and the derivative -y sigmoid(-m) (m = y z) both use exp(-|m|), each
    branch evaluating the same expressions as log1pexp and sigmoid, so the bits are
    those of loss_and_dloss. |dl/dz| <= 1 needs no clipping."""
    cdef double x = -(y * z), e
    if x > 0.0:
        e = exp(-x)
        dloss[0] = -y * (1.0 / (1.0 + e))
        return x + log1p(e)
    e = exp(x)
    dloss[0] = -y * (e / (1.0 + e))
    return log1p(e)
