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

# Fork support for GNU OpenMP. libgomp keeps the idle worker threads of a parallel
# region in a pool owned by the thread that started it, and never resets that pool in
# a forked child: the child inherits a pool whose threads do not exist, and its first
# parallel region of more than one thread waits for them forever (a region of one
# thread never touches the pool). omp_pause_resource_all (OpenMP 5.0, libgomp since
# GCC 9) ends the calling thread's pool, so calling it just before fork() leaves the
# child no pool to inherit. It is referenced weakly: a runtime without it leaves the
# pointer NULL instead of failing to load. dladdr names the runtime the kernels were
# linked against (LLVM's and Intel's runtimes reset themselves in a forked child).
cdef extern from *:
    """
    #if defined(_OPENMP) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
        extern int cgd_omp_pause_resource_all(int kind)
            __asm__("omp_pause_resource_all") __attribute__((weak));
        /* 0: the calling thread's pool is ended; nonzero: it is not. */
        static int cgd_omp_release_threads(void) {
            if (!cgd_omp_pause_resource_all) return -2;
            return cgd_omp_pause_resource_all(1 /* omp_pause_soft */);
        }
    #else
        static int cgd_omp_release_threads(void) { return -2; }
    #endif
    #if defined(_OPENMP) && !defined(_WIN32)
        #include <dlfcn.h>
        static const char* cgd_omp_runtime_path(void) {
            Dl_info info;
            if (dladdr((void*)&omp_get_max_threads, &info) && info.dli_fname)
                return info.dli_fname;
            return "";
        }
    #else
        static const char* cgd_omp_runtime_path(void) { return ""; }
    #endif
    """
    int cgd_omp_release_threads() noexcept nogil
    const char* cgd_omp_runtime_path() noexcept nogil


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


def openmp_runtime_path():
    """File of the OpenMP runtime the kernels call (e.g. ``.../libgomp.so.1``), or
    ``""`` when unknown (no OpenMP, Windows, or the loader cannot say)."""
    return cgd_omp_runtime_path().decode("utf-8", "replace")


def release_threads():
    """End the OpenMP worker threads that the calling thread's parallel regions keep
    idle (``omp_pause_resource_all``); the next parallel region starts new ones.

    Returns 0 when done, nonzero when the runtime cannot (older than OpenMP 5.0's
    pause, no OpenMP, or called inside a parallel region). Must not be called in a
    process forked without it: GNU OpenMP would wait for threads that do not exist.
    """
    # The GIL stays held: this runs just before fork(), and no other Python thread
    # should get to start anything in between.
    return int(cgd_omp_release_threads())
