"""cgd: gradient-descent training in compiled Cython behind scikit-learn estimators.

Change one import::

    from cgd import SGDClassifier   # instead of sklearn.linear_model
    from cgd import MLPClassifier   # instead of sklearn.neural_network

and the same pipeline trains in native code, on all cores, with mini-batches, momentum,
Adam / Adagrad, softmax SGD and float32 kept end to end.
"""

__version__ = "0.1.0"


def _load_kernels():
    """Import the compiled kernels, loading GNU OpenMP with a short spin-wait.

    libgomp reads its settings once, when it is loaded (by the first kernel import).
    By default a thread that reaches a barrier first spins for ~300,000 iterations
    before sleeping; when another process holds one of the cores, that spinning takes
    the core away from the very thread everyone waits for, and a 2-thread MLP epoch
    was measured 1.7-2x slower than on one thread. With GOMP_SPINCOUNT=1000 it stays as
    fast as one thread under that load, and as fast as before on an idle machine. The
    setting is made only when the user set neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY,
    and removed again at once, so that other libraries' OpenMP runtimes loaded later
    keep their defaults (it has no effect if libgomp was already loaded).
    """
    import os

    set_here = not any(k in os.environ for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))
    if set_here:
        os.environ["GOMP_SPINCOUNT"] = "1000"
    try:
        from . import _codes, _linear, _mlp, _openmp_helpers, _optim  # noqa: F401
    finally:
        if set_here:
            del os.environ["GOMP_SPINCOUNT"]


_load_kernels()

from .linear_model import SGDClassifier, SGDRegressor  # noqa: E402
from .neural_network import MLPClassifier, MLPRegressor  # noqa: E402

from ._threads import ForkedProcessThreadsWarning  # noqa: E402

__all__ = ["ForkedProcessThreadsWarning", "MLPClassifier", "MLPRegressor", "SGDClassifier",
           "SGDRegressor", "show_config", "__version__"]


def _kernels_openmp_runtime():
    """Real path of the OpenMP runtime library cgd's kernels are bound to, or None.

    Several copies of an OpenMP runtime can be loaded in one process (cgd's wheel bundles
    its own libgomp, scikit-learn's wheel another, and each library calls its own copy),
    so a name alone does not say which is cgd's; the kernels ask the dynamic linker which
    file defines the OpenMP functions they call (Linux, macOS; None elsewhere).
    """
    import os

    from . import _openmp_helpers

    path = _openmp_helpers.openmp_runtime_path() if _openmp_helpers.openmp_enabled() else ""
    return os.path.realpath(path) if path else None


def show_config(file=None):
    """Print how cgd was built and how many threads a fit would use.

    Lists the compiler, whether OpenMP is compiled in, every OpenMP runtime loaded in
    the process (marking the one cgd's kernels use: a wheel bundles its own, beside
    e.g. scikit-learn's), the thread count of ``n_jobs=None``, the BLAS libraries
    NumPy/SciPy use, and whether this is a ``CGD_PROFILE=1`` (line-tracing) build.

    Parameters
    ----------
    file : file-like, default=None
        Where to print (standard output by default).
    """
    import os
    import platform
    import sys

    import numpy
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    from . import _openmp_helpers
    from ._threads import effective_n_threads, fork_status

    info = threadpool_info()
    omp = [m for m in info if m.get("user_api") == "openmp"]
    blas = [m for m in info if m.get("user_api") == "blas"]
    lines = [
        f"cgd {__version__}",
        f"python: {sys.version.split()[0]} ({platform.machine()}, {platform.system()})",
        f"compiler: {_openmp_helpers.compiler()}",
    ]
    if _openmp_helpers.openmp_enabled():
        own = _kernels_openmp_runtime()
        # A wheel's bundled runtime sits in cgd.libs (auditwheel, delvewheel) or
        # cgd/.dylibs (delocate): the fallback where the linker cannot be asked.
        pkg = os.path.dirname(os.path.realpath(__file__))
        bundled = (os.path.join(os.path.dirname(pkg), "cgd.libs"), os.path.join(pkg, ".dylibs"))

        def is_own(m):
            path = os.path.realpath(m.get("filepath") or "")
            return path == own if own else os.path.dirname(path) in bundled

        lines.append(f"openmp: on (_OPENMP={_openmp_helpers.openmp_version()}); "
                     f"OpenMP runtimes loaded: {len(omp)}")
        for m in omp:
            name = " ".join(str(v) for v in (m.get("prefix") or m.get("internal_api"),
                                             m.get("version"), m.get("filepath")) if v)
            mark = "cgd's kernels, " if is_own(m) else ""
            lines.append(f"  {name} ({mark}{m.get('num_threads')} threads)")
        if own and not any(is_own(m) for m in omp):
            lines.append(f"  {own} (cgd's kernels; not listed by threadpoolctl)")
        elif not own and not any(is_own(m) for m in omp):
            lines.append("  (which one cgd's kernels use could not be determined)")
    else:
        lines.append("openmp: off (serial build: every fit uses one thread)")
    lines += [
        f"threads: n_jobs=None -> {effective_n_threads(None)}; "
        f"omp_get_max_threads() = {_openmp_helpers.omp_max_threads()}",
        f"fork: {fork_status()}",
        "blas: " + ("; ".join(
            f"{m.get('internal_api')} {m.get('version') or ''} ({m.get('num_threads')} threads)"
            for m in blas) or "none loaded"),
        f"profile build (CGD_PROFILE=1, line tracing): {_openmp_helpers.profile_build()}",
        f"numpy {numpy.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}",
    ]
    print("\n".join(lines), file=file)
