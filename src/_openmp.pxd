# Thread-count helpers that compile with and without OpenMP.
#
# Every OpenMP call of cgd goes through these names, so a serial build (no -fopenmp)
# still compiles: the macros below then say "one thread".

cdef extern from *:
    """
    #ifdef _OPENMP
        #include <omp.h>
        #define CGD_OPENMP_ENABLED 1
        #define cgd_omp_max_threads() omp_get_max_threads()
        #define cgd_omp_thread_num() omp_get_thread_num()
        #define CGD_OPENMP_VERSION _OPENMP
    #else
        #define CGD_OPENMP_ENABLED 0
        #define cgd_omp_max_threads() 1
        #define cgd_omp_thread_num() 0
        #define CGD_OPENMP_VERSION 0
    #endif
    """
    bint CGD_OPENMP_ENABLED
    int CGD_OPENMP_VERSION
    int cgd_omp_max_threads() noexcept nogil
    int cgd_omp_thread_num() noexcept nogil

# Lock-free coordination of one epoch's team of threads (see _linear.pyx, "Team"): an
# atomic word that hands out tasks, a counter of finished ones, a polite spin, a nap. Acquire /
# release order makes what one thread wrote before publishing (a task description, the
# parameters, a chunk's gradient) visible to the thread that reads the published value.
cdef extern from *:
    """
    #if defined(_MSC_VER) && !defined(__clang__)
        #include <windows.h>
        #include <intrin.h>
        static __inline long long cgd_atomic_load(long long* p) {
            long long v = *(volatile long long*)p; _ReadWriteBarrier(); return v; }
        static __inline void cgd_atomic_store(long long* p, long long v) {
            _ReadWriteBarrier(); *(volatile long long*)p = v; }
        static __inline long long cgd_atomic_fetch_add(long long* p, long long v) {
            return _InterlockedExchangeAdd64(p, v); }
        /* 1 when *p was `expected` and is now `desired`, else 0 */
        static __inline int cgd_atomic_cas(long long* p, long long expected, long long desired) {
            return _InterlockedCompareExchange64(p, desired, expected) == expected; }
        static __inline void cgd_cpu_relax(void) { YieldProcessor(); }
        static __inline void cgd_thread_nap(void) { Sleep(0); }
        static __inline void cgd_flag_wait(int* p) {
            while (*(volatile int*)p == 0) Sleep(1); }
        static __inline void cgd_flag_set(int* p) {
            _ReadWriteBarrier(); *(volatile int*)p = 1; }
    #else
        #include <time.h>
        static inline long long cgd_atomic_load(long long* p) {
            return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
        static inline void cgd_atomic_store(long long* p, long long v) {
            __atomic_store_n(p, v, __ATOMIC_RELEASE); }
        static inline long long cgd_atomic_fetch_add(long long* p, long long v) {
            return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
        /* 1 when *p was `expected` and is now `desired`, else 0 */
        static inline int cgd_atomic_cas(long long* p, long long expected, long long desired) {
            return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                               __ATOMIC_ACQUIRE); }
        #if defined(__x86_64__) || defined(__i386__)
            static inline void cgd_cpu_relax(void) { __builtin_ia32_pause(); }
        #elif defined(__aarch64__)
            static inline void cgd_cpu_relax(void) { __asm__ __volatile__("yield"); }
        #else
            static inline void cgd_cpu_relax(void) { __asm__ __volatile__("" ::: "memory"); }
        #endif
        /* Off the CPU for ~20 us: a helper with nothing to do must not stay runnable
           (sched_yield would), or it takes turns with the master when another process
           keeps a core busy. */
        static inline void cgd_thread_nap(void) {
            struct timespec ts = {0, 20000}; nanosleep(&ts, NULL); }
        /* A thread with nothing left to do until a flag is set: off the CPU until then
           (a futex on Linux: woken at once, never woken for nothing; elsewhere ~1 ms
           naps). The futex wait also ends after 1 ms, so a wake-up that comes before
           the wait cannot leave it asleep. */
        #if defined(__linux__)
            #include <linux/futex.h>
            #include <sys/syscall.h>
            #include <unistd.h>
            #include <limits.h>
            static inline void cgd_flag_wait(int* p) {
                while (__atomic_load_n(p, __ATOMIC_ACQUIRE) == 0) {
                    struct timespec ts = {0, 1000000};
                    syscall(SYS_futex, p, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
                }
            }
            static inline void cgd_flag_set(int* p) {
                __atomic_store_n(p, 1, __ATOMIC_RELEASE);
                syscall(SYS_futex, p, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
            }
        #else
            static inline void cgd_flag_wait(int* p) {
                while (__atomic_load_n(p, __ATOMIC_ACQUIRE) == 0) {
                    struct timespec ts = {0, 1000000}; nanosleep(&ts, NULL); }
            }
            static inline void cgd_flag_set(int* p) { __atomic_store_n(p, 1, __ATOMIC_RELEASE); }
        #endif
    #endif
    """
    long long cgd_atomic_load(long long* p) noexcept nogil
    void cgd_atomic_store(long long* p, long long v) noexcept nogil
    long long cgd_atomic_fetch_add(long long* p, long long v) noexcept nogil
    bint cgd_atomic_cas(long long* p, long long expected, long long desired) noexcept nogil
    void cgd_cpu_relax() noexcept nogil
    void cgd_thread_nap() noexcept nogil
    void cgd_flag_wait(int* p) noexcept nogil
    void cgd_flag_set(int* p) noexcept nogil
