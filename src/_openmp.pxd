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
