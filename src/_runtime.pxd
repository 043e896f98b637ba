# Kernel plumbing shared by all epoch kernels: a monotonic clock, row prefetch, and the
# periodic Ctrl-C check (Cython never checks signals inside nogil code by itself).

cdef extern from *:
    """
    #if defined(_WIN32)
    #include <windows.h>
    static double cgd_now(void) {
        LARGE_INTEGER f, c;
        QueryPerformanceFrequency(&f); QueryPerformanceCounter(&c);
        return (double)c.QuadPart / (double)f.QuadPart;
    }
    #else
    #include <time.h>
    static double cgd_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    #endif
    /* Hint the cache about `nbytes` starting at p (a row that is visited soon). */
    #if defined(__GNUC__) || defined(__clang__)
    static inline void cgd_prefetch(const void* p, Py_ssize_t nbytes) {
        /* every 64-byte line that [p, p + nbytes) touches, the last one included */
        const char* c = (const char*)((size_t)p & ~(size_t)63);
        const char* end = (const char*)p + nbytes;
        for (; c < end; c += 64) __builtin_prefetch(c, 0, 1);
    }
    #else
    static inline void cgd_prefetch(const void* p, Py_ssize_t nbytes) { (void)p; (void)nbytes; }
    #endif
    """
    double cgd_now() noexcept nogil
    void cgd_prefetch(const void* p, Py_ssize_t nbytes) noexcept nogil

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1

# Seconds of work between two looks at pending signals (Ctrl-C).
cdef extern from *:
    """
    #define CGD_SIGNAL_CHECK_SECONDS 0.05
    """
    double SIGNAL_CHECK_SECONDS "CGD_SIGNAL_CHECK_SECONDS"
