"""n_jobs -> number of threads for one fit (OpenMP and BLAS together), and what a
forked process may use."""

import os
import threading
import warnings
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

    A build without OpenMP always gives 1, and so does a forked process that cannot
    start OpenMP threads (see ``ForkedProcessThreadsWarning``; warned once).
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
        n_threads = max(1, max_threads)
    elif n_jobs < 0:
        n_threads = max(1, max_threads + n_jobs + 1)
    else:
        n_threads = int(n_jobs)
    if n_threads > 1 and _forked_serial():
        _warn_forked_serial()
        return 1
    return n_threads


# --- fork --------------------------------------------------------------------------
#
# GNU OpenMP (libgomp) keeps the idle workers of a thread's parallel regions in a
# pool, and a forked child inherits that pool without its threads: the child's first
# parallel region of more than one thread waits for them forever (a one-thread region
# never touches the pool; omp_get_max_threads() is safe too). So just before Python's
# os.fork() (multiprocessing's "fork" start method, joblib's "multiprocessing"
# backend) the forking thread's pool is ended (omp_pause_resource_all): the child
# starts without one, creates its own threads and keeps the full n_jobs, and the
# parent starts new workers at its next parallel region. A process whose pool could
# not be ended before it was forked (fork() called from C, bypassing os.fork's hooks;
# or a runtime older than GCC 9's) runs every fit and prediction on one thread, with
# one warning: the results are the same bits, only slower. Such a process never
# calls omp_pause_resource_all itself, which would wait for the missing threads.
# LLVM's libomp and Intel's libiomp5 reset themselves in a forked child
# (pthread_atfork), so none of this applies to them; Windows has no fork.


class ForkedProcessThreadsWarning(RuntimeWarning):
    """A forked process runs cgd's fits on one thread, because GNU OpenMP cannot start
    threads in it (its parent's worker threads could not be released first)."""


def _runtime_resets_after_fork():
    name = os.path.basename(_openmp_helpers.openmp_runtime_path()).lower()
    return name.startswith(("libomp", "libiomp"))


# Nothing to do without OpenMP or with a runtime that handles fork by itself; an
# unknown runtime is treated as GNU OpenMP.
_FORK_HANDLED_BY_RUNTIME = (not _openmp_helpers.openmp_enabled()
                            or _runtime_resets_after_fork())
_FORK = {
    "pid": os.getpid(),   # the process the fields below describe
    "serial": False,      # every parallel region of this process must use one thread
    "reason": "",         # why, for the warning
    "released": False,    # the forking thread's pool was ended just before os.fork()
    "warned": False,
}


def _forked_serial():
    """True when this process must run every parallel region on one thread."""
    if _FORK_HANDLED_BY_RUNTIME:
        return False
    pid = os.getpid()
    if pid != _FORK["pid"]:
        # A child made by fork() from C: os.fork's hooks did not run, so the parent's
        # pool was not ended and may be inherited.
        _FORK.update(pid=pid, serial=True, warned=False, released=False,
                     reason="it was forked by fork() called from C, which skips the "
                            "hook that releases those threads first")
    return _FORK["serial"]


def _warn_forked_serial():
    if _FORK["warned"]:
        return
    _FORK["warned"] = True
    warnings.warn(
        f"cgd could not release GNU OpenMP's worker threads before this process was "
        f"forked ({_FORK['reason']}). GNU OpenMP cannot start threads in such a process "
        f"(a parallel region would wait forever for the parent's threads), so cgd runs "
        f"this process's fits and predictions on one thread: same results, slower. To "
        f"fit in parallel processes, use joblib's 'loky' backend (its default) or "
        f"multiprocessing's 'spawn' or 'forkserver' start method.",
        ForkedProcessThreadsWarning,
        stacklevel=3,
    )


def _before_fork():
    _FORK["released"] = False
    if _FORK_HANDLED_BY_RUNTIME or _forked_serial():
        return  # the pool here is already an orphan: ending it would wait forever
    if _openmp_helpers.release_threads() == 0:
        _FORK["released"] = True
    else:
        _FORK["reason"] = ("the OpenMP runtime cannot: omp_pause_resource_all is "
                           "missing, as in GNU OpenMP older than GCC 9, or failed")


def _after_fork_in_parent():
    _FORK["released"] = False


def _after_fork_in_child():
    global _LIMIT_LOCK
    # A lock held by another thread of the parent would never be released here.
    _LIMIT_LOCK = threading.Lock()
    # The threads inside blas_limited() at the fork do not exist here, so nothing would
    # ever lower the depth: start at 0, and undo the parent's temporary BLAS limit at the
    # first blas_limited() (not in this hook, which must not call into BLAS).
    if _LIMIT_STATE["depth"]:
        _LIMIT_STATE.update(depth=0, stale=_LIMIT_STATE["limiter"], limiter=None)
    _FORK.update(pid=os.getpid(), warned=False)
    if not _FORK["released"] and not _FORK_HANDLED_BY_RUNTIME:
        _FORK["serial"] = True
    _FORK["released"] = False


def fork_status():
    """One line saying how a fork affects this process's fits (for ``show_config``)."""
    if not _openmp_helpers.openmp_enabled():
        return "no OpenMP: forked processes fit as this one (one thread)"
    if _FORK_HANDLED_BY_RUNTIME:
        return "the OpenMP runtime resets itself in a forked child: children keep n_jobs"
    if _forked_serial():
        return ("fits run on one thread: forked without releasing GNU OpenMP's threads "
                f"({_FORK['reason']})")
    return "GNU OpenMP's threads are released before os.fork(): forked children keep n_jobs"


_CONTROLLER = []  # cached: threadpool_limits() rescans the loaded libraries (~3 ms a call)
_LIMIT_LOCK = threading.Lock()
_LIMIT_STATE = {"depth": 0, "limiter": None, "stale": None}


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
            if _LIMIT_STATE["stale"] is not None:  # a limit inherited through fork
                _LIMIT_STATE.pop("stale").restore_original_limits()
                _LIMIT_STATE["stale"] = None
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


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
