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


# Adam's step in C, built for the baseline instruction set, for AVX and for AVX-512,
# chosen at run time. Its square root and division dominate the step (they are not
# pipelined like additions), and AVX does four doubles or eight floats of each per
# instruction where SSE2 does two or four (AVX-512 eight or sixteen). Every build gives
# the same bits: every element takes the same IEEE operations in the same order (AVX
# has no FMA, and the AVX-512 build is compiled without contraction, so nothing can be
# fused), and vectorising an elementwise loop reorders nothing.
#
# The float32 step can also return the squared norm of the parameters before the step
# (the loss's L2 term) from the same pass, summed in double: 16 partial sums, element j
# into sum j % 16 in order, added in one fixed tree (cgd_sq_tree), whichever build runs;
# cgd_sqnorm_f32 sums a vector the same way without a step.
cdef extern from *:
    """
    #include <math.h>
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define CGD_AVX_DISPATCH 1
    #define CGD_TARGET_AVX __attribute__((target("avx")))
    #include <immintrin.h>
    #else
    #define CGD_AVX_DISPATCH 0
    #endif

    #define CGD_ADAM_LOOP(T, SQRT)                                          \\
        Py_ssize_t j;                                                        \\
        T gj;                                                                \\
        for (j = 0; j < n; j++) {                                            \\
            gj = gscale * g[j] + l2 * w[j];                                  \\
            m[j] = b1 * m[j] + c1 * gj;                                      \\
            v[j] = b2 * v[j] + c2 * gj * gj;                                 \\
            w[j] = w[j] - lr_t * m[j] / (SQRT(v[j]) + eps);                  \\
        }

    #define CGD_ADAM_ARGS(T) T* __restrict w, const T* __restrict g, T gscale,    \\
        T* __restrict m, T* __restrict v, Py_ssize_t n, T lr_t, T l2, T b1, T b2, \\
        T c1, T c2, T eps

    /* Elements j0 .. n-1 of the float32 step, one at a time, adding w[j]^2 (before
       the step) to s[j % 16] when s is not NULL: the scalar body and every build's tail. */
    #define CGD_ADAM_SQ_TAIL(j0)                                             \\
        Py_ssize_t j;                                                        \\
        float gj;                                                            \\
        double x;                                                            \\
        for (j = (j0); j < n; j++) {                                         \\
            if (s) { x = w[j]; s[j % 16] += x * x; }                         \\
            gj = gscale * g[j] + l2 * w[j];                                  \\
            m[j] = b1 * m[j] + c1 * gj;                                      \\
            v[j] = b2 * v[j] + c2 * gj * gj;                                 \\
            w[j] = w[j] - lr_t * m[j] / (sqrtf(v[j]) + eps);                 \\
        }

    static double cgd_sq_tree(const double* s) {
        return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])))
             + (((s[8] + s[9]) + (s[10] + s[11])) + ((s[12] + s[13]) + (s[14] + s[15])));
    }

    static double cgd_sqnorm_f32(const float* x, Py_ssize_t n) {
        double s[16] = {0.0};
        double v;
        Py_ssize_t j;
        for (j = 0; j < n; j++) { v = x[j]; s[j % 16] += v * v; }
        return cgd_sq_tree(s);
    }

    static void cgd_adam_f64_base(CGD_ADAM_ARGS(double)) { CGD_ADAM_LOOP(double, sqrt) }
    static void cgd_adam_f32sq_base(CGD_ADAM_ARGS(float), double* s) { CGD_ADAM_SQ_TAIL(0) }
    #if CGD_AVX_DISPATCH
    CGD_TARGET_AVX static void cgd_adam_f64_avx(CGD_ADAM_ARGS(double)) { CGD_ADAM_LOOP(double, sqrt) }
    /* eight floats of the AVX step at i; their squares into acc[0] (lanes i % 16 ..
       + 3) and acc[1] (the next four) */
    #define CGD_ADAM8_AVX(i, acc0, acc1)                                      \\
        W = _mm256_loadu_ps(w + (i));                                        \\
        if (s) {                                                             \\
            lo = _mm256_cvtps_pd(_mm256_castps256_ps128(W));                 \\
            hi = _mm256_cvtps_pd(_mm256_extractf128_ps(W, 1));               \\
            acc0 = _mm256_add_pd(acc0, _mm256_mul_pd(lo, lo));               \\
            acc1 = _mm256_add_pd(acc1, _mm256_mul_pd(hi, hi));               \\
        }                                                                    \\
        GJ = _mm256_add_ps(_mm256_mul_ps(G, _mm256_loadu_ps(g + (i))), _mm256_mul_ps(L, W)); \\
        M = _mm256_add_ps(_mm256_mul_ps(B1, _mm256_loadu_ps(m + (i))), _mm256_mul_ps(C1, GJ)); \\
        V = _mm256_add_ps(_mm256_mul_ps(B2, _mm256_loadu_ps(v + (i))),        \\
                          _mm256_mul_ps(_mm256_mul_ps(C2, GJ), GJ));         \\
        _mm256_storeu_ps(m + (i), M);                                        \\
        _mm256_storeu_ps(v + (i), V);                                        \\
        _mm256_storeu_ps(w + (i), _mm256_sub_ps(W, _mm256_div_ps(_mm256_mul_ps(LR, M), \\
                                  _mm256_add_ps(_mm256_sqrt_ps(V), E))));
    CGD_TARGET_AVX static void cgd_adam_f32sq_avx(CGD_ADAM_ARGS(float), double* s) {
        Py_ssize_t i, n16 = n - n % 16;
        __m256 G = _mm256_set1_ps(gscale), L = _mm256_set1_ps(l2), B1 = _mm256_set1_ps(b1);
        __m256 B2 = _mm256_set1_ps(b2), C1 = _mm256_set1_ps(c1), C2 = _mm256_set1_ps(c2);
        __m256 LR = _mm256_set1_ps(lr_t), E = _mm256_set1_ps(eps), W, GJ, M, V;
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        __m256d a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd(), lo, hi;
        for (i = 0; i < n16; i += 16) {
            CGD_ADAM8_AVX(i, a0, a1)
            CGD_ADAM8_AVX(i + 8, a2, a3)
        }
        if (s) {
            _mm256_storeu_pd(s, a0);
            _mm256_storeu_pd(s + 4, a1);
            _mm256_storeu_pd(s + 8, a2);
            _mm256_storeu_pd(s + 12, a3);
        }
        { CGD_ADAM_SQ_TAIL(n16) }
    }
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #define CGD_AVX512_DISPATCH 1
    #elif defined(__clang__)
    #define CGD_AVX512_DISPATCH 1
    #else
    #define CGD_AVX512_DISPATCH 0
    #endif
    #if CGD_AVX512_DISPATCH
    __attribute__((target("avx512f")))
    static void cgd_adam_f32sq_avx512(CGD_ADAM_ARGS(float), double* s) {
    #if defined(__clang__)
        #pragma clang fp contract(off)
    #endif
        Py_ssize_t i, n16 = n - n % 16;
        __m512 G = _mm512_set1_ps(gscale), L = _mm512_set1_ps(l2), B1 = _mm512_set1_ps(b1);
        __m512 B2 = _mm512_set1_ps(b2), C1 = _mm512_set1_ps(c1), C2 = _mm512_set1_ps(c2);
        __m512 LR = _mm512_set1_ps(lr_t), E = _mm512_set1_ps(eps), W, GJ, M, V;
        __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd(), lo, hi;
        for (i = 0; i < n16; i += 16) {
            W = _mm512_loadu_ps(w + i);
            if (s) {
                lo = _mm512_cvtps_pd(_mm512_castps512_ps256(W));
                hi = _mm512_cvtps_pd(_mm256_castsi256_ps(
                    _mm512_extracti64x4_epi64(_mm512_castps_si512(W), 1)));
                a0 = _mm512_add_pd(a0, _mm512_mul_pd(lo, lo));
                a1 = _mm512_add_pd(a1, _mm512_mul_pd(hi, hi));
            }
            GJ = _mm512_add_ps(_mm512_mul_ps(G, _mm512_loadu_ps(g + i)), _mm512_mul_ps(L, W));
            M = _mm512_add_ps(_mm512_mul_ps(B1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(C1, GJ));
            V = _mm512_add_ps(_mm512_mul_ps(B2, _mm512_loadu_ps(v + i)),
                              _mm512_mul_ps(_mm512_mul_ps(C2, GJ), GJ));
            _mm512_storeu_ps(m + i, M);
            _mm512_storeu_ps(v + i, V);
            _mm512_storeu_ps(w + i, _mm512_sub_ps(W, _mm512_div_ps(_mm512_mul_ps(LR, M),
                                                  _mm512_add_ps(_mm512_sqrt_ps(V), E))));
        }
        if (s) { _mm512_storeu_pd(s, a0); _mm512_storeu_pd(s + 8, a1); }
        { CGD_ADAM_SQ_TAIL(n16) }
    }
    __attribute__((target("avx512f")))
    static void cgd_adam_f64_avx512(CGD_ADAM_ARGS(double)) {
    #if defined(__clang__)
        #pragma clang fp contract(off)
    #endif
        Py_ssize_t i, j, n8 = n - n % 8;
        double gj;
        __m512d G = _mm512_set1_pd(gscale), L = _mm512_set1_pd(l2), B1 = _mm512_set1_pd(b1);
        __m512d B2 = _mm512_set1_pd(b2), C1 = _mm512_set1_pd(c1), C2 = _mm512_set1_pd(c2);
        __m512d LR = _mm512_set1_pd(lr_t), E = _mm512_set1_pd(eps), W, GJ, M, V;
        for (i = 0; i < n8; i += 8) {
            W = _mm512_loadu_pd(w + i);
            GJ = _mm512_add_pd(_mm512_mul_pd(G, _mm512_loadu_pd(g + i)), _mm512_mul_pd(L, W));
            M = _mm512_add_pd(_mm512_mul_pd(B1, _mm512_loadu_pd(m + i)), _mm512_mul_pd(C1, GJ));
            V = _mm512_add_pd(_mm512_mul_pd(B2, _mm512_loadu_pd(v + i)),
                              _mm512_mul_pd(_mm512_mul_pd(C2, GJ), GJ));
            _mm512_storeu_pd(m + i, M);
            _mm512_storeu_pd(v + i, V);
            _mm512_storeu_pd(w + i, _mm512_sub_pd(W, _mm512_div_pd(_mm512_mul_pd(LR, M),
                                                  _mm512_add_pd(_mm512_sqrt_pd(V), E))));
        }
        for (j = n8; j < n; j++) {
            gj = gscale * g[j] + l2 * w[j];
            m[j] = b1 * m[j] + c1 * gj;
            v[j] = b2 * v[j] + c2 * gj * gj;
            w[j] = w[j] - lr_t * m[j] / (sqrt(v[j]) + eps);
        }
    }
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    static int cgd_use_avx(void) {
        static int has = -1;   /* the same answer whichever thread asks first */
        if (has < 0) has = __builtin_cpu_supports("avx") ? 1 : 0;
        return has;
    }
    /* 2: AVX-512F, 1: AVX, 0: neither (what the CPU has); the tests may run a lower
       level (cgd_simd_cap): which build of Adam's step runs */
    static int cgd_simd_max = -1, cgd_simd_level = -1;
    static int cgd_simd(void) {
        if (cgd_simd_max < 0) {
            int lvl = cgd_use_avx();
    #if CGD_AVX512_DISPATCH
            if (lvl && __builtin_cpu_supports("avx512f")) lvl = 2;
    #endif
            cgd_simd_max = lvl;
            cgd_simd_level = lvl;
        }
        return cgd_simd_level;
    }
    #else
    static int cgd_simd_max = 0, cgd_simd_level = 0;
    static int cgd_simd(void) { return 0; }
    #endif

    static void cgd_adam_f64(CGD_ADAM_ARGS(double)) {
    #if CGD_AVX_DISPATCH && CGD_AVX512_DISPATCH
        if (cgd_simd() >= 2) {
            cgd_adam_f64_avx512(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps);
            return;
        }
    #endif
    #if CGD_AVX_DISPATCH
        if (cgd_simd() >= 1) {
            cgd_adam_f64_avx(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps);
            return;
        }
    #endif
        cgd_adam_f64_base(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps);
    }
    /* The float32 step; returns sum_j w[j]^2 before the step when want_sq (else 0). */
    static double cgd_adam_f32sq(CGD_ADAM_ARGS(float), int want_sq) {
        double s[16] = {0.0};
        double* ps = want_sq ? s : NULL;
        int lvl = cgd_simd();
    #if CGD_AVX_DISPATCH && CGD_AVX512_DISPATCH
        if (lvl >= 2) cgd_adam_f32sq_avx512(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps, ps);
        else
    #endif
    #if CGD_AVX_DISPATCH
        if (lvl >= 1) cgd_adam_f32sq_avx(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps, ps);
        else
    #endif
        cgd_adam_f32sq_base(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps, ps);
        return want_sq ? cgd_sq_tree(s) : 0.0;
    }
    static void cgd_adam_f32(CGD_ADAM_ARGS(float)) {
        cgd_adam_f32sq(w, g, gscale, m, v, n, lr_t, l2, b1, b2, c1, c2, eps, 0);
    }
    static int cgd_simd_cap(int level) {
        int old = cgd_simd();
        cgd_simd_level = level < cgd_simd_max ? level : cgd_simd_max;
        return old;
    }
    """
    void cgd_adam_f64(double* w, const double* g, double gscale, double* m, double* v,
                      Py_ssize_t n, double lr_t, double l2, double b1, double b2,
                      double c1, double c2, double eps) noexcept nogil
    void cgd_adam_f32(float* w, const float* g, float gscale, float* m, float* v,
                      Py_ssize_t n, float lr_t, float l2, float b1, float b2,
                      float c1, float c2, float eps) noexcept nogil
    double cgd_adam_f32sq(float* w, const float* g, float gscale, float* m, float* v,
                          Py_ssize_t n, float lr_t, float l2, float b1, float b2,
                          float c1, float c2, float eps, int want_sq) noexcept nogil
    double cgd_sqnorm_f32(const float* x, Py_ssize_t n) noexcept nogil
    int cgd_simd_cap(int level) noexcept nogil


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


cdef inline double adam_f32_step(
    OptimConfig* cfg, float* w, const float* g, double gscale, float* s0, float* s1,
    Py_ssize_t n, double lr, double l2, double t,
    bint want_sq,           # also return sum_j w_j^2 before the step (see cgd_adam_f32sq)
) noexcept nogil:
    """optimizer_step's Adam step for float32; returns the squared norm or 0."""
    cdef double b1 = cfg.beta_1, b2 = cfg.beta_2
    cdef double lr_t = lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t))
    # 1 - b1 and 1 - b2 rounded from double: in float, 1 - 0.999 would be off by 1e-5
    # relative.
    return cgd_adam_f32sq(w, g, <float>gscale, s0, s1, n, <float>lr_t, <float>l2, <float>b1,
                          <float>b2, <float>(1.0 - b1), <float>(1.0 - b2), <float>cfg.eps,
                          want_sq)


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
            adam_f32_step(cfg, w, g, gscale, s0, s1, n, lr, l2, t, False)
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
