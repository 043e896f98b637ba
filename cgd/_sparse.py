"""Sparse input shared by every estimator: CSR in canonical form, handed to the kernels
as its three arrays.

scikit-learn's ``validate_data(..., accept_sparse="csr")`` already turns CSC, COO and
the other formats into CSR (once) and keeps float32 / float64 data. What is left is
the canonical form the kernels rely on: column indices sorted within each row and no
duplicate entries. A duplicate (i, j) entry means the sum of its values, as in every
scipy.sparse product, so summing duplicates changes no dot product or gradient; sorted
indices make a row's columns visit the weights in memory order. The caller's matrix is
never modified: a matrix that is not canonical is copied first.
"""

import numpy as np
import scipy.sparse as sp


def canonical_csr(X):
    """``X`` (a CSR matrix or array from ``validate_data``) with sorted column indices
    and no duplicate entries, copied only when it is not so already.

    Parameters
    ----------
    X : scipy.sparse CSR matrix or array

    Returns
    -------
    X : the same object, or a canonical copy of it
    """
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()  # also sorts the indices
    return X


def csr_arrays(X):
    """The ``(data, indices, indptr)`` arrays of a canonical CSR ``X``, contiguous, with
    ``indices`` and ``indptr`` of one integer type (int32, or int64 when either needs
    it), which is what the kernels' fused index type expects.

    Parameters
    ----------
    X : scipy.sparse CSR matrix or array, canonical

    Returns
    -------
    data : ndarray of X.dtype, shape (nnz,)
    indices : ndarray of int32 or int64, shape (nnz,)
    indptr : ndarray of the same type, shape (n_rows + 1,)
    """
    index_dtype = np.result_type(X.indices.dtype, X.indptr.dtype)
    if index_dtype not in (np.int32, np.int64):
        index_dtype = np.int64
    data = np.ascontiguousarray(X.data)
    indices = np.ascontiguousarray(X.indices, dtype=index_dtype)
    indptr = np.ascontiguousarray(X.indptr, dtype=index_dtype)
    return data, indices, indptr


def is_sparse(X):
    """True for any scipy.sparse matrix or array."""
    return sp.issparse(X)
