"""Shuffling the visiting order of the training rows, natively and on the fit's threads.

A linear model's epoch over n rows starts with a fresh random order of their indices.
NumPy's ``RandomState.shuffle`` is a Fisher-Yates pass whose every swap is a cache miss
once the index array outgrows the cache: 29 ms for 10^6 rows, as long as a whole
mini-batch epoch over them (and on one thread while the others wait). Here:

* the random numbers come from xoshiro256**, a generator of a few instructions per
  draw, seeded through splitmix64 from one 64-bit seed per epoch (drawn from the
  estimator's ``random_state``) and a stream number: every piece of work below has a
  stream of its own, so no piece depends on which thread ran another one, or when;
* bounded draws use Lemire's multiply-and-reject method: exactly uniform, with no
  division in the common case; a bound below 2^32 takes 32 random bits, two per draw;
* an array larger than one cache-sized bucket (2^15 indices) is shuffled in two
  passes (the Rao-Sandelius scatter shuffle), on the fit's threads:

  1. the array is cut into C chunks (at most 256, of at least 2^13 indices; C and the
     chunks' bounds depend on n alone: chunk c is [c n / C, (c + 1) n / C)). Each chunk, with its own stream, draws for each
     of its elements one of B buckets (B a power of two, B * 2^15 >= n: a few random
     bits per element, many elements per draw), counts them, and sorts its elements
     by bucket into the same range of a scratch array, in cache;
  2. each bucket, with its own stream, reads its elements chunk after chunk from the
     scratch array and deals them into its own range of the output (the buckets' sizes
     in bucket order) by an "inside-out" Fisher-Yates pass, in cache: element i goes
     to place i, after the element at a uniformly drawn place j <= i moves to i.

  Why the result is a uniformly random permutation: every element's bucket is drawn
  independently of the others' and of where the element sits, with the same law
  (uniform here), and then each bucket's elements are put in a uniformly random order
  of their own. A given output order sigma arises from exactly one bucket assignment
  for each vector of bucket sizes (m_1 .. m_B): the one that puts the first m_1 entries
  of sigma in bucket 1, the next m_2 in bucket 2, and so on. With p_b the probability
  of bucket b, P(sigma) = sum over (m_b) of prod_b p_b^m_b / m_b! = (p_1 + .. + p_B)^n
  / n! = 1 / n!, the same for every sigma (multinomial theorem). The order in which a
  bucket's elements arrive (chunk after chunk) does not matter: the bucket's own
  shuffle is uniform whatever its input order. What would break it: elements'
  buckets that depend on each other or on the elements' positions.

  Which thread shuffles which chunk or bucket never changes the outcome, so the
  permutation is a function of (seed, n) alone: the same for any thread count, and on
  every machine (the arithmetic is exact integer arithmetic; the 64-bit product
  without a 128-bit type computes the same value). Threads take chunks and buckets
  dynamically, so a thread that another process keeps off its core only leaves its
  share to the others.
* an array of at most one bucket gets one in-place Fisher-Yates pass, on one thread.

Single-thread speed: the output is written by the second pass itself (no final copy),
the bucket of an element is drawn with a few bits rather than a 64-bit draw, and the
scratch array can be the caller's (kept across epochs: the one allocation per call is
the small table of counts, 2 C B entries).

The permutations differ from NumPy's for the same seed.
"""

from cython.parallel cimport prange, parallel
from libc.stdint cimport uint64_t, uint32_t
from libc.stdlib cimport malloc, free

from _runtime cimport cgd_now

ctypedef Py_ssize_t intp_t

cdef extern from *:
    """
    #include <stdint.h>
    /* The high word of a 64 x 64-bit product, in two forms that compute the same value:
       a 128-bit product where the compiler has one, 32-bit pieces elsewhere. */
    static inline uint64_t cgd_mulhi64_portable(uint64_t a, uint64_t b) {
        uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
        uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi;
        uint64_t cross = (lo_lo >> 32) + (uint32_t)hi_lo + lo_hi;
        return a_hi * b_hi + (hi_lo >> 32) + (cross >> 32);
    }
    #if defined(__SIZEOF_INT128__)
    static inline uint64_t cgd_mulhi64(uint64_t a, uint64_t b) {
        return (uint64_t)(((unsigned __int128)a * b) >> 64);
    }
    #else
    #define cgd_mulhi64 cgd_mulhi64_portable
    #endif
    """
    uint64_t mulhi64 "cgd_mulhi64"(uint64_t a, uint64_t b) noexcept nogil
    uint64_t mulhi64_portable "cgd_mulhi64_portable"(uint64_t a, uint64_t b) noexcept nogil


cdef enum:
    # Elements per bucket of the two-pass shuffle: 2^15 indices of 8 bytes, 256 KiB,
    # a bucket's Fisher-Yates pass stays in a core's L2 cache.
    BUCKET_LOG2 = 15
    # Chunks of the first pass: at least 2^13 indices (64 KiB: the chunk and its
    # bucket-sorted copy stay in L2), at most MAX_CHUNKS of them (the counts table has
    # C * B entries).
    CHUNK_LOG2 = 13
    MAX_CHUNKS = 256

cdef enum:
    # Deliberate defects for the tests (set by _set_test_hook), so that they can show
    # their checks fail on a biased shuffle or an allocation failure.
    HOOK_NONE = 0
    HOOK_CORRELATED_BUCKETS = 1  # an element's bucket shares bits with the next one's
    HOOK_SATTOLO = 2             # j < i in Fisher-Yates: only cyclic permutations
    HOOK_NO_MEMORY = 3           # the allocations fail
    HOOK_SLOW_FIRST_CHUNK = 4    # chunk 0's first pass takes 30 ms longer

cdef int TEST_HOOK = HOOK_NONE

cdef struct Xoshiro:
    uint64_t s0, s1, s2, s3


cdef struct Draws:
    # A generator and the unused upper half of its last draw (32-bit draws).
    Xoshiro g
    uint64_t spare
    int has_spare


cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t splitmix64(uint64_t* state) noexcept nogil:
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline void seed_stream(Xoshiro* g, uint64_t seed, uint64_t stream) noexcept nogil:
    """The four words of stream ``stream``'s state from splitmix64, as xoshiro's authors
    recommend (never all zero). Stream s takes splitmix64's outputs 4s + 1 .. 4s + 4 from
    ``seed``: outputs of distinct counters, so distinct streams start from distinct
    states."""
    cdef uint64_t sm = seed + stream * (<uint64_t>4 * <uint64_t>0x9E3779B97F4A7C15)
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


cdef inline void seed_draws(Draws* d, uint64_t seed, uint64_t stream) noexcept nogil:
    seed_stream(&d.g, seed, stream)
    d.spare = 0
    d.has_spare = 0


cdef inline uint32_t next_u32(Draws* d) noexcept nogil:
    if d.has_spare:
        d.has_spare = 0
        return <uint32_t>(d.spare >> 32)
    d.spare = next_u64(&d.g)
    d.has_spare = 1
    return <uint32_t>d.spare


cdef inline uint64_t below32(Draws* d, uint64_t s) noexcept nogil:
    """A uniform integer in [0, s), 1 <= s < 2^32 (0 for s = 0): Lemire's method, the
    high half of a 32 x 32-bit product, rejecting the few draws that would make some
    values likelier."""
    cdef uint64_t m = <uint64_t>next_u32(d) * s
    cdef uint32_t threshold
    if <uint32_t>m < s:
        threshold = <uint32_t>(<uint32_t>0 - <uint32_t>s) % <uint32_t>s  # 2^32 mod s
        while <uint32_t>m < threshold:
            m = <uint64_t>next_u32(d) * s
    return m >> 32


cdef inline uint64_t below64(Draws* d, uint64_t s) noexcept nogil:
    """below32 for any s < 2^64: the high word of a 64 x 64-bit product."""
    cdef uint64_t x = next_u64(&d.g)
    cdef uint64_t lo = x * s
    cdef uint64_t threshold
    if lo < s:
        threshold = (<uint64_t>0 - s) % s  # 2^64 mod s
        while lo < threshold:
            x = next_u64(&d.g)
            lo = x * s
    return mulhi64(x, s)


cdef void fisher_yates(intp_t* a, Py_ssize_t n, uint64_t seed, int bonus) noexcept nogil:
    """In place, from the last element down (``bonus`` 1; 0 is the test hook's
    Sattolo variant)."""
    cdef Draws d
    cdef Py_ssize_t i, j
    cdef intp_t tmp
    seed_draws(&d, seed, 1)
    i = n - 1
    while i > 0:
        if i < <Py_ssize_t>0xFFFFFFFF:
            j = <Py_ssize_t>below32(&d, <uint64_t>(i + bonus))
        else:
            j = <Py_ssize_t>below64(&d, <uint64_t>(i + bonus))
        tmp = a[i]
        a[i] = a[j]
        a[j] = tmp
        i -= 1


cdef inline Py_ssize_t chunk_lo(Py_ssize_t c, Py_ssize_t n, Py_ssize_t n_chunks) noexcept nogil:
    return <Py_ssize_t>((<unsigned long long>c * <unsigned long long>n)
                        // <unsigned long long>n_chunks)


cdef void sort_chunk(const intp_t* a, intp_t* tmp, Py_ssize_t lo, Py_ssize_t hi,
                     Py_ssize_t* cnt, Py_ssize_t* end, Py_ssize_t nb, int k, int step,
                     uint64_t seed, Py_ssize_t c, int hook) noexcept nogil:
    """First pass over chunk [lo, hi): each element's bucket (k bits of a draw, 64 // k
    buckets per draw), the chunk's count of each (``cnt``), and its elements sorted by
    bucket into tmp[lo:hi]; ``end[b]``: where bucket b's elements end, from lo. The
    buckets are drawn twice from the same stream (to count, then to place), so none is
    stored."""
    cdef Xoshiro g
    cdef uint64_t w = 0
    cdef uint64_t mask = <uint64_t>(nb - 1)
    cdef int per = 64 // k
    cdef int left
    cdef Py_ssize_t i, b, s
    cdef double t0
    cdef intp_t* out = tmp + lo
    for b in range(nb):
        cnt[b] = 0
    if hook == HOOK_SLOW_FIRST_CHUNK and c == 0:
        t0 = cgd_now()
        while cgd_now() < t0 + 0.03:
            pass
    seed_stream(&g, seed, 2 * <uint64_t>c)
    left = 0
    for i in range(lo, hi):
        if left == 0:
            w = next_u64(&g)
            left = per
        cnt[w & mask] += 1
        w >>= step
        left -= 1
    s = 0
    for b in range(nb):
        end[b] = s
        s += cnt[b]
    seed_stream(&g, seed, 2 * <uint64_t>c)
    left = 0
    for i in range(lo, hi):
        if left == 0:
            w = next_u64(&g)
            left = per
        b = <Py_ssize_t>(w & mask)
        out[end[b]] = a[i]
        end[b] += 1
        w >>= step
        left -= 1


cdef void deal_bucket(intp_t* a, const intp_t* tmp, Py_ssize_t n, Py_ssize_t b,
                      Py_ssize_t stride, Py_ssize_t n_chunks, const Py_ssize_t* cnt,
                      const Py_ssize_t* end, uint64_t seed, int bonus) noexcept nogil:
    """Second pass for bucket b: its range of the output starts after the elements of
    the buckets before it, in every chunk (those before it in chunk c end where b's
    begin); its elements, chunk after chunk, are dealt there by an inside-out
    Fisher-Yates pass with the bucket's own stream."""
    cdef Py_ssize_t c, t, m, start = 0, size = 0, i = 0, j
    cdef const intp_t* src
    cdef intp_t* out
    cdef intp_t x
    cdef Draws d
    for c in range(n_chunks):
        start += end[c * stride + b] - cnt[c * stride + b]
        size += cnt[c * stride + b]
    out = a + start
    seed_draws(&d, seed, 2 * <uint64_t>b + 1)
    for c in range(n_chunks):
        m = cnt[c * stride + b]
        src = tmp + chunk_lo(c, n, n_chunks) + end[c * stride + b] - m
        if size < <Py_ssize_t>0xFFFFFFFF:
            for t in range(m):
                x = src[t]
                j = <Py_ssize_t>below32(&d, <uint64_t>(i + bonus))
                out[i] = out[j]
                out[j] = x
                i += 1
        else:
            for t in range(m):
                x = src[t]
                j = <Py_ssize_t>below64(&d, <uint64_t>(i + bonus))
                out[i] = out[j]
                out[j] = x
                i += 1


cdef int scatter_shuffle(intp_t* a, Py_ssize_t n, uint64_t seed, int n_threads,
                         intp_t* scratch, int bucket_log2, int chunk_log2,
                         int hook) noexcept nogil:
    """The two-pass shuffle of the module's docstring; -1 when out of memory.
    ``scratch``: n elements, or NULL (allocated here)."""
    cdef Py_ssize_t nb = 2, n_chunks, c, b
    cdef int k = 1, step, bonus, nt
    cdef Py_ssize_t stride
    cdef void* block
    cdef Py_ssize_t* table
    cdef intp_t* tmp = scratch
    cdef intp_t* own = NULL
    while (nb << bucket_log2) < n:
        nb <<= 1
        k += 1
    n_chunks = ((n - 1) >> chunk_log2) + 1
    if n_chunks > MAX_CHUNKS:
        n_chunks = MAX_CHUNKS
    if n_chunks > 4 * n // nb:
        # Only the tests' tiny buckets get here: the table stays within 8n entries.
        n_chunks = max(1, 4 * n // nb)
    step = 1 if hook == HOOK_CORRELATED_BUCKETS else k
    bonus = 0 if hook == HOOK_SATTOLO else 1
    if hook == HOOK_NO_MEMORY:
        return -1
    # The counts and ends of every (chunk, bucket): C rows of each, of ``stride`` >= B
    # entries, each row in cache lines of its own (a chunk's counts are written once
    # per element: two threads must not share a line of them).
    stride = (nb + 7) & ~(<Py_ssize_t>7)
    block = malloc((2 * n_chunks * stride + 8) * sizeof(Py_ssize_t))
    table = <Py_ssize_t*>((<size_t>block + 63) & ~(<size_t>63))
    if tmp == NULL:
        own = <intp_t*>malloc(n * sizeof(intp_t))
        tmp = own
    if block == NULL or tmp == NULL:
        free(block)
        free(own)
        return -1
    nt = n_threads
    if nt > n_chunks:
        nt = <int>n_chunks
    if nt <= 1:
        for c in range(n_chunks):
            sort_chunk(a, tmp, chunk_lo(c, n, n_chunks), chunk_lo(c + 1, n, n_chunks),
                       table + c * stride, table + (n_chunks + c) * stride, nb, k, step, seed, c, hook)
        for b in range(nb):
            deal_bucket(a, tmp, n, b, stride, n_chunks, table, table + n_chunks * stride, seed,
                        bonus)
    else:
        # Dynamic schedules: the work of each chunk and bucket is fixed (its own stream),
        # whichever thread does it. Two parallel regions: the end of the first is the
        # barrier that the second pass needs (every chunk's table rows complete; two
        # prange loops in one Cython parallel block would not wait for each other).
        for c in prange(n_chunks, schedule="dynamic", num_threads=nt):
            sort_chunk(a, tmp, chunk_lo(c, n, n_chunks), chunk_lo(c + 1, n, n_chunks),
                       table + c * stride, table + (n_chunks + c) * stride, nb, k, step,
                       seed, c, hook)
        for b in prange(nb, schedule="dynamic", num_threads=nt):
            deal_bucket(a, tmp, n, b, stride, n_chunks, table, table + n_chunks * stride,
                        seed, bonus)
    free(block)
    free(own)
    return 0


def shuffle_order(intp_t[::1] order, uint64_t seed, int n_threads=1, scratch=None, *,
                  int bucket_log2=BUCKET_LOG2, int chunk_log2=CHUNK_LOG2):
    """Put ``order`` in a uniformly random order, in place, as a function of ``seed``
    and its length alone (see the module's docstring), on up to ``n_threads`` threads.

    ``scratch``: an intp array of at least ``len(order)`` elements (not overlapping
    ``order``) that the shuffle may overwrite, kept by the caller from one call to the
    next; None: allocated per call. ``bucket_log2`` and ``chunk_log2`` (tests only) set
    the bucket size and the smallest chunk of the two-pass shuffle. Raises MemoryError
    (``order`` unchanged) when out of memory."""
    cdef Py_ssize_t n = order.shape[0]
    cdef intp_t[::1] work
    cdef intp_t* tmp = NULL
    cdef int status = 0
    cdef int hook = TEST_HOOK
    if bucket_log2 < 1 or bucket_log2 > 40:
        raise ValueError("bucket_log2 must be in [1, 40]")
    if chunk_log2 < 0 or chunk_log2 > 40:
        raise ValueError("chunk_log2 must be in [0, 40]")
    if n < 2:
        return
    if n <= (<Py_ssize_t>1 << bucket_log2):
        with nogil:
            fisher_yates(&order[0], n, seed, 0 if hook == HOOK_SATTOLO else 1)
        return
    if scratch is not None:
        work = scratch
        if work.shape[0] < n:
            raise ValueError(f"scratch has {work.shape[0]} elements; the shuffle needs {n}")
        tmp = &work[0]
        if tmp < &order[0] + n and &order[0] < tmp + n:
            raise ValueError("scratch overlaps order")
    with nogil:
        status = scatter_shuffle(&order[0], n, seed, n_threads, tmp, bucket_log2,
                                 chunk_log2, hook)
    if status != 0:
        raise MemoryError("no memory to shuffle the training rows")


def _set_test_hook(int hook):
    """Tests only: 0 the shuffle as it is; 1 correlated bucket draws; 2 Sattolo's
    variant of Fisher-Yates; 3 allocations that fail; 4 a first chunk 30 ms slower than
    the others (a second pass that did not wait for the first would read its counts too
    early). Returns the previous hook."""
    global TEST_HOOK
    cdef int previous = TEST_HOOK
    if hook < HOOK_NONE or hook > HOOK_SLOW_FIRST_CHUNK:
        raise ValueError("unknown test hook")
    TEST_HOOK = hook
    return previous


def _mulhi64_agree(uint64_t a, uint64_t b):
    """Tests only: the high word of a * b in the 128-bit and the portable forms."""
    return mulhi64(a, b), mulhi64_portable(a, b)
