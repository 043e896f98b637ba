# Row-major GEMM over scipy.linalg.cython_blas, fused over float32 / float64, callable
# without the GIL. BLAS is column-major: a row-major r x c matrix is the column-major
# c x r matrix, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(
    bint trans_a, bint trans_b,
    int m, int n, int k,                 # C is m x n, op(A) m x k, op(B) k x n
    double alpha,
    const floating* A, int lda,          # IN  row stride of A as stored
    const floating* B, int ldb,          # IN  row stride of B as stored
    double beta,
    floating* C, int ldc,                # IN/OUT row stride of C
) noexcept nogil:
    """C <- alpha op(A) op(B) + beta C, all matrices row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef float fa = <float>alpha, fb = <float>beta
    if m == 0 or n == 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &fa, <float*>B, &ldb, <float*>A, &lda, &fb, C, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)
