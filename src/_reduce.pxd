# The fixed-order sum behind cgd's thread-count-independent gradients: per-chunk
# partial gradients are always added in chunk order, whichever thread computed them.

from cython cimport floating


cdef inline void reduce_chunks(floating* buf, Py_ssize_t stride, Py_ssize_t nch,
                               Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """buf[j] = (((row0 + row1) + row2) + ...)[j] for j in [j0, j1), rows `stride` apart:
    the same order for every j whichever thread sums which range."""
    cdef Py_ssize_t c, j
    cdef const floating* src
    for c in range(1, nch):
        src = buf + c * stride
        for j in range(j0, j1):
            buf[j] = buf[j] + src[j]


cdef inline void reduce_rows(floating* dst, floating** rows, Py_ssize_t nch,
                             Py_ssize_t n) noexcept nogil:
    """dst[j] = (((rows[0] + rows[1]) + rows[2]) + ...)[j] for j in [0, n): reduce_chunks'
    order and bits, the rows anywhere (dst may be rows[0])."""
    cdef Py_ssize_t c, j
    cdef const floating* src
    if dst != rows[0]:
        for j in range(n):
            dst[j] = rows[0][j]
    for c in range(1, nch):
        src = rows[c]
        for j in range(n):
            dst[j] = dst[j] + src[j]
