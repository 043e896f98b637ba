"""Python entry points to the optimizer steps of ``_optim.pxd``.

The kernels call the inline functions directly without the GIL; these wrappers exist
so tests can check each step against a NumPy formula, one call at a time.
"""

from cython cimport floating
from _optim cimport (OptimConfig, optimizer_step, l1_cumulative, running_average,
                     schedule_eta, read_optim_config, adam_f32_step, cgd_sqnorm_f32,
                     cgd_simd_cap)

# Defaults for the keys a test may leave out.
_STEP_DEFAULTS = {"momentum": 0.0, "nesterov": False, "beta_1": 0.9, "beta_2": 0.999,
                  "adam_epsilon": 1e-8}


def step(
    floating[::1] w,            # IN/OUT
    const floating[::1] g,      # IN
    floating[::1] s0,           # IN/OUT
    floating[::1] s1,           # IN/OUT
    dict cfg,
    double gscale,
    double lr,
    double l2,
    double t,
):
    """Apply one optimizer step in place (see ``optimizer_step``)."""
    cdef OptimConfig c = read_optim_config({**_STEP_DEFAULTS, **cfg})
    if g.shape[0] != w.shape[0] or s0.shape[0] != w.shape[0] or s1.shape[0] != w.shape[0]:
        raise ValueError("w, g, s0 and s1 must have the same length")
    with nogil:
        optimizer_step(&c, &w[0], &g[0], gscale, &s0[0], &s1[0], w.shape[0], lr, l2, t)


def adam_step_squared_norm(
    float[::1] w,               # IN/OUT
    const float[::1] g,         # IN
    float[::1] s0,              # IN/OUT
    float[::1] s1,              # IN/OUT
    dict cfg,
    double gscale,
    double lr,
    double l2,
    double t,
):
    """The float32 Adam step in place (as ``step``); returns sum(w**2) before the step,
    summed in double from the same pass (the MLP's L2 term)."""
    cdef OptimConfig c = read_optim_config({**_STEP_DEFAULTS, **cfg})
    cdef double sq
    if g.shape[0] != w.shape[0] or s0.shape[0] != w.shape[0] or s1.shape[0] != w.shape[0]:
        raise ValueError("w, g, s0 and s1 must have the same length")
    with nogil:
        sq = adam_f32_step(&c, &w[0], &g[0], gscale, &s0[0], &s1[0], w.shape[0], lr, l2, t,
                           True)
    return sq


def squared_norm_f32(const float[::1] x):
    """sum(x**2) in double, in the order of ``adam_step_squared_norm``."""
    return cgd_sqnorm_f32(&x[0], x.shape[0])


def simd_cap(int level):
    """Tests: run this module's Adam steps on at most `level` (2 AVX-512F, 1 AVX,
    0 the baseline build); returns the previous level. The level the CPU allows is never
    raised."""
    return cgd_simd_cap(level)


def l1_truncate(floating[::1] w, floating[::1] q, double u):
    """Apply the cumulative L1 penalty in place."""
    if q.shape[0] != w.shape[0]:
        raise ValueError("w and q must have the same length")
    with nogil:
        l1_cumulative(&w[0], &q[0], w.shape[0], u)


def average(double[::1] avg, const floating[::1] w, double count):
    """avg += (w - avg) / count, in place."""
    with nogil:
        running_average(&avg[0], &w[0], w.shape[0], count)


def eta(int schedule, double eta_base, double alpha, double t, double power_t,
        double optimal_init):
    """Learning rate of update t under a schedule code of ``_optim.pxd``."""
    return schedule_eta(schedule, eta_base, alpha, t, power_t, optimal_init)
