"""Shuffling the visiting order of the training rows, natively.

A linear model's epoch over n rows starts with a fresh random order of their indices.
NumPy's ``RandomState.shuffle`` is a Fisher-Yates pass whose every swap is a cache miss
once the index array outgrows the cache: 29 ms for 10^6 rows, as long as a whole
mini-batch epoch over them (and on one thread while the others wait). Here:

* the random numbers come from xoshiro256** (seeded through splitmix64 from one 64-bit
  seed per epoch, drawn from the estimator's ``random_state``), a generator of a few
  instructions per draw;
* bounded draws use Lemire's multiply-and-reject method: exactly uniform, with no
  division in the common case;
* an array larger than a cache-sized bucket is shuffled in two passes (the
  Rao-Sandelius scatter shuffle): every element goes to one of B buckets chosen
  uniformly at random (writes to B sequential streams), then each bucket gets a
  Fisher-Yates shuffle of its own, in cache. Assigning the elements to buckets
  independently and uniformly, then permuting each bucket uniformly, gives every
  permutation of the whole the same probability: the result is a uniformly random
  permutation, as one Fisher-Yates pass gives, at the cost of sequential passes.

The bucket of each element is drawn twice from the same generator state (once to count
the buckets' sizes, once to scatter), so no array of bucket numbers is kept.

The permutations differ from NumPy's for the same seed; they are a function of the seed
alone (the same on every machine and for any thread count).
"""

from libc.stdint cimport uint64_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

ctypedef Py_ssize_t intp_t

cdef extern from *:
    """
    #if defined(__SIZEOF_INT128__)
    #define CGD_MULHI64(a, b) ((uint64_t)(((unsigned __int128)(a) * (b)) >> 64))
    #define CGD_MULLO64(a, b) ((uint64_t)((a) * (b)))
    #define CGD_HAVE_INT128 1
    #else
    #define CGD_HAVE_INT128 0
    #define CGD_MULHI64(a, b) 0
    #define CGD_MULLO64(a, b) 0
    #endif
    """
    bint HAVE_INT128 "CGD_HAVE_INT128"
    uint64_t mulhi64 "CGD_MULHI64"(uint64_t a, uint64_t b) noexcept nogil
    uint64_t mullo64 "CGD_MULLO64"(uint64_t a, uint64_t b) noexcept nogil


cdef enum:
    # Elements per bucket of the two-pass shuffle: 2^15 indices of 8 bytes, 256 KiB,
    # a bucket's Fisher-Yates pass stays in a core's L2 cache.
    BUCKET_LOG2 = 15


cdef struct Xoshiro:
    uint64_t s0, s1, s2, s3


cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline void seed_xoshiro(Xoshiro* g, uint64_t seed) noexcept nogil:
    """The four words of state from splitmix64, as xoshiro's authors recommend (never
    all zero)."""
    cdef uint64_t sm = seed
    g.s0 = splitmix64(&sm)
    g.s1 = splitmix64(&sm)
    g.s2 = splitmix64(&sm)
    g.s3 = splitmix64(&sm)


cdef inline uint64_t next_u64(Xoshiro* g) noexcept nogil:
    """xoshiro256**."""
    cdef uint64_t result = rotl(g.s1 * 5, 7) * 9
    cdef uint64_t t = g.s1 << 17
    g.s2 ^= g.s0
    g.s3 ^= g.s1
    g.s1 ^= g.s2
    g.s0 ^= g.s3
    g.s2 ^= t
    g.s3 = rotl(g.s3, 45)
    return result


cdef inline uint64_t bounded(Xoshiro* g, uint64_t n) noexcept nogil:
    """A uniform integer in [0, n), n >= 1: Lemire's method (the high word of a 64 x 64
    bit product), rejecting the few draws that would make some values likelier. Without
    a 128-bit type, the remainder of a draw below the largest multiple of n."""
    cdef uint64_t x, lo, threshold, limit
    if HAVE_INT128:
        x = next_u64(g)
        lo = mullo64(x, n)
        if lo < n:
            threshold = (-n) % n  # 2^64 mod n
            while lo < threshold:
                x = next_u64(g)
                lo = mullo64(x, n)
        return mulhi64(x, n)
    limit = <uint64_t>0xFFFFFFFFFFFFFFFF - (<uint64_t>0xFFFFFFFFFFFFFFFF % n)
    x = next_u64(g)
    while x >= limit:
        x = next_u64(g)
    return x % n


cdef inline void fisher_yates(intp_t* a, Py_ssize_t n, Xoshiro* g) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef intp_t tmp
    i = n - 1
    while i > 0:
        j = <Py_ssize_t>bounded(g, <uint64_t>(i + 1))
        tmp = a[i]
        a[i] = a[j]
        a[j] = tmp
        i -= 1


cdef int scatter_shuffle(intp_t* a, Py_ssize_t n, Xoshiro* g, int bucket_log2) noexcept nogil:
    """The two-pass shuffle of the module's docstring; -1 when out of memory."""
    cdef Py_ssize_t nb = 1, i, b
    cdef int shift
    cdef Xoshiro replay
    cdef intp_t* tmp
    cdef Py_ssize_t* start
    while (nb << bucket_log2) < n:
        nb <<= 1
    # Bucket numbers from the top bits of a draw: nb is a power of two, so every bucket
    # is equally likely.
    shift = 64
    b = nb
    while b > 1:
        b >>= 1
        shift -= 1
    tmp = <intp_t*>malloc(n * sizeof(intp_t))
    start = <Py_ssize_t*>malloc((nb + 1) * sizeof(Py_ssize_t))
    if tmp == NULL or start == NULL:
        free(tmp)
        free(start)
        return -1
    for b in range(nb + 1):
        start[b] = 0
    replay = g[0]
    for i in range(n):
        start[(next_u64(g) >> shift) + 1] += 1
    for b in range(nb):
        start[b + 1] += start[b]
    for i in range(n):
        b = <Py_ssize_t>(next_u64(&replay) >> shift)
        tmp[start[b]] = a[i]
        start[b] += 1
    # start[b] now ends bucket b (the beginning of b + 1).
    for b in range(nb):
        i = start[b - 1] if b > 0 else 0
        fisher_yates(tmp + i, start[b] - i, g)
    memcpy(a, tmp, n * sizeof(intp_t))
    free(tmp)
    free(start)
    return 0


def shuffle_order(intp_t[::1] order, uint64_t seed, int bucket_log2=BUCKET_LOG2):
    """Put ``order`` in a uniformly random order, in place, as a function of ``seed``
    alone (see the module's docstring). ``bucket_log2`` (tests only) sets the bucket
    size of the two-pass shuffle."""
    cdef Py_ssize_t n = order.shape[0]
    cdef Xoshiro g
    cdef int status = 0
    if bucket_log2 < 1 or bucket_log2 > 40:
        raise ValueError("bucket_log2 must be in [1, 40]")
    if n < 2:
        return
    seed_xoshiro(&g, seed)
    with nogil:
        if n <= (<Py_ssize_t>1 << bucket_log2):
            fisher_yates(&order[0], n, &g)
        else:
            status = scatter_shuffle(&order[0], n, &g, bucket_log2)
    if status != 0:
        raise MemoryError("no memory to shuffle the training rows")
