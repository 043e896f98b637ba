"""MLPRegressor and MLPClassifier: scikit-learn's estimators, trained by native epochs.

Every scikit-learn 1.9 parameter keeps its name, default and meaning, and the training
follows scikit-learn's step for step: Glorot-uniform initialisation drawn from the same
random stream, the same shuffles and early-stopping split, batch gradients scaled by
the batch's sample-weight sum, L2 on the weights only, the same schedules, stopping
rule, attributes and messages. Added: ``n_jobs`` (threads inside one fit, with results
that do not depend on it), ``solver='adagrad'`` and, for the classifier,
``class_weight``.

Sparse X is converted once to canonical CSR and never densified: the kernels take
the first layer's products over its non-zeros (``_mlp.pyx``, "CSR rows").

The parameters of a network live in one flat buffer, layer after layer: the weights
``coefs_[l]`` (row-major) then the biases ``intercepts_[l]``. The epoch kernel of
``_mlp.pyx`` updates it in place; ``coefs_`` / ``intercepts_`` are copies made after
every completed epoch, so an interrupted or diverging fit keeps the last finite one.
"""

import time
import warnings
from numbers import Integral, Real

import numpy as np
import scipy
import scipy.optimize
from numpy.lib import NumpyVersion
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, column_or_1d, compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted

from . import _mlp
from ._codes import HIDDEN_ACTIVATION_CODES, OUT_ACTIVATION_CODES, SOLVER_CODES
from ._compat import Interval, Options, StrOptions, check_sample_weight, fit_context
from ._fit_loop import (
    ConvergenceTracker,
    TransactionMixin,
    run_epochs,
    balanced_partial_fit_error,
    check_class_labels,
    first_partial_fit_call,
    mlp_divergence_error,
)
from ._sparse import csr_arrays, is_sparse, take_plain_arrays, validate_input
from ._threads import blas_limited, effective_n_threads

__all__ = ["MLPClassifier", "MLPRegressor"]

# Codes shared with src/_mlp.pyx and src/_optim.pxd.
STOCHASTIC_SOLVERS = ("sgd", "adam", "adagrad")


def _lbfgs_print_options(verbose):
    """L-BFGS-B's printing option, as scikit-learn sets it: ``iprint`` (1 when verbose,
    else -1) before SciPy 1.15, which deprecates it and prints nothing by default."""
    if NumpyVersion(scipy.__version__) >= "1.15.0":
        return {}
    return {"iprint": 1 if verbose is True or verbose >= 1 else -1}


def _lbfgs_iterations(result, max_iter):
    """Iterations L-BFGS ran (SciPy can report one more than maxiter). When it stopped
    without converging, warns in scikit-learn's words."""
    n_iter = min(result.nit, max_iter)
    if result.status != 0:
        message = (f"lbfgs failed to converge after {n_iter} iteration(s) "
                   f"(status={result.status}):\n{result.message}\n")
        if n_iter == max_iter:
            message += ("\nIncrease the number of iterations to improve the convergence "
                        f"(max_iter={max_iter}).")
        message += ("\nYou might also want to scale the data as shown in:\n"
                    "    https://scikit-learn.org/stable/modules/preprocessing.html")
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return n_iter


def _layer_slices(layer_units):
    """(weights slice, shape, bias slice) of each layer in the flat buffer."""
    out, o = [], 0
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
        w = slice(o, o + fan_in * fan_out)
        o += fan_in * fan_out
        out.append((w, (fan_in, fan_out), slice(o, o + fan_out)))
        o += fan_out
    return out


class _MLPEpochs:
    """A stochastic MLP fit's part of the shared epoch loop (``_fit_loop.run_epochs``):
    the kernel call at the current learning rate, the epoch's loss, validation (keeping
    the best validated weights), the learning-rate schedule and the commit."""

    def __init__(self, est, run_epoch, cfg, params, opt, t_update, lr, n_train,
                 best_params, layer_units, validation_data):
        self.est, self.run_epoch, self.cfg = est, run_epoch, cfg
        self.params, self.opt = params, opt
        self.t_update, self.lr = t_update, lr
        self.n_train, self.layer_units = n_train, layer_units
        self.best_params = best_params
        self.validation_data = validation_data
        self.loss_sum = None

    def start(self, epoch):
        pass

    def run(self, order, tracker):
        self.cfg["learning_rate"] = self.lr
        status, t_next, loss_sum = self.run_epoch(order, self.cfg, self.t_update)
        if status != 0:
            return False
        self.t_update, self.loss_sum = t_next, loss_sum
        return True

    def diverged(self, tracker):
        est = self.est
        epoch = len(est.loss_curve_) + 1
        if not est.early_stopping:
            raise mlp_divergence_error(epoch)
        # scikit-learn's MLP does not raise here: with early stopping it ends the fit on
        # the best validated weights, which are finite. It gets there by running its
        # remaining epochs on NaN; cgd stops now.
        warnings.warn(est._diverged_message(epoch, tracker.best_score[0]),
                      ConvergenceWarning)

    def loss(self, n_epochs, tracker):
        loss = float(self.loss_sum / self.n_train)
        if self.est.verbose:
            print("Iteration %d, loss = %.8f" % (n_epochs, loss))
        return loss, [loss]

    def validate(self, tracker):
        X, y_labels, sample_weight, idx_val = self.validation_data
        score = self.est._validation_score(X, y_labels, sample_weight, idx_val,
                                           self.params, self.layer_units)
        if self.est.verbose:
            print("Validation score: %f" % score)
        if score > tracker.best_score[0]:
            self.best_params = self.params.copy()
        return [score], score

    def finish(self, n_epochs, loss, score, tracker):
        est = self.est
        t_samples = est.t_ + self.n_train
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            self.lr = float(est.learning_rate_init) / (t_samples + 1) ** est.power_t
        if tracker.eta[0] != self.lr and est.learning_rate == "adaptive":
            self.lr = float(tracker.eta[0])  # divided by 5 after a plateau
            if est.verbose:
                print(est._plateau_message() + " Setting learning rate to %f" % self.lr)
        elif tracker.done and est.verbose:
            too_small = est.solver == "sgd" and est.learning_rate == "adaptive"
            print(est._plateau_message()
                  + (" Learning rate too small. Stopping." if too_small else " Stopping."))
        est._commit_epoch(
            self.params, self.layer_units, n_epochs, t_samples, loss, score,
            self.best_params, tracker,
            {"opt": self.opt.copy(), "t": self.t_update, "lr": self.lr,
             "signature": est._optimizer_signature()})


class _BaseMLP(TransactionMixin, BaseEstimator):
    """Parameters, validation and the training loops shared by both estimators."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(HIDDEN_ACTIVATION_CODES))],
        "solver": [StrOptions({"lbfgs", *STOCHASTIC_SOLVERS})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [
            Interval(Integral, 1, None, closed="left"),
            Options(Real, {np.inf}),
        ],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral, None],
    }

    # ------------------------------------------------------------------ public API
    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classification) or real numbers (regression).
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : object
            The trained model.
        """
        self._transaction(lambda: self._fit(X, y, sample_weight, incremental=False))
        return self

    def _check_solver(self):
        if self.solver not in STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. %s is not "
                "stochastic." % self.solver
            )
        return True

    # ------------------------------------------------------------------ network layout
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, (bool, np.bool_))
               or (not isinstance(s, (Integral, np.integer)) and not float(s).is_integer())
               for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be integers, got {sizes}.")
        if np.any(np.array(sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % sizes)
        return [int(s) for s in sizes]

    def _layer_units(self):
        return [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]

    def _pack(self, dtype):
        """The flat parameter buffer of coefs_ / intercepts_ (a new array)."""
        return np.concatenate(
            [np.concatenate([np.ravel(c), np.ravel(b)])
             for c, b in zip(self.coefs_, self.intercepts_)]).astype(dtype, copy=False)

    @staticmethod
    def _unpack(params, layer_units):
        coefs, intercepts = [], []
        for w, shape, b in _layer_slices(layer_units):
            coefs.append(params[w].reshape(shape).copy())
            intercepts.append(params[b].copy())
        return coefs, intercepts

    def _init_params(self, rng, layer_units, dtype):
        """Glorot-uniform weights and biases, drawn as scikit-learn draws them."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        parts = []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            parts.append(rng.uniform(-bound, bound, (fan_in, fan_out)).ravel())
            parts.append(rng.uniform(-bound, bound, fan_out))
        return np.concatenate(parts).astype(dtype)

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, sample_weight, incremental):
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y, y_labels = self._validate_input(X, y, incremental, reset=first_pass)
        sample_weight = self._sample_weight(sample_weight, X, y_labels)
        n_features = X.shape[1]
        layer_units = [n_features, *hidden, Y.shape[1]]
        # A fresh stream each call, as scikit-learn: initial weights, then the
        # early-stopping split, then the shuffles.
        rng = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, layer_units, X.dtype, rng)
        elif self._layer_units() != layer_units:
            raise ValueError(
                f"The fitted network has layer sizes {self._layer_units()} but these "
                f"data and hidden_layer_sizes={self.hidden_layer_sizes!r} need "
                f"{layer_units}; fit a new model (warm_start=False) to change them."
            )
        params = self._pack(X.dtype)
        with blas_limited(1):  # every GEMM single-threaded: see src/_mlp.pyx
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, Y, sample_weight, params, layer_units)
            else:
                self._fit_stochastic(X, Y, y_labels, sample_weight, params, layer_units,
                                     incremental, rng)

    def _initialize(self, Y, layer_units, dtype, rng):
        """State of a fresh network (scikit-learn's ``_initialize``)."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        self.coefs_, self.intercepts_ = self._unpack(
            self._init_params(rng, layer_units, dtype), layer_units)
        for name in ("_optimizer_state", "_best_params", "loss_curve_", "best_loss_",
                     "validation_scores_", "best_validation_score_", "loss_"):
            self.__dict__.pop(name, None)
        if self.solver in STOCHASTIC_SOLVERS:
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _kernel_config(self, n_threads, batch_size):
        return {
            "batch_size": int(batch_size),
            "hidden_activation": HIDDEN_ACTIVATION_CODES[self.activation],
            "out_activation": OUT_ACTIVATION_CODES[self.out_activation_],
            "n_threads": int(n_threads),
            "alpha": float(self.alpha),
            "learning_rate": float(self.learning_rate_init),
            "solver": SOLVER_CODES.get(self.solver, 0),
            "momentum": float(self.momentum) if self.solver == "sgd" else 0.0,
            "nesterov": bool(self.nesterovs_momentum) and self.solver == "sgd",
            "beta_1": float(self.beta_1),
            "beta_2": float(self.beta_2),
            "adam_epsilon": float(self.epsilon),
            "clamp_decay": False,  # scikit-learn's MLP lets 1 - lr*alpha/S go negative
        }

    def _optimizer_signature(self):
        """What the optimizer state means; a partial_fit after set_params changed it
        starts a fresh state rather than misreading the old one."""
        return (self.solver, self.solver == "sgd" and self.momentum != 0,
                bool(self.nesterovs_momentum))

    def _fresh_optimizer(self, P, dtype):
        return {"opt": np.zeros((2, P), dtype=dtype),  # velocity / adam moments / adagrad sums
                "t": 1.0,  # number of the next update (adam's bias correction)
                "lr": float(self.learning_rate_init),
                "signature": self._optimizer_signature()}

    def _fit_stochastic(self, X, Y, y_labels, sample_weight, params, layer_units,
                        incremental, rng):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        n_samples = X.shape[0]
        P = params.shape[0]
        state = getattr(self, "_optimizer_state", None)
        if (not incremental or state is None
                or state["signature"] != self._optimizer_signature()):
            state = self._fresh_optimizer(P, X.dtype)
        opt = np.array(state["opt"], dtype=X.dtype, order="C")  # private working copy
        t_update, lr = state["t"], state["lr"]

        if self.early_stopping:
            # Only the binary classifier is stratified, as scikit-learn's.
            stratify = y_labels if is_classifier(self) and self.n_outputs_ == 1 else None
            idx_train, idx_val = train_test_split(
                np.arange(n_samples, dtype=np.intp), random_state=rng,
                test_size=self.validation_fraction, stratify=stratify)
            if idx_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or "
                    "the size of your dataset."
                )
            idx_train = np.ascontiguousarray(idx_train, dtype=np.intp)
            idx_val = np.ascontiguousarray(idx_val, dtype=np.intp)
        else:
            idx_train, idx_val = np.arange(n_samples, dtype=np.intp), None
        n_train = idx_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going "
                    "to be clipped"
                )
            batch_size = int(np.clip(self.batch_size, 1, n_train))

        n_threads = effective_n_threads(self.n_jobs)
        cfg = self._kernel_config(n_threads, batch_size)
        sizes = np.array(layer_units, dtype=np.intp)
        x_parts = self._kernel_input(X)

        def run_epoch(order, cfg, t):
            return _mlp.mlp_epoch(*x_parts, Y, sample_weight, order, sizes, params, opt, cfg, t)
        best_params = getattr(self, "_best_params", None)
        best_params = params.copy() if best_params is None else best_params
        tracker = ConvergenceTracker(
            1, self.tol, self.n_iter_no_change,
            adaptive=self.solver == "sgd" and self.learning_rate == "adaptive", eta0=lr,
            strict=True)
        # Carried over from earlier calls (warm_start, partial_fit), as scikit-learn;
        # made consistent if set_params switched solver or early_stopping since.
        if getattr(self, "loss_curve_", None) is None:
            self.loss_curve_ = []
        if self.early_stopping:
            if getattr(self, "validation_scores_", None) is None:
                self.validation_scores_ = []
            if getattr(self, "best_validation_score_", None) is None:
                self.best_validation_score_ = -np.inf
            tracker.best_score[0] = self.best_validation_score_
        else:
            if getattr(self, "best_loss_", None) is None:
                self.best_loss_ = np.inf
            tracker.best_loss[0] = self.best_loss_
        tracker.no_improvement[0] = getattr(self, "_no_improvement_count", 0)
        epochs = _MLPEpochs(self, run_epoch, cfg, params, opt, t_update, lr, n_train,
                            best_params, layer_units, (X, y_labels, sample_weight, idx_val))
        t_start = time.time()
        try:
            n_iter = run_epochs(epochs, tracker, idx_train.copy(), max_iter=self.max_iter,
                                shuffle=rng.shuffle if self.shuffle else None,
                                early_stopping=self.early_stopping, incremental=incremental)
            if n_iter == self.max_iter and not tracker.done and not incremental:
                warnings.warn(
                    "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                    "optimization hasn't converged yet." % self.max_iter,
                    ConvergenceWarning,
                )
        except BaseException:
            if self.early_stopping and self.__dict__.get("_epochs_committed", 0):
                # keep what early stopping promises: the best validated weights so far
                self.coefs_, self.intercepts_ = self._unpack(self._best_params, layer_units)
            raise
        best_params = epochs.best_params
        if self.verbose and not incremental:
            print(f"Training took {time.time() - t_start:.2f} seconds.")
        if self.early_stopping:
            # restore the weights of the best validation score (the ones this call
            # started from when no epoch was validated before training diverged)
            self._best_params = best_params
            self.coefs_, self.intercepts_ = self._unpack(best_params, layer_units)

    def _diverged_message(self, epoch, best_score):
        kept = ("the weights it started from: no epoch was validated"
                if best_score == -np.inf else
                f"its best validated weights (validation score {best_score:.6g})")
        return (
            f"Training diverged at epoch {epoch}: the loss or the weights became "
            "non-finite. Early stopping ends the fit there and the estimator keeps "
            f"{kept}. A smaller learning_rate_init or scaled input data may help."
        )

    def _plateau_message(self):
        if self.early_stopping:
            return ("Validation score did not improve more than tol=%f for %d consecutive "
                    "epochs." % (self.tol, self.n_iter_no_change))
        return ("Training loss did not improve more than tol=%f for %d consecutive epochs."
                % (self.tol, self.n_iter_no_change))

    def _commit_epoch(self, params, layer_units, n_iter, t_samples, loss, score, best_params,
                      tracker, optimizer_state):
        """Publish a completed epoch in one ``__dict__`` update, so that an interrupt
        never leaves the attributes describing different epochs."""
        coefs, intercepts = self._unpack(params, layer_units)
        # The curves grow in place (copying them at every partial_fit call would make
        # a long stream of calls quadratic); an entry is appended just before its commit.
        self.loss_curve_.append(loss)
        attrs = {
            "coefs_": coefs,
            "intercepts_": intercepts,
            "n_iter_": n_iter,
            "t_": t_samples,
            "loss_": loss,
            "_optimizer_state": optimizer_state,
            "_no_improvement_count": int(tracker.no_improvement[0]),
            "_best_params": best_params,
            "_epochs_committed": self.__dict__.get("_epochs_committed", 0) + 1,
            "_curve_lengths": {"loss_curve_": len(self.loss_curve_)},
        }
        if self.early_stopping:
            self.validation_scores_.append(score)
            attrs["_curve_lengths"]["validation_scores_"] = len(self.validation_scores_)
            attrs["best_validation_score_"] = float(tracker.best_score[0])
        else:
            attrs["best_loss_"] = float(tracker.best_loss[0])
        self.__dict__.update(attrs)

    def _fit_lbfgs(self, X, Y, sample_weight, params, layer_units):
        n_threads = effective_n_threads(self.n_jobs)
        rows = np.arange(X.shape[0], dtype=np.intp)
        sizes = np.array(layer_units, dtype=np.intp)
        cfg = self._kernel_config(n_threads, X.shape[0])
        grad = np.empty(params.shape[0])
        x_parts = self._kernel_input(X)

        def kernel_objective(p):
            return _mlp.mlp_objective(*x_parts, Y, sample_weight, rows, sizes, p, grad, cfg)
        x_dtype = np.empty_like(params)
        last_penalty = [0.0]

        def reported(loss, penalty):
            if self.out_activation_ == "identity":
                # scikit-learn reports the squared error averaged over the outputs
                return float((loss - penalty) / Y.shape[1] + penalty)
            return float(loss)

        def objective(x):
            x_dtype[:] = x
            _, loss, last_penalty[0] = kernel_objective(x_dtype)
            return loss, grad.copy()

        def commit(intermediate_result):
            # Each iteration is an 'epoch' whose weights (and loss) survive an interrupt.
            x = intermediate_result.x
            if np.all(np.isfinite(x)) and np.isfinite(intermediate_result.fun):
                coefs, intercepts = self._unpack(x.astype(X.dtype), layer_units)
                n = self.__dict__.get("_epochs_committed", 0) + 1
                self.__dict__.update({
                    "coefs_": coefs, "intercepts_": intercepts, "n_iter_": n,
                    "loss_": reported(intermediate_result.fun, last_penalty[0]),
                    "_epochs_committed": n,
                })

        with warnings.catch_warnings():
            # a non-finite trial point is reported below as a divergence
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            res = scipy.optimize.minimize(
                objective, params.astype(np.float64), method="L-BFGS-B", jac=True,
                callback=commit,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol,
                         **_lbfgs_print_options(self.verbose)})
        if not (np.isfinite(res.fun) and np.all(np.isfinite(res.x))):
            raise mlp_divergence_error(self.__dict__.get("_epochs_committed", 0) + 1,
                                       hint="a larger alpha", unit="L-BFGS iteration")
        n_iter = _lbfgs_iterations(res, self.max_iter)
        final = res.x.astype(X.dtype)
        _, loss, penalty = kernel_objective(final)
        coefs, intercepts = self._unpack(final, layer_units)
        self.__dict__.update({"coefs_": coefs, "intercepts_": intercepts, "n_iter_": n_iter,
                              "loss_": reported(loss, penalty),
                              "_epochs_committed": self.__dict__.get("_epochs_committed", 0) + 1})

    # ------------------------------------------------------------------ prediction
    def _forward(self, X, check_input=True, rows=None, params=None, layer_units=None):
        """Output activations of X (or of its ``rows``), computed natively."""
        if check_input:
            check_is_fitted(self)
            X = validate_input(self, X, dtype=[np.float64, np.float32], order="C",
                               reset=False)
        if params is None:
            layer_units = self._layer_units()
            dtype = np.result_type(X.dtype, self.coefs_[0].dtype)
            params = self._pack(dtype)
        rows = np.arange(X.shape[0], dtype=np.intp) if rows is None else rows
        out = np.empty((rows.shape[0], layer_units[-1]), dtype=params.dtype)
        n_threads = effective_n_threads(self.n_jobs)
        sizes = np.array(layer_units, dtype=np.intp)
        codes = HIDDEN_ACTIVATION_CODES[self.activation], OUT_ACTIVATION_CODES[self.out_activation_]
        with blas_limited(1):
            _mlp.mlp_forward(*self._kernel_input(X, params.dtype), rows, sizes, params, *codes,
                             out, n_threads)
        return out

    @staticmethod
    def _kernel_input(X, dtype=None):
        """The kernels' view of X, (data, indices, indptr, n_features): a canonical CSR
        X's arrays, the index arrays as they are, or dense X's rows row-major (a view of
        a C-contiguous X) with indices and indptr None. data is cast to ``dtype`` when
        given (a float32 X predicted by a float64 model)."""
        if is_sparse(X):
            data, indices, indptr = csr_arrays(X)
        else:
            data, indices, indptr = np.reshape(np.ascontiguousarray(X), -1), None, None
        if dtype is not None:
            data = np.ascontiguousarray(data, dtype=dtype)
        return data, indices, indptr, X.shape[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by native epochs.

    A drop-in replacement for :class:`sklearn.neural_network.MLPClassifier`: the same
    parameters, attributes and, for the same ``random_state``, the same initial weights,
    shuffles and validation split. Each epoch (forward pass, log-loss, back-propagation
    and optimizer step for every mini-batch) runs in compiled code without the GIL,
    over ``n_jobs`` threads with results that do not depend on ``n_jobs``.

    The output layer is logistic for binary and multilabel targets, softmax for
    multiclass; the loss is the (binary) cross-entropy, whose output delta is
    ``y_hat - y``.

    Parameters
    ----------
    hidden_layer_sizes : array-like of shape (n_layers - 2,) or int, default=(100,)
        Neurons of each hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu'}, default='relu'
        Activation of the hidden layers.
    solver : {'lbfgs', 'sgd', 'adam', 'adagrad'}, default='adam'
        'lbfgs' minimises the full-batch objective with scipy's L-BFGS-B over the
        native loss and gradient; the others run mini-batch epochs. 'adagrad' is
        cgd's addition (step ``learning_rate_init / (sqrt(sum g^2) + epsilon)``).
    alpha : float, default=0.0001
        Strength of the L2 penalty on the weights (not the biases), divided by the
        batch's sample-weight sum as in scikit-learn.
    batch_size : int or 'auto', default='auto'
        Samples per update of the stochastic solvers; 'auto' is ``min(200, n_samples)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule of ``solver='sgd'``, applied at the end of each epoch.
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=200
        Epochs (stochastic solvers) or iterations (lbfgs).
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
        Initial weights, early-stopping split and shuffles.
    tol : float, default=1e-4
    verbose : bool, default=False
        Progress in scikit-learn's format.
    warm_start : bool, default=False
    momentum : float, default=0.9
        Only used by ``solver='sgd'``.
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the samples (selected by index: X is not
        copied), stop when their accuracy stops improving and keep the best weights.
        If training diverges (non-finite loss or weights), the fit stops at that epoch
        with a ConvergenceWarning and keeps the best validated weights, as
        scikit-learn's does (without early stopping it raises a ValueError).
    validation_fraction : float, default=0.1
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
        Denominator guard of adam and adagrad.
    n_iter_no_change : int, default=10
    max_fun : int, default=15000
        Maximum number of objective evaluations of lbfgs.
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes (single-output targets), multiplied into the sample
        weights as in scikit-learn's linear classifiers.
    n_jobs : int or None, default=None
        Threads inside one fit and prediction: None or -1 all usable cores (honouring
        ``OMP_NUM_THREADS`` and threadpoolctl limits), k exactly k. BLAS runs
        single-threaded inside each thread. The fitted model is bit-for-bit the same
        for every value.

    Notes
    -----
    Differences from scikit-learn: at most 62 hidden layers; negative sample weights
    are refused; Ctrl-C raises KeyboardInterrupt and keeps the last completed epoch
    (with early stopping, the best validated one); for multi-output squared error,
    lbfgs minimises the loss summed over outputs, whose gradient it is given
    (``loss_`` is still reported averaged over outputs).

    Sparse X (any scipy.sparse format, converted once to CSR; int32 or int64 indices;
    float32 or float64 values kept) is never densified: the first layer's product and
    its weight gradient run over the non-zeros, and the fit equals that of the dense
    copy of X to rounding.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    loss_ : float
    best_loss_ : float or None
    loss_curve_ : list of float
        Mean training loss of each epoch (stochastic solvers).
    validation_scores_ : list of float or None
    best_validation_score_ : float or None
    t_ : int
        Training samples seen by the stochastic solver.
    coefs_ : list of ndarray
        ``coefs_[l]`` of shape (units of layer l, units of layer l + 1).
    intercepts_ : list of ndarray
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
    n_iter_ : int
    n_layers_ : int
    n_outputs_ : int
    out_activation_ : str
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        class_weight=None,
        n_jobs=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.class_weight = class_weight
        self.n_jobs = n_jobs

    loss = "log_loss"

    def _output_activation(self):
        return "softmax" if self._y_type == "multiclass" else "logistic"

    # Labels <-> output columns, as scikit-learn's LabelBinarizer does for its MLP,
    # kept as plain data (the type of target and classes_) on the estimator.
    def _fit_labels(self, y):
        y_type = type_of_target(y, input_name="y")
        if "multioutput" in y_type:
            raise ValueError("Multioutput target data is not supported with label "
                             "binarization")
        self._y_type = y_type
        self.classes_ = unique_labels(y)

    def _binarize(self, y, dtype):
        if self._y_type.startswith("multilabel"):
            return np.ascontiguousarray(y, dtype=dtype)
        if len(self.classes_) == 2:
            return (y == self.classes_[1]).astype(dtype).reshape(-1, 1)
        if len(self.classes_) == 1:
            # One class: one logistic output whose target is 0 everywhere, as
            # scikit-learn's LabelBinarizer encodes it (its MLP trains on that).
            return np.zeros((y.shape[0], 1), dtype=dtype)
        Y = np.zeros((y.shape[0], len(self.classes_)), dtype=dtype)
        Y[np.arange(y.shape[0]), np.searchsorted(self.classes_, y)] = 1
        return Y

    def _labels(self, y_pred):
        """Predicted labels of output activations (threshold 0.5, or the arg max)."""
        if self._y_type.startswith("multilabel"):
            return (y_pred > 0.5).astype(int)
        if len(self.classes_) == 1:
            return np.repeat(self.classes_, y_pred.shape[0])  # the only class seen
        if y_pred.ndim == 1 or y_pred.shape[1] == 1:
            return self.classes_[(y_pred.ravel() > 0.5).astype(np.intp)]
        return self.classes_.take(np.argmax(y_pred, axis=1))

    def _validate_input(self, X, y, incremental, reset):
        if not (reset and take_plain_arrays(self, X, y, False,
                                            effective_n_threads(self.n_jobs))):
            X, y = validate_input(self, X, y, multi_output=True,
                                  dtype=[np.float64, np.float32], order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_class_labels(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._fit_labels(y)
        else:
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        if self._y_type.startswith("multilabel") and y.shape[1] != len(self.classes_):
            raise ValueError(f"y has {y.shape[1]} labels, the model was fitted with "
                             f"{len(self.classes_)}.")
        return X, self._binarize(y, X.dtype), y

    def _sample_weight(self, sample_weight, X, y):
        sw = check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)
        if self.class_weight is not None:
            if self._y_type.startswith("multilabel"):
                raise ValueError("class_weight is not supported for multilabel targets; "
                                 "pass sample_weight instead.")
            cw = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
            sw = sw * cw[np.searchsorted(self.classes_, y)].astype(X.dtype)
        return np.ascontiguousarray(sw, dtype=X.dtype)

    def _validation_score(self, X, y_labels, sample_weight, idx_val, params, layer_units):
        y_pred = self._forward(X, check_input=False, rows=idx_val, params=params,
                               layer_units=layer_units)
        if not np.isfinite(y_pred).all():
            return np.nan
        pred = self._labels(y_pred)
        return float(accuracy_score(y_labels[idx_val], pred,
                                    sample_weight=sample_weight[idx_val]))

    @available_if(lambda est: est._check_solver())
    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
        sample_weight : array-like of shape (n_samples,), default=None
        classes : array of shape (n_classes,), default=None
            All classes across the calls; required on the first call, except for a
            multilabel indicator y, whose columns are the classes.

        Returns
        -------
        self : MLPClassifier
        """
        if self.class_weight == "balanced":
            raise balanced_partial_fit_error()

        def train():
            multilabel = type_of_target(y).startswith("multilabel")
            if getattr(self, "classes_", None) is None and classes is None and multilabel:
                self._fit_labels(y)  # an indicator matrix's columns are its classes
            elif first_partial_fit_call(self, classes):
                self._fit_labels(y if multilabel else self.classes_)
            self._fit(X, y, sample_weight, incremental=True)

        self._transaction(train)
        return self

    def predict(self, X):
        """Predict with the multi-layer perceptron classifier.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        return self._labels(self._forward(X))

    def predict_proba(self, X):
        """Probability estimates, columns in the order of ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y_prob : ndarray of shape (n_samples, n_classes)
        """
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """Logarithm of ``predict_proba(X)``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
        """
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by native epochs.

    A drop-in replacement for :class:`sklearn.neural_network.MLPRegressor` (see
    :class:`MLPClassifier` for what is shared). The output layer is the identity with
    half the squared error (averaged over outputs in the reported loss), or the
    exponential with half the Poisson deviance for ``loss='poisson'``.

    Parameters
    ----------
    loss : {'squared_error', 'poisson'}, default='squared_error'
        'poisson' needs non-negative targets.
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, \
learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, \
warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction, \
beta_1, beta_2, epsilon, n_iter_no_change, max_fun, n_jobs
        As :class:`MLPClassifier`; early stopping scores R^2.

    Attributes
    ----------
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_, t_, \
coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_, n_layers_, \
n_outputs_, out_activation_
        As :class:`MLPClassifier`.
    """

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        n_jobs=None,
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.n_jobs = n_jobs

    def _output_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        if not (reset and take_plain_arrays(self, X, y, True,
                                            effective_n_threads(self.n_jobs))):
            X, y = validate_input(self, X, y, multi_output=True, y_numeric=True,
                                  dtype=[np.float64, np.float32], order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError(
                "Some value(s) of y are negative which is not allowed for Poisson "
                "regression (loss='poisson')."
            )
        Y = np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=X.dtype)
        return X, Y, y

    def _sample_weight(self, sample_weight, X, y):
        return np.ascontiguousarray(
            check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True))

    def _validation_score(self, X, y, sample_weight, idx_val, params, layer_units):
        y_pred = self._forward(X, check_input=False, rows=idx_val, params=params,
                               layer_units=layer_units)
        if not np.isfinite(y_pred).all():
            return np.nan
        if y_pred.shape[1] == 1:
            y_pred = y_pred.ravel()
        return float(r2_score(y[idx_val], y_pred, sample_weight=sample_weight[idx_val]))

    @available_if(lambda est: est._check_solver())
    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : MLPRegressor
        """
        self._transaction(lambda: self._fit(X, y, sample_weight, incremental=True))
        return self

    def predict(self, X):
        """Predict using the multi-layer perceptron model.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        y_pred = self._forward(X)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
