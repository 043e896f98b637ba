"""Every private scikit-learn name cgd uses, in one place.

Supported range: scikit-learn >= 1.9, < 1.10 (the dependency range in pyproject.toml;
a test keeps the two equal).

scikit-learn may rename or move a private name in any release, without a deprecation
cycle. cgd's modules import such names only from here, and a test
(tests/test_sklearn_compat.py) fails if a private scikit-learn import appears anywhere
else in cgd/. When a new scikit-learn release breaks one of these imports, fix it here:
the notes below say why each name is used and what to do if it moves. Where a few lines
of our own can stand in, the import falls back to them, so a release that drops the
name degrades gracefully instead of breaking ``import cgd``; the tests check each
fallback against scikit-learn's own function while scikit-learn still has it.

Used from scikit-learn (private):

``sklearn.base._fit_context`` -> :func:`fit_context`
    Decorates ``fit`` / ``partial_fit``: validates the constructor parameters against
    ``_parameter_constraints`` (InvalidParameterError, as scikit-learn's estimators
    raise) and skips the re-validation of nested calls. scikit-learn's version also
    opens its callback context (1.9). It has lived in ``sklearn.base`` since 1.3. If
    it moves, import it from its new home below; the fallback validates and sets the
    skip flag the same way, without the callback context, which cgd's estimators do
    not use.

``sklearn.utils._param_validation``: ``Interval``, ``Options``, ``StrOptions``,
``InvalidParameterError``, ``validate_parameter_constraints``
    The constraint objects of ``_parameter_constraints``, read by
    ``BaseEstimator._validate_params``, so that a bad parameter value is refused as by
    scikit-learn's own estimators (the estimator checks test this). Here since 1.2.
    The linear models call ``validate_parameter_constraints`` (what
    ``BaseEstimator._validate_params`` calls) themselves, on the parameters whose values
    they have not seen validated yet.
    No fallback: the constraints only mean something to scikit-learn's validation
    machinery, which would have moved with them; import them from their new home. If
    scikit-learn ever drops the machinery, replace ``_parameter_constraints`` by
    explicit checks in the estimators' ``_check_params``.

``sklearn.utils.validation._check_sample_weight`` -> :func:`check_sample_weight`
    Validates ``sample_weight`` with scikit-learn's rules and messages (None or a
    scalar -> constant weights, 1-D, one per sample, float32 / float64, optionally
    non-negative, not all zero). The fallback below implements those rules for NumPy
    input.

Replaced by our own code (no longer imported):

``sklearn.linear_model._base.SparseCoefMixin``
    ``densify`` / ``sparsify`` of the linear models: a few lines in linear_model.py.
``sklearn.utils.multiclass._check_partial_fit_first_call``
    ``first_partial_fit_call`` in _fit_loop.py, with scikit-learn's messages.
``sklearn.utils.optimize._check_optimize_result``
    ``_lbfgs_iterations`` in neural_network.py (L-BFGS's iteration count and
    scikit-learn's ConvergenceWarning).
``sklearn.utils.fixes._get_additional_lbfgs_options_dict``
    ``_lbfgs_print_options`` in neural_network.py (SciPy >= 1.15 deprecates
    L-BFGS-B's ``iprint``).
"""

import functools
import numbers

import numpy as np
from sklearn import config_context, get_config
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_array, check_is_fitted, check_non_negative

# No fallback for these (see the module docstring).
from sklearn.utils._param_validation import (  # noqa: F401
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = [
    "Interval",
    "InvalidParameterError",
    "Options",
    "StrOptions",
    "check_sample_weight",
    "fit_context",
    "validate_parameter_constraints",
]


def _fit_context_fallback(*, prefer_skip_nested_validation):
    """Decorator of ``fit`` / ``partial_fit``: validate the parameters (unless
    scikit-learn's ``skip_parameter_validation`` is set, or this is a ``partial_fit``
    of a fitted estimator), then run the method with nested validation skipped when
    ``prefer_skip_nested_validation``."""

    def decorator(fit_method):
        @functools.wraps(fit_method)
        def wrapper(estimator, *args, **kwargs):
            skip = get_config()["skip_parameter_validation"]
            if not skip and not (fit_method.__name__ == "partial_fit"
                                 and _is_fitted(estimator)):
                estimator._validate_params()
            with config_context(
                    skip_parameter_validation=prefer_skip_nested_validation or skip):
                return fit_method(estimator, *args, **kwargs)

        return wrapper

    return decorator


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def _check_sample_weight_fallback(sample_weight, X, *, dtype=None,
                                  ensure_non_negative=False, allow_all_zero_weights=False):
    """Sample weights as a C-contiguous float array of shape (n_samples,).

    None or a number give that constant weight for every sample. An array keeps a
    float32 / float64 dtype (anything else becomes float64) unless ``dtype`` says
    otherwise (a non-float ``dtype`` means float64).
    """
    n_samples = X.shape[0]
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        dtype = np.float64
    if sample_weight is None or isinstance(sample_weight, numbers.Number):
        value = 1.0 if sample_weight is None else sample_weight
        sample_weight = np.full(n_samples, value, dtype=dtype or np.float64)
    else:
        sample_weight = check_array(
            sample_weight, accept_sparse=False, ensure_2d=False, order="C",
            dtype=[np.float64, np.float32] if dtype is None else dtype,
            input_name="sample_weight")
        if sample_weight.ndim != 1:
            raise ValueError(
                f"Sample weights must be 1D array or scalar, got {sample_weight.ndim}D "
                f"array. Expected either a scalar value or a 1D array of length "
                f"{n_samples}."
            )
        if sample_weight.shape != (n_samples,):
            raise ValueError(
                f"sample_weight.shape == {sample_weight.shape}, expected {(n_samples,)}!"
            )
    if not allow_all_zero_weights and np.all(sample_weight == 0):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    if ensure_non_negative:
        check_non_negative(sample_weight, "`sample_weight`")
    return sample_weight


try:
    from sklearn.base import _fit_context as fit_context
except ImportError:  # moved or removed: see the module docstring
    fit_context = _fit_context_fallback

try:
    from sklearn.utils.validation import _check_sample_weight as check_sample_weight
except ImportError:  # moved or removed: see the module docstring
    check_sample_weight = _check_sample_weight_fallback
