"""Input checks that read every value of X, run on the fit's threads.

A fit refuses non-finite input before it trains, and that check is one pass over all of
X: ~9 ms for 160 MB on one core, as long as a whole mini-batch epoch of the same data on
two cores. NumPy's way (``np.isfinite(X.sum())``) runs on one thread and can overflow to
inf on large finite values; here each value's exponent bits are tested (all ones: inf or
NaN), in fixed blocks shared out over the threads, so the answer is exact and the pass
runs at the memory bandwidth of all the fit's cores.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint32_t, uint64_t

cdef enum:
    # Values per block: large enough that a block's work dwarfs handing it out, small
    # enough that two threads get even shares of a few-megabyte array.
    BLOCK = 1 << 15
    # Below this many values one thread does the whole pass: starting a team costs more
    # than a second core saves.
    PARALLEL_MIN = 1 << 18

cdef uint64_t EXP64 = 0x7FF0000000000000ULL
cdef uint32_t EXP32 = 0x7F800000U
cdef uint64_t EXP64_LSB = 0x0010000000000000ULL
cdef uint32_t EXP32_LSB = 0x00800000U


cdef inline int block_nonfinite(const floating* a, Py_ssize_t n) noexcept nogil:
    """1 if a[0:n] holds an inf or a NaN, else 0.

    A value is inf or NaN when all its exponent bits are set: e = bits & EXP equals EXP,
    which is when e + (the exponent's lowest bit) reaches the sign bit. OR-ing those sums
    and testing the sign bit once at the end is plain AND / ADD / OR, which the compiler
    turns into vector instructions (a compare per value would not vectorise on SSE2):
    the pass runs at the speed of memory whatever the block holds."""
    cdef Py_ssize_t i
    cdef const uint64_t* b64
    cdef const uint32_t* b32
    cdef uint64_t acc64 = 0
    cdef uint32_t acc32 = 0
    if floating is double:
        b64 = <const uint64_t*>a
        for i in range(n):
            acc64 |= (b64[i] & EXP64) + EXP64_LSB
        return <int>(acc64 >> 63)
    else:
        b32 = <const uint32_t*>a
        for i in range(n):
            acc32 |= (b32[i] & EXP32) + EXP32_LSB
        return <int>(acc32 >> 31)


def all_finite(const floating[::1] a, int n_threads):
    """True when no value of ``a`` is inf or NaN.

    Parameters
    ----------
    a : ndarray of float64 or float32, 1-D, C-contiguous
        For a C-contiguous 2-D array, pass ``X.reshape(-1)`` (a view).
    n_threads : int
        Threads to share the pass over (the fit's ``n_jobs`` as a thread count); small
        arrays are read by one.

    Returns
    -------
    bool
    """
    cdef Py_ssize_t n = a.shape[0]
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t b, lo, hi
    cdef int bad = 0
    cdef int nt = n_threads if n >= PARALLEL_MIN and n_threads > 1 else 1
    if n == 0:
        return True
    if nt == 1:
        with nogil:
            bad = block_nonfinite(&a[0], n)
        return bad == 0
    with nogil:
        for b in prange(nblocks, schedule="static", num_threads=nt):
            lo = b * BLOCK
            hi = lo + BLOCK if lo + BLOCK < n else n
            bad += block_nonfinite(&a[lo], hi - lo)
    return bad == 0
