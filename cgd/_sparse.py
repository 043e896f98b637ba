"""Sparse input shared by every estimator: CSR in canonical form, handed to the kernels
as its three arrays.

scikit-learn's ``validate_data(..., accept_sparse="csr")`` already turns CSC, COO and
the other formats into CSR (once) and keeps float32 / float64 data. What is left is
the canonical form the kernels rely on: column indices sorted within each row and no
duplicate entries. A duplicate (i, j) entry means the sum of its values, as in every
scipy.sparse product, so summing duplicates changes no dot product or gradient; sorted
indices make a row's columns visit the weights in memory order. The caller's matrix is
never modified: a matrix that is not canonical is copied first.

Beside the wrapper of ``validate_data`` every entry point calls (``validate_input``)
stands ``plain_arrays``: the dense arrays that call would return unchanged.
"""

import numpy as np
import scipy.sparse as sp

from sklearn.utils.validation import validate_data

from . import _checks


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


def check_sparse_structure(X):
    """Raise a ValueError unless the index arrays of ``X`` describe a valid matrix.

    scipy checks them when a matrix is built, but not after its arrays are edited (or
    when it is built with ``check=False``), and its own conversions and sorting, like
    cgd's kernels, would then read and write out of bounds and crash the process. The
    check is O(nnz), once per call.
    """
    fmt = X.format
    if fmt in ("csr", "csc", "bsr"):
        n_major, n_minor = X.shape if fmt != "csc" else X.shape[::-1]
        if fmt == "bsr":
            n_major //= X.blocksize[0]
            n_minor //= X.blocksize[1]
        indptr, indices = np.asarray(X.indptr), np.asarray(X.indices)
        if indptr.ndim != 1 or indptr.shape[0] != n_major + 1:
            raise ValueError(f"Malformed sparse {fmt} matrix: indptr has {indptr.shape[0]} "
                             f"entries, {n_major + 1} expected.")
        if indptr[0] != 0 or indptr[-1] > indices.shape[0] or np.any(np.diff(indptr) < 0):
            raise ValueError(f"Malformed sparse {fmt} matrix: indptr must start at 0, never "
                             "decrease and end within the stored entries.")
        stored = indices[:indptr[-1]]
        if stored.size and (stored.min() < 0 or stored.max() >= n_minor):
            raise ValueError(f"Malformed sparse {fmt} matrix: a stored entry's index is out "
                             f"of range [0, {n_minor}).")
    elif fmt == "coo":
        for idx, dim in ((X.row, X.shape[0]), (X.col, X.shape[1])):
            if idx.size and (idx.min() < 0 or idx.max() >= dim):
                raise ValueError("Malformed sparse coo matrix: a stored entry's index is out "
                                 f"of range [0, {dim}).")


def plain_arrays(X, y, regression, n_threads=1):
    """X and y that scikit-learn's validate_data (dtype float64 / float32, C order, finite,
    y numeric for a regressor) would return unchanged, with nothing to warn about: a
    C-contiguous 2-D ndarray of float64 or float32 with at least one row and column,
    finite, and a 1-D ndarray of as many integer (or, for a regressor, finite float)
    labels. Anything else goes through validate_data, for its conversions and errors.

    X's finiteness is checked natively on ``n_threads`` threads (the fit's): it is a pass
    over all of X, as long as a mini-batch epoch of it, and on one thread it would hold
    the other cores idle.
    """
    if not (type(X) is np.ndarray and type(y) is np.ndarray and X.ndim == 2
            and y.ndim == 1 and X.dtype in (np.float64, np.float32)
            and X.flags.c_contiguous and X.shape[0] >= 1 and X.shape[1] >= 1
            and y.shape[0] == X.shape[0]
            and y.dtype.kind in ("iuf" if regression else "iu")):
        return False
    if not _checks.all_finite(X.reshape(-1), n_threads):
        return False
    return y.dtype.kind != "f" or bool(np.isfinite(y).all())


def take_plain_arrays(estimator, X, y, regression, n_threads):
    """A fit's ``validate_data(estimator, X, y, reset=True)`` for the arrays it would
    return unchanged (see :func:`plain_arrays`), without its cost (~0.1 ms, several times
    that on a cold cache, plus a one-thread pass over X): the feature count recorded, no
    feature names. True when done; False sends the caller to :func:`validate_input`."""
    if not plain_arrays(X, y, regression, n_threads):
        return False
    estimator.n_features_in_ = X.shape[1]
    estimator.__dict__.pop("feature_names_in_", None)
    return True


_NO_Y = object()


def validate_input(estimator, X, y=_NO_Y, canonical=True, **check_params):
    """scikit-learn's ``validate_data`` with ``accept_sparse="csr"``, for every entry point
    of the estimators: a sparse X is first checked for a valid structure, and the CSR
    that comes out is put in canonical form (see :func:`canonical_csr`) unless
    ``canonical`` is False (for kernels that read unsorted rows and duplicate entries
    as they are, which saves a copy and a sort of X).

    Returns ``X``, or ``(X, y)`` when ``y`` is given.
    """
    if sp.issparse(X):
        check_sparse_structure(X)
    if y is _NO_Y:
        X = validate_data(estimator, X, accept_sparse="csr", **check_params)
    else:
        X, y = validate_data(estimator, X, y, accept_sparse="csr", **check_params)
    if sp.issparse(X) and canonical:
        X = canonical_csr(X)
    return X if y is _NO_Y else (X, y)
