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
        from . import _linear, _mlp, _openmp_helpers, _optim  # noqa: F401
    finally:
        if set_here:
            del os.environ["GOMP_SPINCOUNT"]


_load_kernels()

from .linear_model import SGDClassifier, SGDRegressor  # noqa: E402
from .neural_network import MLPClassifier, MLPRegressor  # noqa: E402

__all__ = ["MLPClassifier", "MLPRegressor", "SGDClassifier", "SGDRegressor", "show_config",
           "__version__"]


def show_config(file=None):
    """Print how cgd was built and how many threads a fit would use.

    Lists the compiler, whether OpenMP is compiled in (and which runtime is loaded),
    the thread count of ``n_jobs=None``, the BLAS libraries NumPy/SciPy use, and
    whether this is a ``CGD_PROFILE=1`` (line-tracing) build.

    Parameters
    ----------
    file : file-like, default=None
        Where to print (standard output by default).
    """
    import platform
    import sys

    import numpy
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    from . import _openmp_helpers
    from ._threads import effective_n_threads

    info = threadpool_info()
    omp = [m for m in info if m.get("user_api") == "openmp"]
    blas = [m for m in info if m.get("user_api") == "blas"]
    lines = [
        f"cgd {__version__}",
        f"python: {sys.version.split()[0]} ({platform.machine()}, {platform.system()})",
        f"compiler: {_openmp_helpers.compiler()}",
        "openmp: " + (
            f"on (_OPENMP={_openmp_helpers.openmp_version()}); runtime: "
            + (", ".join(f"{m.get('internal_api')} {m.get('version') or ''} "
                         f"{m.get('filepath')}".strip() for m in omp) or "not loaded yet")
            if _openmp_helpers.openmp_enabled()
            else "off (serial build: every fit uses one thread)"
        ),
        f"threads: n_jobs=None -> {effective_n_threads(None)}; "
        f"omp_get_max_threads() = {_openmp_helpers.omp_max_threads()}",
        "blas: " + ("; ".join(
            f"{m.get('internal_api')} {m.get('version') or ''} ({m.get('num_threads')} threads)"
            for m in blas) or "none loaded"),
        f"profile build (CGD_PROFILE=1, line tracing): {_openmp_helpers.profile_build()}",
        f"numpy {numpy.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}",
    ]
    print("\n".join(lines), file=file)
