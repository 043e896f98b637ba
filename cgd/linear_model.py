"""SGDRegressor and SGDClassifier: scikit-learn's estimators, trained by native epochs.

Every scikit-learn 1.9 parameter keeps its name, default and meaning. Added:
``batch_size`` (1 = scikit-learn's per-sample SGD), ``solver`` ('sgd', 'adam',
'adagrad'), ``momentum`` / ``nesterovs_momentum`` / ``beta_1`` / ``beta_2``, ``n_jobs``
(threads inside one fit) and, for the classifier, ``multiclass`` ('ovr' or
'multinomial' softmax).

X may be a scipy.sparse matrix: the kernels then read it as CSR (see the estimators'
Notes for what is exact and what is lazy on sparse input).

The parameters of a fitted model live in one flat buffer of K * (n_features + 1)
values (K coefficient rows, then K intercepts) which the kernel of ``_linear.pyx``
updates in place; ``coef_`` / ``intercept_`` are copies of it made after every
completed epoch, so an interrupted or diverging fit leaves the last finite epoch.
"""

import functools
import threading
import time
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.extmath import safe_sparse_dot, softmax
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, check_is_fitted

from . import _linear, _shuffle
from ._codes import LOSS_CODES, SCHEDULE_CODES, SOLVER_CODES, Target
from ._compat import (Interval, StrOptions, check_sample_weight, fit_context,
                      validate_parameter_constraints)
from ._sparse import csr_arrays, take_plain_arrays, validate_input
from ._fit_loop import (
    ConvergenceTracker,
    run_epochs,
    TransactionMixin,
    balanced_partial_fit_error,
    check_class_labels,
    class_weights,
    first_partial_fit_call,
    linear_divergence_error,
    validation_split,
)
from ._threads import effective_n_threads

__all__ = ["SGDClassifier", "SGDRegressor"]

REGRESSION_LOSSES = ("squared_error", "huber", "epsilon_insensitive", "squared_epsilon_insensitive")
CLASSIFICATION_LOSSES = ("hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron")
TARGET_REGRESSION = Target.TARGET_REGRESSION
TARGET_OVR = Target.TARGET_OVR
TARGET_MULTINOMIAL = Target.TARGET_MULTINOMIAL
# The denominator guard of adam and adagrad. Not a parameter: `epsilon` already means
# the huber / epsilon-insensitive threshold on scikit-learn's linear estimators.
ADAPTIVE_EPSILON = 1e-8
MAX_INT = np.iinfo(np.int32).max
# Multiply-adds a batch must hold before its chunks are spread over threads, for the
# kernels that open a parallel region per batch (sparse X, the lbfgs-style objective):
# below this a parallel region costs more than it saves. The dense epoch keeps one team
# of threads for the whole epoch and decides by measuring instead. The chunk boundaries
# do not change, so neither do the results.
PARALLEL_MIN_WORK = 1 << 17
# Factor of the intercept's learning rate when X is sparse, as scikit-learn's
# SPARSE_INTERCEPT_DECAY: on sparse data the intercept is updated by every sample while
# each coefficient only by the rows that hold its feature, so a full-size intercept
# step would make the intercept move much faster than the weights.
SPARSE_INTERCEPT_DECAY = 0.01

# Parameter values found valid, per estimator class: (name, type, value) of the simple
# types below (see _BaseSGD._validate_params).
_VALID_PARAMS = {}
_SIMPLE_TYPES = (int, float, str, bool, type(None))


@functools.lru_cache(maxsize=None)
def _param_names(cls):
    return tuple(super(_BaseSGD, cls)._get_param_names())


# ------------------------------------------------------------------ loss_functions
# scikit-learn's SGD estimators publish ``loss_functions``: loss name -> (loss class,
# *default arguments). Code written against it tests membership, lists the losses, reads
# the defaults (``loss_functions["huber"][1]``) or builds ``cls(*args)`` and evaluates
# ``py_loss(p, y)`` / ``py_dloss(p, y)``. cgd publishes the same keys with values of the
# same shape, whose classes evaluate the losses as cgd's kernels compute them.
DEFAULT_EPSILON = 0.1  # default threshold of huber and the epsilon-insensitive losses


class SGDLoss:
    """One per-sample loss of cgd's SGD kernels, evaluated one sample at a time.

    ``p`` is the decision value; margin losses take ``y`` in {-1, +1}. ``py_dloss`` is
    the derivative with respect to ``p``, clipped at +-1e12 as in training.
    """

    loss = None  # the ``loss`` parameter value this object computes
    epsilon = DEFAULT_EPSILON

    def py_loss(self, p, y):
        return _linear.sample_loss(LOSS_CODES[self.loss], float(p), float(y),
                                   float(self.epsilon))[0]

    def py_dloss(self, p, y):
        return _linear.sample_loss(LOSS_CODES[self.loss], float(p), float(y),
                                   float(self.epsilon))[1]

    def __repr__(self):
        return f"{type(self).__name__}(loss={self.loss!r})"


class Hinge(SGDLoss):
    """``max(0, threshold - y p)``: threshold 1 is 'hinge', 0 is 'perceptron' (the two
    thresholds cgd's kernels implement)."""

    def __init__(self, threshold=1.0):
        losses = {1.0: "hinge", 0.0: "perceptron"}
        if threshold not in losses:
            raise ValueError(f"cgd implements the hinge loss at threshold 1.0 ('hinge') "
                             f"and 0.0 ('perceptron'), not {threshold!r}.")
        self.threshold = float(threshold)
        self.loss = losses[self.threshold]


class SquaredHinge(SGDLoss):
    """``max(0, 1 - y p) ** 2`` (threshold 1, the one cgd's kernels implement)."""

    def __init__(self, threshold=1.0):
        if threshold != 1.0:
            raise ValueError(f"cgd implements the squared hinge loss at threshold 1.0, "
                             f"not {threshold!r}.")
        self.threshold = 1.0
        self.loss = "squared_hinge"


class LogLoss(SGDLoss):
    """Logistic loss ``log(1 + exp(-y p))``."""

    loss = "log_loss"


class ModifiedHuber(SGDLoss):
    """Smoothed hinge: ``max(0, 1 - y p) ** 2`` for ``y p >= -1``, else ``-4 y p``."""

    loss = "modified_huber"


class SquaredError(SGDLoss):
    """Half the squared error ``(p - y) ** 2 / 2``."""

    loss = "squared_error"


class Huber(SGDLoss):
    """Squared error within ``epsilon`` of the target, linear beyond."""

    loss = "huber"

    def __init__(self, epsilon=DEFAULT_EPSILON):
        self.epsilon = float(epsilon)


class EpsilonInsensitive(SGDLoss):
    """``max(0, |y - p| - epsilon)``."""

    loss = "epsilon_insensitive"

    def __init__(self, epsilon=DEFAULT_EPSILON):
        self.epsilon = float(epsilon)


class SquaredEpsilonInsensitive(SGDLoss):
    """``max(0, |y - p| - epsilon) ** 2``."""

    loss = "squared_epsilon_insensitive"

    def __init__(self, epsilon=DEFAULT_EPSILON):
        self.epsilon = float(epsilon)


REGRESSION_LOSS_FUNCTIONS = {
    "squared_error": (SquaredError,),
    "huber": (Huber, DEFAULT_EPSILON),
    "epsilon_insensitive": (EpsilonInsensitive, DEFAULT_EPSILON),
    "squared_epsilon_insensitive": (SquaredEpsilonInsensitive, DEFAULT_EPSILON),
}
CLASSIFICATION_LOSS_FUNCTIONS = {
    "hinge": (Hinge, 1.0),
    "squared_hinge": (SquaredHinge, 1.0),
    "perceptron": (Hinge, 0.0),
    "log_loss": (LogLoss,),
    "modified_huber": (ModifiedHuber,),
    **REGRESSION_LOSS_FUNCTIONS,
}


class _BaseSGD(TransactionMixin, BaseEstimator):
    """Parameters, validation and the epoch loop shared by both estimators."""

    _parameter_constraints: dict = {
        "penalty": [StrOptions({"l2", "l1", "elasticnet"}), None],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "l1_ratio": [Interval(Real, 0, 1, closed="both"), None],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "shuffle": ["boolean"],
        "verbose": ["verbose"],
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "learning_rate": [
            StrOptions({"constant", "optimal", "invscaling", "adaptive", "pa1", "pa2"})
        ],
        "eta0": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, None, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "average": [Interval(Integral, 0, None, closed="neither"), "boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "solver": [StrOptions(set(SOLVER_CODES))],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "n_jobs": [Integral, None],
    }

    # ------------------------------------------------------------------ validation
    def _check_params(self, for_partial_fit=False):
        """Checks that scikit-learn's constraints cannot express (run before training)."""
        if self.early_stopping and for_partial_fit:
            raise ValueError("early_stopping should be False with partial_fit")
        if self.learning_rate in ("pa1", "pa2"):
            raise ValueError(
                f"learning_rate={self.learning_rate!r} (passive-aggressive) is not supported "
                "by cgd yet; use 'constant', 'optimal', 'invscaling' or 'adaptive'."
            )
        if self.learning_rate == "optimal" and self.alpha == 0 and self.solver == "sgd":
            raise ValueError(
                "alpha must be > 0 since learning_rate is 'optimal'. alpha is used to "
                "compute the optimal learning rate."
            )
        if self.penalty == "elasticnet" and self.l1_ratio is None:
            raise ValueError("l1_ratio must be set when penalty is 'elasticnet'")
        if self.momentum != 0 and self.solver != "sgd":
            raise ValueError(
                f"momentum={self.momentum} is only used by solver='sgd' (got "
                f"solver={self.solver!r}); adam's own momentum is beta_1."
            )
        if self.nesterovs_momentum and self.momentum == 0:
            raise ValueError("nesterovs_momentum=True needs momentum > 0.")

    @classmethod
    def _get_param_names(cls):
        """scikit-learn's list of the constructor's parameters (get_params, set_params,
        clone, repr), read from the signature once per class: inspecting it costs ~30 us
        a call, a sizeable part of a small fit."""
        return list(_param_names(cls))

    def _validate_params(self):
        """scikit-learn's check of the parameters against ``_parameter_constraints``
        (its function, its errors), skipping the values of simple types (numbers,
        strings, None) already found valid for the same parameter of this class: the
        constraints are fixed per class, so such a value's verdict cannot change, and
        the whole check costs ~0.1 ms (several times that on a cold cache) at every fit.
        A value that failed is never remembered, so it fails every time."""
        params = self.get_params(deep=False)
        known = _VALID_PARAMS.setdefault(type(self), set())
        todo = {k: v for k, v in params.items()
                if type(v) not in _SIMPLE_TYPES or (k, type(v), v) not in known}
        if todo:
            validate_parameter_constraints(self._parameter_constraints, todo,
                                           caller_name=self.__class__.__name__)
            for k, v in todo.items():
                if type(v) in _SIMPLE_TYPES and len(known) < 512:
                    known.add((k, type(v), v))

    def _validate_params_again(self):
        """scikit-learn skips parameter validation on a fitted estimator's partial_fit;
        cgd validates every call, since set_params may have changed anything. (Inside
        ``fit_context`` the skip flag is already set for nested calls, so it cannot be
        consulted here.)"""
        self._validate_params()

    def _penalty_coefficients(self):
        """(l1, l2): the coefficients of ||w||_1 and 1/2 ||w||^2 in the objective."""
        if self.penalty is None:
            return 0.0, 0.0
        if self.penalty == "l2":
            return 0.0, float(self.alpha)
        if self.penalty == "l1":
            return float(self.alpha), 0.0
        return self.alpha * self.l1_ratio, self.alpha * (1.0 - self.l1_ratio)

    # ------------------------------------------------------------------ training
    def _schedule(self):
        """(schedule, eta0, power_t) the kernel runs.

        learning_rate='optimal' is Bottou's schedule for plain SGD,
        ``1 / (alpha (t0 + t))``: its steps multiply a raw gradient, and start at
        ``alpha ** -0.25`` (10 at the default alpha). Adam and Adagrad divide the
        gradient by its own running scale, so their step is already in units of the
        weights; Bottou's steps would move every weight by ~10 per update. For them
        'optimal' means instead a step that needs no tuning on standardised data:
        per-coordinate moves that start at 1 and shrink like 1/sqrt(t), t counting
        updates, the decay their convergence analyses assume. Adam gets
        ``eta_t = 1 / sqrt(t)``; Adagrad a constant 1, since dividing by the root of the
        summed squared gradients already shrinks its steps like 1/sqrt(t). Like
        scikit-learn's 'optimal', it ignores eta0 and power_t.

        Measured on the bundled iris, digits, breast_cancer and wine data sets
        (standardised, 5 splits, every other parameter at its default): held-out
        accuracy within 0.015 of scikit-learn's default SGDClassifier for each of its
        classification losses, mostly above it, with no ConvergenceWarning. A constant
        eta0 of 0.01 or 0.001 (Adam's usual step) scored up to 0.14 lower on iris:
        with small steps the loss improves by less than ``tol`` per epoch long before
        the fit has converged, and the stopping rule ends it.
        """
        if self.learning_rate == "optimal" and self.solver == "adam":
            return "invscaling", 1.0, 0.5
        if self.learning_rate == "optimal" and self.solver == "adagrad":
            return "constant", 1.0, 0.0
        return self.learning_rate, float(self.eta0), float(self.power_t)

    def _kernel_config(self, loss_code, target, class_offset, n_threads):
        l1, l2 = self._penalty_coefficients()
        schedule, _, power_t = self._schedule()
        optimal_init = 0.0
        if schedule == "optimal":
            # Bottou's heuristic, as scikit-learn: choose t0 so that the first step is
            # eta0 = typw / max(1, dloss(-typw, 1)).
            typw = np.sqrt(1.0 / np.sqrt(self.alpha))
            _, dl = _linear.sample_loss(loss_code, -typw, 1.0, self.epsilon)
            optimal_init = 1.0 / (typw / max(1.0, dl) * self.alpha)
        return {
            "loss": loss_code,
            "target": target,
            "class_offset": class_offset,
            "schedule": SCHEDULE_CODES[schedule],
            "alpha": float(self.alpha),
            "l1": float(l1),
            "l2": float(l2),
            "epsilon": float(self.epsilon),
            "power_t": power_t,
            "optimal_init": float(optimal_init),
            "fit_intercept": bool(self.fit_intercept),
            "batch_size": int(self.batch_size),
            "average": float(self.average),
            "n_threads": int(n_threads),
            "solver": SOLVER_CODES[self.solver],
            "momentum": float(self.momentum),
            "nesterov": bool(self.nesterovs_momentum),
            "beta_1": float(self.beta_1),
            "beta_2": float(self.beta_2),
            "adam_epsilon": ADAPTIVE_EPSILON,
            "parallel_min_work": float(PARALLEL_MIN_WORK),
        }

    def _initial_params(self, K, n_features, dtype, coef_init, intercept_init,
                        names=("coef_init", "intercept_init")):
        """Flat parameter buffer from coef_init / intercept_init (zeros by default).

        Shapes are checked as scikit-learn checks them, with its messages ("Provided
        ... does not match dataset", which code may match on) followed by the shapes:
        (K, n_features) and (K,) for K > 1 outputs; for one output any array of
        n_features values and an intercept of shape (1,) or ()."""
        params = np.zeros(K * (n_features + 1), dtype=dtype)
        coef_name, intercept_name = names
        if coef_init is not None:
            if sp.issparse(coef_init):
                coef_init = coef_init.toarray()
            shape = np.shape(coef_init)
            if K > 1 and shape != (K, n_features):
                raise ValueError(
                    "Provided ``coef_`` does not match dataset. "
                    f"{coef_name} has shape {shape}; these data need ({K}, {n_features}) "
                    "(n_classes, n_features)."
                )
            if K == 1 and int(np.prod(shape)) != n_features:
                raise ValueError(
                    f"Provided {coef_name} does not match dataset. It has shape {shape}; "
                    f"these data need ({n_features},) (n_features,)."
                )
            coef = check_array(np.reshape(coef_init, (K, n_features)), dtype=dtype,
                               input_name=coef_name)
            params[: K * n_features] = coef.ravel()
        if intercept_init is not None:
            shape = np.shape(intercept_init)
            if shape != (K,) and not (K == 1 and shape == ()):
                raise ValueError(
                    f"Provided {intercept_name} does not match dataset. It has shape "
                    f"{shape}; these data need ({K},)."
                )
            b = check_array(np.reshape(intercept_init, (1, K)), dtype=dtype,
                            input_name=intercept_name)
            params[K * n_features:] = b.ravel()
        return params

    def _state_signature(self):
        """What the optimizer state means: when it changes between partial_fit calls
        (set_params), the state is reset rather than misread (adagrad's sums of squares
        are no adam moments)."""
        return (self.solver, self.momentum != 0, bool(self.nesterovs_momentum),
                float(self.average))

    def _prepare_state(self, reset, X, coef_init, intercept_init):
        """Start from coef_init / intercept_init (fit, first partial_fit) or carry the
        previous call's parameters and optimizer state over (partial_fit)."""
        dtype = X.dtype
        K = self._n_outputs
        P = K * (X.shape[1] + 1)
        fresh = {
            "opt": lambda: np.zeros((2, P), dtype=dtype),  # velocity / adam moments / adagrad sums
            "l1_q": lambda: np.zeros(P, dtype=dtype),  # L1 penalty applied to each coefficient
            "l1_u": lambda: np.zeros(K),  # L1 penalty owed to every coefficient
            "avg": lambda: np.zeros(P),  # averaged parameters, in double (see _optim.pxd)
            "avg_n": lambda: np.zeros(K),  # updates averaged so far, per output
        }
        signature = self._state_signature()
        if reset or not hasattr(self, "_sgd_state"):
            params = self._initial_params(K, X.shape[1], dtype, coef_init, intercept_init)
            self._sgd_state = {"params": params, **{k: f() for k, f in fresh.items()}}
            self.t_ = 1.0
        else:
            state = dict(self._sgd_state)
            coef, intercept = self._published(state, self.t_)
            user_coef = self.coef_.toarray() if sp.issparse(self.coef_) else self.coef_
            if not (np.array_equal(np.reshape(user_coef, coef.shape), coef)
                    and np.array_equal(np.ravel(self.intercept_), intercept)):
                # coef_ / intercept_ were set by hand: continue from them, as
                # scikit-learn's partial_fit does, with fresh optimizer state.
                state = {"params": self._initial_params(K, X.shape[1], dtype, user_coef,
                                                        self.intercept_,
                                                        names=("coef_", "intercept_")),
                         **{k: f() for k, f in fresh.items()}}
            elif signature != getattr(self, "_sgd_signature", signature):
                state.update(opt=fresh["opt"](), avg=fresh["avg"](), avg_n=fresh["avg_n"]())
            # partial_fit with another dtype than before: continue in the new one.
            for k in ("params", "opt", "l1_q"):
                state[k] = state[k].astype(dtype, copy=False)
            self._sgd_state = state
        self._sgd_signature = signature

    def _published(self, state, t, coef_out=None, coef_filled=False):
        """coef_ (K, d) and intercept_ (K,) of a state: the averaged parameters of the
        outputs that have averaged updates once ``average`` is reached, else the last.
        ``coef_out``: a (K, d) array of the parameters' dtype to write coef_ into, which
        already holds the coefficients of the state if ``coef_filled``."""
        params = state["params"]
        K = self._n_outputs
        d = params.shape[0] // K - 1
        if coef_out is None:
            coef = params[: K * d].reshape(K, d).copy()
        else:
            coef = coef_out
            if not coef_filled:
                np.copyto(coef, params[: K * d].reshape(K, d))
        intercept = params[K * d:].copy()
        if self.average and self.average <= t - 1:
            rows = state["avg_n"] > 0
            coef[rows] = state["avg"][: K * d].reshape(K, d)[rows]
            intercept[rows] = state["avg"][K * d:][rows]
        return coef, intercept

    def _warm_start_init(self, coef_init, intercept_init):
        """fit's initial values: explicit ones win, then warm_start's previous fit."""
        if self.warm_start and getattr(self, "coef_", None) is not None:
            coef_init = self.coef_ if coef_init is None else coef_init
            intercept_init = self.intercept_ if intercept_init is None else intercept_init
        return coef_init, intercept_init

    def _run_epochs(self, X, y_kernel, sample_weight, *, target, class_offset, pos_w, neg_w,
                    loss_code, max_iter, n_problems, y_labels, validation_scorer, reset,
                    user_weight=None):
        """Train up to max_iter epochs from ``self._sgd_state``; commit after each.

        ``sample_weight`` is what the kernel applies; ``user_weight`` (default: the
        same) the caller's own weights, which the validation split checks."""
        n_samples, n_features = X.shape
        K = self._n_outputs
        dtype = X.dtype
        n_threads = effective_n_threads(self.n_jobs)
        cfg = self._kernel_config(loss_code, target, class_offset, n_threads)

        if self.early_stopping:
            idx_train, idx_val = validation_split(
                y_labels, self.validation_fraction, self.random_state,
                stratify=target != TARGET_REGRESSION,
                sample_weight=sample_weight if user_weight is None else user_weight)
        else:
            idx_train, idx_val = np.arange(n_samples, dtype=np.intp), None
        n_train = idx_train.shape[0]
        # The curves grow in place across partial_fit calls (copying them each call
        # would make a long stream of calls quadratic); an epoch's entry is appended
        # right before the epoch is committed.
        loss_curve = None if reset else getattr(self, "loss_curve_", None)
        loss_curve = [] if loss_curve is None else loss_curve
        val_scores = None
        if self.early_stopping:
            val_scores = [] if reset else (getattr(self, "validation_scores_", None) or [])
        prev_loss = None if reset else getattr(self, "best_loss_", None)
        prev_score = None if reset else getattr(self, "best_validation_score_", None)
        best_loss = np.inf if prev_loss is None else prev_loss
        best_score = -np.inf if prev_score is None else prev_score

        # Private working copies: the kernel updates them in place, and what the
        # estimator holds changes only when an epoch has completed with finite values.
        # State that this fit's kernel never writes (the optimizer moments of plain SGD,
        # the L1 ledger without L1, the average without averaging) is shared rather than
        # copied: with many features, copies of it would cost more than a sparse epoch.
        # The CSR kernel writes an epoch's parameters (and coef_) into buffers of its
        # own, reading the last epoch's: they need no copy (only what it updates in
        # place does), so with the defaults an epoch's commit copies O(K) values.
        plain = self.solver == "sgd" and self.momentum == 0
        writes_out = sp.issparse(X)
        mutable = {"l1_u", "avg_n"} if writes_out else {"params", "l1_u", "avg_n"}
        if not plain:
            mutable.add("opt")
        if self._penalty_coefficients()[0] != 0:
            mutable.add("l1_q")
        if self.average:
            mutable.add("avg")
        state = {k: v if k not in mutable and v.flags.c_contiguous and (
                    v.flags.writeable or (writes_out and k == "params"))
                 else np.array(v, copy=True, order="C")
                 for k, v in self._sgd_state.items()}
        publisher = _StatePublisher(mutable, K)
        work_obj = np.zeros((_linear.MAX_CHUNKS_, K), dtype=np.float64)
        work_z = np.zeros((_linear.MAX_CHUNKS_, K), dtype=dtype)
        work_k = np.zeros((2, K), dtype=np.float64)
        obj = np.zeros(K, dtype=np.float64)
        # What the stopping rule reads: the objective itself, except for per-sample SGD
        # on sparse X (scikit-learn's sparse objective, see _linear.linear_epoch_csr).
        stop_obj = obj
        if sp.issparse(X):
            cfg["intercept_decay"] = SPARSE_INTERCEPT_DECAY
            X_kernel = csr_arrays(X)
            sparse_work = _csr_work(X_kernel, n_features, idx_train, self.batch_size, plain,
                                    K, dtype)
            stop_obj = np.zeros(K, dtype=np.float64)
            stop_norms = np.full((2, K), np.nan)

            def run_kernel(order, active_k, eta_k, t):
                params_out, coef_out = publisher.out_buffers(state["params"])
                status, t = _linear.linear_epoch_csr(
                    *X_kernel, y_kernel, sample_weight, order, pos_w, neg_w, active_k,
                    eta_k, state["params"], params_out, coef_out.reshape(-1), state["opt"],
                    state["l1_q"], state["l1_u"], state["avg"], state["avg_n"],
                    *sparse_work, work_obj, work_z, work_k, obj, stop_obj, stop_norms, cfg, t)
                if status == 0:
                    state["params"] = params_out
                return status, t
        else:
            X_kernel = X
            work_grad = np.zeros((_linear.grad_rows_needed(self.batch_size, n_train, plain),
                                  state["params"].shape[0]), dtype=dtype)

            def run_kernel(order, active_k, eta_k, t):
                return _linear.linear_epoch(
                    X, y_kernel, sample_weight, order, pos_w, neg_w, active_k, eta_k,
                    state["params"], state["opt"], state["l1_q"], state["l1_u"],
                    state["avg"], state["avg_n"], work_grad, work_obj, work_z, work_k, obj,
                    cfg, t)

        def validate():
            return validation_scorer(X_kernel, idx_val, state["params"], n_threads)

        tracker = ConvergenceTracker(
            n_problems, self.tol, self.n_iter_no_change,
            adaptive=self.learning_rate == "adaptive", eta0=self._schedule()[1])
        seed = _first_seed(self.random_state)
        epochs = _LinearEpochs(
            self, run_kernel, validate, state, publisher, obj=obj, stop_obj=stop_obj,
            n_problems=n_problems, n_samples=n_samples, n_train=n_train,
            coef_filled=writes_out, loss_curve=loss_curve, val_scores=val_scores,
            best_loss=best_loss, best_score=best_score)
        shuffle = _EpochShuffler(seed, n_threads) if self.shuffle else None
        try:
            run_epochs(epochs, tracker, idx_train.copy(), max_iter=max_iter,
                       shuffle=shuffle, early_stopping=self.early_stopping)
        finally:
            if shuffle is not None:
                shuffle.release()

    def _commit(self, state, t, n_epochs, loss_curve, val_scores, best_loss, best_score,
                coef_out=None, coef_filled=False):
        """Publish a completed epoch in one ``__dict__`` update, so that an interrupt
        never leaves the attributes describing different epochs. ``state`` is a snapshot
        the kernel no longer writes."""
        dtype = state["params"].dtype
        coef, intercept = self._published(state, t, coef_out=coef_out,
                                          coef_filled=coef_filled)
        attrs = self._coef_attrs(coef.astype(dtype, copy=False),
                                 intercept.astype(dtype, copy=False))
        attrs.update({
            "_sgd_state": state,
            "t_": float(t),
            "n_iter_": n_epochs,
            "loss_curve_": loss_curve,
            "loss_": loss_curve[-1],
            "best_loss_": None if self.early_stopping else best_loss,
            "validation_scores_": val_scores,
            "best_validation_score_": best_score if self.early_stopping else None,
            "_epochs_committed": self.__dict__.get("_epochs_committed", 0) + 1,
            "_curve_lengths": {"loss_curve_": len(loss_curve),
                               "validation_scores_": len(val_scores or ())},
        })
        self.__dict__.update(attrs)

    def _print_epoch(self, params, d, n_seen, t_start):
        K = self._n_outputs
        w = params[: K * d]
        print(
            f"Norm: {np.linalg.norm(w):.2f}, NNZs: {np.count_nonzero(w)}, "
            f"Bias: {float(np.mean(params[K * d:])):.6f}, T: {n_seen}, "
            f"Avg. loss: {self.loss_curve_[-1]:.6f}"
            + (f", Validation score: {self.validation_scores_[-1]:.6f}"
               if self.early_stopping else "")
        )
        print(f"Total training time: {time.time() - t_start:.2f} seconds.")

    def _validate_X_y(self, X, y, reset):
        if reset and take_plain_arrays(self, X, y, isinstance(self, RegressorMixin),
                                       effective_n_threads(self.n_jobs)):
            return X, y
        # Sparse X as it comes: the CSR kernels read each row's entries in stored order
        # (as scikit-learn's), so unsorted indices need no sorted copy and duplicate
        # entries add up as the separate terms they are (see the Notes).
        return validate_input(self, X, y, canonical=False, dtype=[np.float64, np.float32],
                              order="C",
                              reset=reset, y_numeric=isinstance(self, RegressorMixin))

    def _check_sample_weight(self, sample_weight, X):
        if sample_weight is None:
            # scikit-learn's weights for None, without its checks of them (~0.1 ms cold)
            return np.ones(X.shape[0], dtype=X.dtype)
        sw = check_sample_weight(sample_weight, X, dtype=X.dtype,
                                  allow_all_zero_weights=self.early_stopping)
        return np.ascontiguousarray(sw)

    def _maybe_warn_convergence(self):
        if self.tol is not None and self.n_iter_ == self.max_iter:
            warnings.warn(
                "Maximum number of iteration reached before convergence. Consider "
                "increasing max_iter to improve the fit.",
                ConvergenceWarning,
            )
        if self.power_t < 0:
            warnings.warn(
                "Negative values for `power_t` are deprecated in version 1.8 and will "
                "raise an error in 1.10. Use values in the range [0.0, inf) instead.",
                FutureWarning,
            )

    def densify(self):
        """Convert ``coef_`` back to a dense NumPy array (a no-op unless
        :meth:`sparsify` was called).

        Returns
        -------
        self
        """
        check_is_fitted(self, msg="Estimator, %(name)s, must be fitted before densifying.")
        if sp.issparse(self.coef_):
            self.coef_ = self.coef_.toarray()
        return self

    def sparsify(self):
        """Convert ``coef_`` to a SciPy CSR sparse matrix (or array, as scikit-learn's
        ``sparse_interface`` setting says), which saves memory when most coefficients
        are zero (``penalty='l1'``). ``intercept_`` stays dense. Prediction works on
        the sparse ``coef_``, and so does further training, which publishes a dense
        ``coef_`` again.

        Returns
        -------
        self
        """
        check_is_fitted(self, msg="Estimator, %(name)s, must be fitted before sparsifying.")
        coef = sp.csr_array(self.coef_)
        if get_config().get("sparse_interface", "spmatrix") == "spmatrix":
            coef = sp.csr_matrix(coef)
        self.coef_ = coef
        return self

    def _decision(self, X):
        check_is_fitted(self)
        X = validate_input(self, X, canonical=False, dtype=[np.float64, np.float32],
                           reset=False)
        coef = self.coef_
        if (isinstance(X, np.ndarray) and isinstance(coef, np.ndarray)
                and X.flags.c_contiguous and X.dtype == coef.dtype):
            # Dense X natively, on the fit's threads: a BLAS product would leave
            # OpenBLAS's worker threads spinning for ~0.1 s after it, on the cores the
            # next fit's threads need (predict, score, then fit again: a fit of
            # n_jobs=2 then ran up to 1.5x slower).
            K = 1 if coef.ndim == 1 else coef.shape[0]
            params = np.concatenate([coef.ravel(),
                                     np.ravel(self.intercept_).astype(coef.dtype, copy=False)])
            z = np.empty((X.shape[0], K), dtype=X.dtype)
            n_threads = effective_n_threads(self.n_jobs) if X.size >= 1 << 16 else 1
            _linear.linear_decision(X, np.arange(X.shape[0], dtype=np.intp), params, z,
                                    n_threads)
            return z[:, 0] if coef.ndim == 1 else z
        return safe_sparse_dot(X, self.coef_.T, dense_output=True) + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class SGDRegressor(RegressorMixin, _BaseSGD):
    """Linear model fitted by minimising a regularised empirical loss with SGD.

    A drop-in replacement for :class:`sklearn.linear_model.SGDRegressor` whose epochs
    run in compiled code, with mini-batches, momentum, Adam and Adagrad, and several
    threads per fit whose results do not depend on the thread count.

    Each update on a batch B of m samples is
    ``w <- w - eta_t * ((1/m) sum_{i in B} s_i dl/dz_i x_i + alpha dR(w))``; with
    ``batch_size=1`` and ``solver='sgd'`` this is scikit-learn's per-sample SGD.

    Parameters
    ----------
    loss : {'squared_error', 'huber', 'epsilon_insensitive', \
            'squared_epsilon_insensitive'}, default='squared_error'
        ``squared_error`` is 1/2 (z - y)^2.
    penalty : {'l2', 'l1', 'elasticnet', None}, default='l2'
        L1 is applied by the cumulative-penalty method, which gives exact zeros.
    alpha : float, default=0.0001
        Regularisation strength; also sets the 'optimal' learning rate.
    l1_ratio : float, default=0.15
        Elastic-net mixing (0: L2, 1: L1). Only used with ``penalty='elasticnet'``.
    fit_intercept : bool, default=True
    max_iter : int, default=1000
        Maximum number of epochs of ``fit`` (``partial_fit`` runs one).
    tol : float or None, default=1e-3
        Stop when the epoch's mean objective (or the validation score with
        ``early_stopping``) does not improve by ``tol`` for ``n_iter_no_change`` epochs.
        None runs exactly ``max_iter`` epochs.
    shuffle : bool, default=True
        Visit the samples in a new random order each epoch.
    verbose : int, default=0
    epsilon : float, default=0.1
        Threshold of the huber and epsilon-insensitive losses.
    random_state : int, RandomState instance or None, default=None
        Seeds the visiting order and the early-stopping split.
    learning_rate : {'constant', 'optimal', 'invscaling', 'adaptive'}, default='invscaling'
        Schedule of eta_t with t counted in updates. 'optimal' is scikit-learn's
        ``1 / (alpha (t0 + t))`` for ``solver='sgd'``; for the adaptive solvers, whose
        steps are already normalised by the gradient's scale, it is ``1 / sqrt(t)``
        (adam) and a constant 1 (adagrad, whose own normalisation shrinks the step
        like ``1 / sqrt(t)``): moves of about 1 per coordinate at first, shrinking as
        their convergence analyses assume, which suits standardised data without
        tuning. 'optimal' ignores eta0 and power_t. 'pa1' / 'pa2' are not supported
        yet and raise a ValueError.
    eta0 : float, default=0.01
        Initial learning rate of 'constant', 'invscaling' and 'adaptive' (the step
        size of adam / adagrad under them). Adam and Adagrad take steps in units of
        the weights whatever the gradient's scale: with a target of large magnitude
        (a raw intercept of ~100) standardise it or raise eta0.
    power_t : float, default=0.25
        Exponent of 'invscaling': eta_t = eta0 / t**power_t.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the samples (selected by index, X is not
        copied) and stop when their R^2 stops improving.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=5
    warm_start : bool, default=False
        Start ``fit`` from the previous ``coef_`` / ``intercept_``.
    average : bool or int, default=False
        Averaged SGD: ``coef_`` is the mean of the iterates from update ``average``
        on (True: 1). Counted in updates, which are samples when ``batch_size=1``.
    batch_size : int, default=1
        Samples per update; the last batch of an epoch is averaged over its own size.
        ``n_samples`` or more gives full-batch gradient descent.
    solver : {'sgd', 'adam', 'adagrad'}, default='sgd'
    momentum : float, default=0.0
        Momentum of ``solver='sgd'``; 0 keeps scikit-learn's plain SGD.
    nesterovs_momentum : bool, default=False
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's moment decay rates.
    n_jobs : int or None, default=None
        Threads used inside one fit: None or -1 all usable cores (honouring
        ``OMP_NUM_THREADS`` and threadpoolctl limits), k exactly k.
        The fitted model is bit-for-bit the same for every value.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : ndarray of shape (1,)
    n_iter_ : int
        Epochs run by the last ``fit`` / ``partial_fit`` call.
    t_ : float
        1 + the number of updates since the last ``fit``. With ``early_stopping`` an
        epoch counts as many updates as if it had also stepped over the validation rows
        (scikit-learn's convention: ``1 + n_iter_ * n_samples`` for per-sample SGD),
        although the learning-rate schedule counts the training rows only.
    loss_curve_ : list of float
        Mean training objective of each epoch: loss plus penalty, averaged over the
        training samples without their sample / class weights, which is the quantity
        scikit-learn's ``tol`` criterion compares (the updates are weighted).
    loss_, best_loss_ : float
        Last and smallest entries of ``loss_curve_`` (``best_loss_`` is None with
        early stopping).
    validation_scores_ : list of float or None
        R^2 on the validation split after each epoch (None without early stopping).
    best_validation_score_ : float or None
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
    loss_functions : dict
        Class attribute, as in scikit-learn: loss name -> ``(loss class, *default
        arguments)``; ``cls(*args).py_loss(p, y)`` and ``py_dloss(p, y)`` evaluate
        the per-sample loss and its derivative as cgd's kernels compute them.

    Notes
    -----
    **Sparse X** (any ``scipy.sparse`` matrix or array; CSR is used as it is, other
    formats are converted to CSR once; int32 or int64 indices; float32 or float64
    values, kept) is never densified: an update costs the stored entries of its rows,
    never ``n_features``. Unsorted indices and duplicate entries mean what they mean
    in a sparse product: entries are read in stored order, as scikit-learn reads them,
    without a sorted copy (X itself is never modified).

    - Plain SGD (``solver='sgd'``, no momentum) is exact: the L2 decay of every
      coefficient is kept as one scale factor. With ``fit_intercept=False`` and
      penalty None or 'l2' a fit on sparse X equals the fit on its dense copy (to
      rounding) at any ``batch_size``.
    - As scikit-learn on sparse X, the intercept's step is multiplied by 0.01 (its
      intercept decay: the intercept is updated by every row, each coefficient only
      by the rows that store its feature), for every solver and batch size.
    - With ``batch_size=1`` and ``shuffle=False`` a fit on sparse X equals
      scikit-learn's (same ``coef_``, ``n_iter_`` and ``t_``). For that, the ``tol``
      rule reads scikit-learn's sparse objective, whose penalty term is that of the
      coefficients of the last row that moved the weights; ``loss_curve_`` records
      the true objective.
    - L1 / elastic net is lazy, as in scikit-learn: the cumulative L1 penalty owed to
      a coefficient is applied when a row storing its feature is trained on, so the
      fit differs from the dense one.
    - ``average`` is the mean of the iterates (L1 truncations included), updated at
      the cost of the coefficients an update touches.
    - Momentum, Adam and Adagrad are lazy: a batch updates only the coefficients of
      the columns its rows store (stored zeros included), with their gradient plus
      their L2 term; the others keep their value, velocity and moments (PyTorch's
      ``SparseAdam`` rule; Adam's bias correction counts all updates). A dense step
      would cost ``n_features`` per batch. When every batch stores every column this
      is the dense step.
    - A mini-batch costs its stored entries, and its result does not depend on
      ``n_jobs``: plain SGD without L1 takes the loss derivatives of all its rows at
      the batch's starting weights, then steps row by row; the other rules sum the
      gradient over the columns the batch touches, in fixed row chunks reduced in
      chunk order as for dense X. The work is spread over threads once a batch holds
      enough stored entries (a batch of 256 text rows is done on one thread).
    """

    #: loss name -> (loss class, *default arguments), as scikit-learn's attribute of
    #: the same name; the classes evaluate cgd's per-sample losses.
    loss_functions = REGRESSION_LOSS_FUNCTIONS

    _parameter_constraints: dict = {
        **_BaseSGD._parameter_constraints,
        "loss": [StrOptions(set(REGRESSION_LOSSES))],
    }

    def __init__(
        self,
        loss="squared_error",
        *,
        penalty="l2",
        alpha=0.0001,
        l1_ratio=0.15,
        fit_intercept=True,
        max_iter=1000,
        tol=1e-3,
        shuffle=True,
        verbose=0,
        epsilon=0.1,
        random_state=None,
        learning_rate="invscaling",
        eta0=0.01,
        power_t=0.25,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        warm_start=False,
        average=False,
        batch_size=1,
        solver="sgd",
        momentum=0.0,
        nesterovs_momentum=False,
        beta_1=0.9,
        beta_2=0.999,
        n_jobs=None,
    ):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.average = average
        self.batch_size = batch_size
        self.solver = solver
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.n_jobs = n_jobs

    _n_outputs = 1

    def _coef_attrs(self, coef, intercept):
        return {"coef_": coef.reshape(-1), "intercept_": intercept}

    def _train(self, X, y, sample_weight, max_iter, reset, coef_init=None, intercept_init=None):
        X, y = self._validate_X_y(X, y, reset=reset)
        y = np.ascontiguousarray(y, dtype=X.dtype)
        sample_weight = self._check_sample_weight(sample_weight, X)
        self._prepare_state(reset, X, coef_init, intercept_init)
        ones = np.ones(1, dtype=X.dtype)

        def scorer(X, idx_val, params, n_threads):
            z = _decision_rows(X, idx_val, params, 1, n_threads)
            score = r2_score(y[idx_val], z[:, 0], sample_weight=sample_weight[idx_val])
            return np.array([score]), score

        self._run_epochs(
            X, y, sample_weight, target=TARGET_REGRESSION, class_offset=0, pos_w=ones,
            neg_w=ones, loss_code=LOSS_CODES[self.loss], max_iter=max_iter, n_problems=1,
            y_labels=y, validation_scorer=scorer, reset=reset)
        return self

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None):
        """Fit the model by (mini-batch) stochastic gradient descent.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            float32 data is trained in float32; anything else in float64. Sparse X
            is trained as CSR without densifying it (see Notes).
        y : array-like of shape (n_samples,)
        coef_init : ndarray of shape (n_features,), default=None
        intercept_init : ndarray of shape (1,), default=None
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : SGDRegressor
        """
        self._check_params()
        coef_init, intercept_init = self._warm_start_init(coef_init, intercept_init)
        self._transaction(lambda: self._train(
            X, y, sample_weight, self.max_iter, reset=True,
            coef_init=coef_init, intercept_init=intercept_init))
        self._maybe_warn_convergence()
        return self

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Run one epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : SGDRegressor
        """
        first = not hasattr(self, "_sgd_state")
        self._validate_params_again()
        self._check_params(for_partial_fit=True)
        return self._transaction(lambda: self._train(X, y, sample_weight, 1, reset=first))

    def predict(self, X):
        """Predict targets: ``X @ coef_ + intercept_`` (float32 stays float32).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return np.asarray(self._decision(X)).ravel()


class SGDClassifier(ClassifierMixin, _BaseSGD):
    """Linear classifiers (SVM, logistic regression, ...) trained by SGD in native code.

    A drop-in replacement for :class:`sklearn.linear_model.SGDClassifier` with the
    additions of :class:`SGDRegressor` (``batch_size``, ``solver``, ``momentum``,
    ``nesterovs_momentum``, ``beta_1``, ``beta_2``, threads through ``n_jobs``) and
    ``multiclass``.

    Parameters
    ----------
    loss : {'hinge', 'log_loss', 'modified_huber', 'squared_hinge', 'perceptron', \
            'squared_error', 'huber', 'epsilon_insensitive', \
            'squared_epsilon_insensitive'}, default='hinge'
        Margin losses take targets in {-1, +1}; ``log_loss`` is logistic regression.
    penalty, alpha, l1_ratio, fit_intercept, max_iter, tol, shuffle, verbose, \
epsilon, random_state, eta0, early_stopping, validation_fraction, n_iter_no_change, \
warm_start, average, batch_size, solver, momentum, nesterovs_momentum, beta_1, beta_2
        As :class:`SGDRegressor`. With ``early_stopping`` the validation split is
        stratified and the score is the accuracy.
    n_jobs : int or None, default=None
        Threads inside one fit (scikit-learn uses it for one-vs-rest jobs instead).
        The fitted model is bit-for-bit the same for every value.
    learning_rate : str, default='optimal'
        As :class:`SGDRegressor`: with ``solver='adam'`` or ``'adagrad'`` the default
        'optimal' is the adaptive solvers' step ``1 / sqrt(t)`` described there, so
        ``SGDClassifier(solver='adam')`` needs no other parameter.
    power_t : float, default=0.5
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes; with one-vs-rest the weight of class k applies to
        the positive side of problem k, as in scikit-learn.
    multiclass : {'ovr', 'multinomial'}, default='ovr'
        'ovr': one binary problem per class (scikit-learn's behaviour), all trained in
        one pass over the data, each stopping on its own criterion. 'multinomial':
        softmax cross-entropy over all classes (``loss='log_loss'`` only); with two
        classes it is binary logistic regression.

    Attributes
    ----------
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    n_iter_ : int
        Epochs of the last call (the maximum over one-vs-rest problems).
    t_ : float
    loss_curve_ : list of float
        Mean training objective per epoch (one-vs-rest: averaged over the problems
        trained that epoch).
    loss_, best_loss_, validation_scores_, best_validation_score_
        As :class:`SGDRegressor`; validation scores are accuracies.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
    loss_functions : dict
        Class attribute, as in scikit-learn: loss name -> ``(loss class, *default
        arguments)``; ``cls(*args).py_loss(p, y)`` and ``py_dloss(p, y)`` evaluate
        the per-sample loss and its derivative as cgd's kernels compute them.

    Notes
    -----
    Sparse X is trained without densifying it, as described in :class:`SGDRegressor`
    (exact plain SGD, the intercept step times 0.01, scikit-learn's stopping rule at
    ``batch_size=1``, lazy L1, lazy momentum / Adam / Adagrad). One-vs-rest trains
    every class in the same pass over the rows.
    """

    #: loss name -> (loss class, *default arguments), as scikit-learn's attribute of
    #: the same name; the classes evaluate cgd's per-sample losses.
    loss_functions = CLASSIFICATION_LOSS_FUNCTIONS

    _parameter_constraints: dict = {
        **_BaseSGD._parameter_constraints,
        "loss": [StrOptions(set(LOSS_CODES))],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "multiclass": [StrOptions({"ovr", "multinomial"})],
    }

    def __init__(
        self,
        loss="hinge",
        *,
        penalty="l2",
        alpha=0.0001,
        l1_ratio=0.15,
        fit_intercept=True,
        max_iter=1000,
        tol=1e-3,
        shuffle=True,
        verbose=0,
        epsilon=0.1,
        n_jobs=None,
        random_state=None,
        learning_rate="optimal",
        eta0=0.01,
        power_t=0.5,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        class_weight=None,
        warm_start=False,
        average=False,
        batch_size=1,
        solver="sgd",
        momentum=0.0,
        nesterovs_momentum=False,
        beta_1=0.9,
        beta_2=0.999,
        multiclass="ovr",
    ):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.epsilon = epsilon
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.average = average
        self.batch_size = batch_size
        self.solver = solver
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.multiclass = multiclass

    def _check_params(self, for_partial_fit=False):
        super()._check_params(for_partial_fit)
        if self.multiclass == "multinomial" and self.loss != "log_loss":
            raise ValueError(
                f"multiclass='multinomial' (softmax) needs loss='log_loss', got "
                f"loss={self.loss!r}."
            )

    @property
    def _n_outputs(self):
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    @property
    def _multinomial(self):
        return self.multiclass == "multinomial" and len(self.classes_) > 2

    def _coef_attrs(self, coef, intercept):
        return {"coef_": coef, "intercept_": intercept}

    def _train(self, X, y, sample_weight, max_iter, reset, classes=None,
               coef_init=None, intercept_init=None):
        X, y = self._validate_X_y(X, y, reset=reset)
        if reset:
            check_class_labels(y)
            self.classes_ = np.unique(y) if classes is None else classes
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                "The number of classes has to be greater than one; got %d class" % n_classes
            )
        y_idx = np.searchsorted(self.classes_, y)
        y_idx[y_idx == n_classes] = 0
        unseen = self.classes_[y_idx] != y
        if np.any(unseen):
            raise ValueError(
                f"y contains labels not in classes_={self.classes_!r}: "
                f"{np.unique(np.asarray(y)[unseen])[:10]!r}"
            )
        sample_weight = user_weight = self._check_sample_weight(sample_weight, X)
        cw = class_weights(self.class_weight, self.classes_, y).astype(X.dtype)
        K = self._n_outputs
        if self._multinomial:
            target = TARGET_MULTINOMIAL
            class_offset = 0
            sample_weight = sample_weight * cw[y_idx]  # the kernel's; scores use the user's
            pos_w = neg_w = np.ones(K, dtype=X.dtype)
            n_problems = 1
        elif n_classes == 2:
            target, class_offset, n_problems = TARGET_OVR, 1, 1
            pos_w, neg_w = cw[1:2].copy(), cw[0:1].copy()
        else:
            target, class_offset, n_problems = TARGET_OVR, 0, K
            pos_w, neg_w = cw.copy(), np.ones(K, dtype=X.dtype)
        self._prepare_state(reset, X, coef_init, intercept_init)
        multinomial = self._multinomial

        def scorer(X, idx_val, params, n_threads):
            z = _decision_rows(X, idx_val, params, K, n_threads)
            yv, swv = y_idx[idx_val], user_weight[idx_val]
            if K == 1:
                pred = (z[:, 0] > 0).astype(np.intp)
            else:
                pred = np.argmax(z, axis=1)
            overall = np.average(pred == yv, weights=swv)
            if multinomial or K == 1:
                return np.array([overall]), overall
            # Each one-vs-rest problem stops on its own binary accuracy (as scikit-learn).
            per = np.array([np.average((z[:, k] > 0) == (yv == k), weights=swv)
                            for k in range(K)])
            return per, overall

        self._run_epochs(
            X, np.ascontiguousarray(y_idx, dtype=X.dtype), sample_weight, target=target,
            class_offset=class_offset, pos_w=pos_w, neg_w=neg_w,
            loss_code=LOSS_CODES[self.loss], max_iter=max_iter, n_problems=n_problems,
            y_labels=y, validation_scorer=scorer, reset=reset, user_weight=user_weight)
        return self

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None):
        """Fit the linear classifier by (mini-batch) stochastic gradient descent.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            float32 data is trained in float32; anything else in float64. Sparse X
            is trained as CSR without densifying it (see Notes).
        y : array-like of shape (n_samples,)
        coef_init : ndarray of shape (n_classes, n_features), default=None
            ``(n_features,)`` or ``(1, n_features)`` for two classes.
        intercept_init : ndarray of shape (n_classes,), default=None
        sample_weight : array-like of shape (n_samples,), default=None
            Multiplied with ``class_weight``.

        Returns
        -------
        self : SGDClassifier
        """
        self._check_params()
        coef_init, intercept_init = self._warm_start_init(coef_init, intercept_init)
        def train():
            self.__dict__.pop("classes_", None)
            self._train(X, y, sample_weight, self.max_iter, reset=True,
                        coef_init=coef_init, intercept_init=intercept_init)

        self._transaction(train)
        self._maybe_warn_convergence()
        return self

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Run one epoch over (X, y), continuing from the current state.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            All classes, required on the first call.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : SGDClassifier
        """
        first = not hasattr(self, "classes_")
        self._validate_params_again()
        self._check_params(for_partial_fit=True)
        if self.class_weight == "balanced":
            raise balanced_partial_fit_error()

        def train():
            first_partial_fit_call(self, classes)
            return self._train(X, y, sample_weight, 1, reset=first, classes=self.classes_)

        return self._transaction(train)

    def decision_function(self, X):
        """Signed distances to the hyperplanes, ``X @ coef_.T + intercept_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,) for two classes, else (n_samples, n_classes)
        """
        scores = self._decision(X)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            idx = (scores > 0).astype(np.intp)
        else:
            idx = scores.argmax(axis=1)
        return self.classes_.take(idx, axis=0)

    def _check_proba(self):
        if self.loss not in ("log_loss", "modified_huber"):
            raise AttributeError(
                "probability estimates are not available for loss=%r" % self.loss
            )
        return True

    @available_if(_check_proba)
    def predict_proba(self, X):
        """Class probabilities (``loss='log_loss'`` or ``'modified_huber'``).

        log_loss: the sigmoid of the decision value for two classes; softmax for
        ``multiclass='multinomial'``; one-vs-rest sigmoids normalised to sum to one
        otherwise. modified_huber: ``(clip(decision, -1, 1) + 1) / 2``, normalised
        likewise.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        scores = self.decision_function(X)
        dtype = scores.dtype
        if self.loss == "log_loss":
            if scores.ndim == 1:
                p = _expit(scores)
                return np.column_stack([1 - p, p]).astype(dtype, copy=False)
            if self._multinomial:
                return softmax(np.array(scores, copy=True)).astype(dtype, copy=False)
            prob = _expit(scores)
            prob /= prob.sum(axis=1, keepdims=True)
            return prob
        # modified_huber
        if scores.ndim == 1:
            p = (np.clip(scores, -1, 1) + 1) / 2
            return np.column_stack([1 - p, p]).astype(dtype, copy=False)
        prob = (np.clip(scores, -1, 1) + 1) / 2
        norm = prob.sum(axis=1, keepdims=True)
        zero = norm[:, 0] == 0
        # Rows where every class scores <= -1: no information, so uniform.
        prob[zero] = 1.0
        norm[zero] = prob.shape[1]
        prob /= norm
        return prob

    @available_if(_check_proba)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return np.log(self.predict_proba(X))


class _LinearEpochs:
    """A linear fit's part of the shared epoch loop (``_fit_loop.run_epochs``): the
    kernel call with the per-output learning rates and active flags, the epoch's loss,
    validation, and the commit of each epoch to the estimator."""

    def __init__(self, est, run_kernel, validate, state, publisher, *, obj, stop_obj,
                 n_problems, n_samples, n_train, coef_filled, loss_curve, val_scores,
                 best_loss, best_score):
        self.est, self.run_kernel, self._validate = est, run_kernel, validate
        self.state, self.publisher = state, publisher
        self.obj, self.stop_obj = obj, stop_obj
        self.n_problems, self.n_train = n_problems, n_train
        self.coef_filled = coef_filled
        self.loss_curve, self.val_scores = loss_curve, val_scores
        self.best_loss, self.best_score = best_loss, best_score
        self.K = est._n_outputs
        self.t = self.t_first = float(est.t_)
        # scikit-learn publishes t_ as if every epoch had also stepped over the
        # validation rows (t_ = 1 + n_iter_ * n_samples after fit), while its learning
        # rate counts the training rows only: the kernel's t stays internal, and the
        # published t_ (which also decides when averaged weights are published, and
        # where a later partial_fit continues) counts n_samples rows per epoch.
        self.published_steps = -(-n_samples // max(1, min(est.batch_size, n_samples)))
        self.t_start = time.time()
        # Per-output views of the tracker's per-problem state, rebuilt only when it
        # changes (small NumPy calls each epoch add up on small data sets).
        self.views = None

    def start(self, epoch):
        if self.est.verbose > 0:
            print(f"-- Epoch {epoch}")

    def run(self, order, tracker):
        key = (tracker.active.tobytes(), tracker.eta.tobytes())
        if self.views is None or self.views[0] != key:
            # One problem over all outputs (regression, binary, multinomial) or one
            # per output (one-vs-rest).
            reps = 1 if self.n_problems == self.K else self.K
            self.views = (key, np.repeat(tracker.active, reps),
                          np.repeat(tracker.eta, reps).astype(np.float64))
        status, self.t = self.run_kernel(order, self.views[1], self.views[2], self.t)
        return status == 0

    def diverged(self, tracker):
        raise linear_divergence_error(len(self.loss_curve) + 1)

    def loss(self, n_epochs, tracker):
        trained = [k for k in range(self.n_problems) if tracker.active[k]]
        loss = float(sum(self.obj[k] / self.n_train for k in trained) / len(trained))
        # What the stopping rule reads: the objective itself, except for per-sample
        # SGD on sparse X (scikit-learn's sparse objective, see linear_epoch_csr).
        return loss, [self.stop_obj[k] / self.n_train for k in range(self.n_problems)]

    def validate(self, tracker):
        per_problem, overall = self._validate()
        self.best_score = max(self.best_score, float(overall))
        self.val_scores.append(float(overall))
        return per_problem, overall

    def finish(self, n_epochs, loss, score, tracker):
        est = self.est
        if not est.early_stopping:
            self.best_loss = min(self.best_loss, loss)
        self.loss_curve.append(loss)
        snapshot, coef_out = self.publisher.snapshot(self.state)
        t_published = (self.t_first + n_epochs * self.published_steps
                       if est.early_stopping else self.t)
        est._commit(snapshot, t_published, n_epochs, self.loss_curve, self.val_scores,
                    self.best_loss, self.best_score, coef_out=coef_out,
                    coef_filled=self.coef_filled)
        if est.verbose > 0:
            est._print_epoch(self.state["params"], est.n_features_in_,
                             self.n_train * n_epochs, self.t_start)
            if tracker.done:
                print(f"Convergence after {n_epochs} epochs took "
                      f"{time.time() - self.t_start:.2f} seconds")


class _StatePublisher:
    """Snapshots of the working state for the estimator to hold after each epoch,
    with a buffer for its coef_.

    Each epoch's results go into one of two sets of buffers allocated by this call,
    alternately, never into the set the estimator holds (nor into anything a previous
    call published): after the first two epochs a commit allocates nothing (fresh
    arrays of many features each epoch would cost page faults comparable to a sparse
    epoch). A set holds a copy of each array the kernel updates in place
    (``mutable``), a parameter buffer and a coef_ buffer; the arrays the kernel does not
    write are shared. A kernel that writes its parameters and coef_ into given buffers
    (the CSR one: see :meth:`out_buffers`) leaves only ``mutable`` to copy."""

    def __init__(self, mutable, K):
        self.mutable = mutable
        self.K = K
        self.current = None  # the set the estimator holds
        self.spare = None    # the set before it, free to overwrite

    def _target(self, params):
        if self.spare is None:
            d = params.shape[0] // self.K - 1
            self.spare = ({}, np.empty_like(params),
                          np.empty((self.K, d), dtype=params.dtype))
        return self.spare

    def out_buffers(self, params):
        """``(params_out, coef_out)`` for the coming epoch's kernel to write."""
        _, params_out, coef = self._target(params)
        return params_out, coef

    def snapshot(self, state):
        """``(snapshot of state, (K, d) buffer for coef_)``. ``state["params"]`` is
        copied unless it is already this set's parameter buffer."""
        copies, params_buf, coef = self._target(state["params"])
        out = {}
        for k, v in state.items():
            if k == "params" and v is params_buf:
                out[k] = v
            elif k in self.mutable or k == "params":
                if k == "params":
                    np.copyto(params_buf, v)
                    out[k] = params_buf
                elif k in copies:
                    np.copyto(copies[k], v)
                    out[k] = copies[k]
                else:
                    out[k] = copies[k] = v.copy()
            else:
                out[k] = v
        self.spare, self.current = self.current, (copies, params_buf, coef)
        return out, coef


class _RandomStates(threading.local):
    """This thread's spare ``np.random.RandomState`` objects. Reseeding one with an int
    (``seed``: the legacy MT19937 seeding) puts it in exactly the state of a new
    ``RandomState(seed)``, and costs ~1.5 us where a new one costs ~70 (its bit generator
    first seeds itself from OS entropy): a small fit makes two."""

    def __init__(self):
        self.spare = []

    def take(self, seed):
        rs = self.spare.pop() if self.spare else np.random.RandomState()
        rs.seed(seed)
        return rs

    def give_back(self, rs):
        if len(self.spare) < 4:
            self.spare.append(rs)


_RANDOM_STATES = _RandomStates()


def _first_seed(random_state):
    """``check_random_state(random_state).randint(MAX_INT)``: the seed of a fit's epoch
    shuffles (the same number, a reseeded RandomState standing in for a new one)."""
    if isinstance(random_state, Integral):
        rs = _RANDOM_STATES.take(random_state)
        try:
            return rs.randint(MAX_INT)
        finally:
            _RANDOM_STATES.give_back(rs)
    return check_random_state(random_state).randint(MAX_INT)


class _EpochShuffler:
    """Each epoch's shuffle of the training rows: native (cgd._shuffle; several times
    NumPy's speed once the rows' indices outgrow the cache), on the fit's ``n_threads``
    threads, seeded per epoch from one NumPy stream (``RandomState(seed)``), so that a
    fit is a function of ``random_state`` alone (the shuffle's outcome does not depend
    on the thread count). The scratch array of the shuffle is kept from one epoch to
    the next. ``release()`` when the fit is done: the stream's RandomState is reused."""

    def __init__(self, seed, n_threads=1):
        self.seeds = _RANDOM_STATES.take(seed)
        self.n_threads = n_threads
        self.scratch = None

    def __call__(self, order):
        if self.scratch is None or self.scratch.shape[0] < order.shape[0]:
            self.scratch = np.empty(order.shape[0], dtype=np.intp)
        _shuffle.shuffle_order(order, int(self.seeds.randint(0, 2**63 - 1, dtype=np.int64)),
                               self.n_threads, self.scratch)

    def release(self):
        self.scratch = None
        if self.seeds is not None:
            _RANDOM_STATES.give_back(self.seeds)
            self.seeds = None


def _decision_rows(X, rows, params, K, n_threads):
    """Decision values (len(rows), K) of the rows of X (an array, or the CSR arrays
    ``(data, indices, indptr)``), read in place: early stopping's validation rows."""
    z = np.empty((rows.shape[0], K), dtype=params.dtype)
    if isinstance(X, tuple):
        _linear.linear_decision_csr(*X, rows, params, z, n_threads)
    else:
        _linear.linear_decision(X, rows, params, z, n_threads)
    return z


def _csr_work(csr, n_features, idx_train, batch_size, plain, K, dtype):
    """Scratch buffers of the CSR epoch kernel: ``(work_grad, work_touched, work_pos,
    work_cols, work_loc, work_coef)``. A batch holds at most E_max stored entries (those
    of the batch_size fullest training rows) and touches at most T_max = min(n_features,
    E_max) columns. The gradient sums need K slots per entry of a chunk's own columns
    (at most E_max over all chunks), K per column of the batch, and K intercept sums per
    chunk and for the batch; ``work_loc`` holds each entry's slot in its chunk and each
    chunk's columns. The marker array (one entry per column, -1 where unset) is what
    lets a batch find its columns without a pass over all of them. Plain per-sample SGD
    needs none of these."""
    data, indices, indptr = csr
    n_train = idx_train.shape[0]
    n_chunks = _linear.grad_rows_needed(batch_size, n_train, plain)
    if n_chunks == 0:
        e_max, t_max, n_pos, n_grad = 0, 0, 0, 0
    else:
        m = min(batch_size, n_train)
        row_nnz = (indptr[1:] - indptr[:-1])[idx_train]
        if m < n_train:
            row_nnz = np.partition(row_nnz, n_train - m)[n_train - m:]
        e_max = int(row_nnz.sum())
        t_max, n_pos = min(n_features, e_max), n_features
        n_grad = K * (e_max + t_max + n_chunks + 1)
    return (np.zeros(n_grad, dtype=dtype),
            np.zeros((3, t_max), dtype=dtype),
            np.full(n_pos, -1, dtype=indices.dtype),
            np.zeros(t_max, dtype=indices.dtype),
            np.zeros((2, e_max), dtype=indices.dtype),
            # the column-major copy of the coefficients an epoch with K > 1 works on
            np.empty(K * n_features if K > 1 else 0, dtype=dtype))


def _expit(z):
    """Stable logistic sigmoid in z's dtype."""
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out
