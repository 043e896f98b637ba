"""n_jobs -> number of threads for one fit (OpenMP and BLAS together)."""

import os
import threading
from contextlib import contextmanager

from joblib import cpu_count
from threadpoolctl import ThreadpoolController

from . import _openmp_helpers

_PHYSICAL_CORES = []  # cached: joblib re-reads cgroup files on every call (~0.2 ms)


def _physical_cores():
    if not _PHYSICAL_CORES:
        _PHYSICAL_CORES.append(cpu_count(only_physical_cores=True))
    return _PHYSICAL_CORES[0]


def effective_n_threads(n_jobs):
    """Threads a fit with this ``n_jobs`` uses, as scikit-learn's
    ``_openmp_effective_n_threads``.

    - ``None``: all usable cores: ``min(omp_get_max_threads(), cores)``, so that
      ``OMP_NUM_THREADS`` and threadpoolctl limits are honoured; when
      ``OMP_NUM_THREADS`` is set it alone decides.
    - ``-1``: the same maximum (so, unlike joblib's -1, it honours OMP_NUM_THREADS and
      threadpoolctl limits); ``-k``: that maximum minus ``k - 1`` (at least 1).
    - ``k > 0``: exactly ``k`` threads.

    A build without OpenMP always gives 1.
    """
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 is not a valid number of threads; use None, -1 or k >= 1")
    if not _openmp_helpers.openmp_enabled():
        return 1
    if os.getenv("OMP_NUM_THREADS"):
        max_threads = _openmp_helpers.omp_max_threads()
    else:
        max_threads = min(_openmp_helpers.omp_max_threads(), _physical_cores())
    if n_jobs is None:
        return max(1, max_threads)
    if n_jobs < 0:
        return max(1, max_threads + n_jobs + 1)
    return int(n_jobs)


_CONTROLLER = []  # cached: threadpool_limits() rescans the loaded libraries (~3 ms a call)
_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE = {"depth": 0, "limiter": None}


@contextmanager
def blas_limited(n_threads):
    """Cap BLAS at n_threads (scipy's, which the kernels call, and numpy's), e.g. at 1
    while OpenMP threads each run their own GEMMs, so that they never oversubscribe
    the cores and each GEMM's bits do not depend on BLAS's thread count.

    BLAS thread counts are process-wide: fits and predictions running in several
    Python threads share one limit, set by the first to enter and restored when the
    last leaves (cgd always asks for the same limit, 1)."""
    with _LIMIT_LOCK:
        if _LIMIT_STATE["depth"] == 0:
            if not _CONTROLLER:
                # Created on first use, once the kernels have loaded scipy's BLAS.
                _CONTROLLER.append(ThreadpoolController())
            _LIMIT_STATE["limiter"] = _CONTROLLER[0].limit(limits=n_threads, user_api="blas")
        _LIMIT_STATE["depth"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_STATE["depth"] -= 1
            if _LIMIT_STATE["depth"] == 0:
                _LIMIT_STATE["limiter"].restore_original_limits()
                _LIMIT_STATE["limiter"] = None
