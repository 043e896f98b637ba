"""Build facts the Python side needs: is OpenMP compiled in, and how many threads."""

from _openmp cimport (CGD_OPENMP_ENABLED, CGD_OPENMP_VERSION, cgd_omp_max_threads)

cdef extern from *:
    """
    #if defined(__clang__)
        #define CGD_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
        #define CGD_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
        #define CGD_STR2(x) #x
        #define CGD_STR(x) CGD_STR2(x)
        #define CGD_COMPILER "msvc " CGD_STR(_MSC_VER)
    #else
        #define CGD_COMPILER "unknown"
    #endif
    """
    const char* CGD_COMPILER
    int CGD_PROFILE_BUILD


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CGD_OPENMP_ENABLED)


def openmp_version():
    """The ``_OPENMP`` date macro of the build (e.g. 201511), or 0 without OpenMP."""
    return int(CGD_OPENMP_VERSION)


def omp_max_threads():
    """``omp_get_max_threads()``: honours OMP_NUM_THREADS and threadpoolctl limits."""
    return int(cgd_omp_max_threads())


def compiler():
    """The compiler that built the kernels, from its predefined macros."""
    return CGD_COMPILER.decode("utf-8", "replace")


def profile_build():
    """True for a ``CGD_PROFILE=1`` build (Cython line tracing in the kernels)."""
    return bool(CGD_PROFILE_BUILD)
