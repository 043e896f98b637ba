"""The Python side of training, shared by the estimators.

The kernels run whole epochs; what happens *between* epochs lives here: deciding when
to stop (``tol`` / ``n_iter_no_change``, on the training loss or on a validation
score), the ``adaptive`` schedule's step cuts, the validation split (by index: X is
never copied), and the error raised when training diverges.
"""

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, unique_labels


class ConvergenceTracker:
    """Stopping state of ``n_problems`` problems trained side by side.

    One-vs-rest classification trains one binary problem per class in the same pass
    over the data; as in scikit-learn each stops on its own criterion. Every other
    model is a single problem.

    Parameters
    ----------
    n_problems : int
    tol : float or None
        None disables the criterion (exactly ``max_iter`` epochs).
    n_iter_no_change : int or np.inf
    adaptive : bool
        Divide the problem's learning rate by 5 instead of stopping, while it is
        above 1e-6 (scikit-learn's 'adaptive' schedule).
    eta0 : float
        Initial learning rate of every problem.
    strict : bool
        Stop when the count of epochs without improvement is *greater* than
        ``n_iter_no_change`` (scikit-learn's MLPs) instead of equal to it (its SGD).
    """

    def __init__(self, n_problems, tol, n_iter_no_change, adaptive, eta0, strict=False):
        self.tol = -np.inf if tol is None else float(tol)
        self.n_iter_no_change = n_iter_no_change  # may be np.inf (MLPs)
        self.adaptive = adaptive
        self.strict = strict
        self.eta = np.full(n_problems, float(eta0))
        self.active = np.ones(n_problems, dtype=np.uint8)
        self.no_improvement = np.zeros(n_problems, dtype=np.int64)
        self.best_loss = np.full(n_problems, np.inf)
        self.best_score = np.full(n_problems, -np.inf)

    def update(self, losses=None, scores=None):
        """Record one epoch of every active problem: training losses (lower is better)
        or validation scores (higher is better)."""
        # Plain Python over the few problems: NumPy calls on arrays this small would
        # cost more than the epoch of a small data set.
        tol, limit = self.tol, self.n_iter_no_change
        for k in range(self.active.shape[0]):
            if not self.active[k]:
                continue
            if scores is not None:
                s = float(scores[k])
                worse = tol > -np.inf and s < self.best_score[k] + tol
                if s > self.best_score[k]:
                    self.best_score[k] = s
            else:
                s = float(losses[k])
                worse = tol > -np.inf and s > self.best_loss[k] - tol
                if s < self.best_loss[k]:
                    self.best_loss[k] = s
            count = self.no_improvement[k] + 1 if worse else 0
            self.no_improvement[k] = count
            if count > limit if self.strict else count >= limit:
                if self.adaptive and self.eta[k] > 1e-6:
                    self.eta[k] /= 5.0
                    self.no_improvement[k] = 0
                else:
                    self.active[k] = 0

    @property
    def done(self):
        return not self.active.any()


def validation_split(y, validation_fraction, random_state, stratify, sample_weight):
    """Indices ``(train, validation)`` of a shuffled split; the rows stay where they are.

    Stratified on y for classifiers, as scikit-learn's SGD and MLP estimators do.
    """
    n_samples = y.shape[0]
    splitter = StratifiedShuffleSplit if stratify else ShuffleSplit
    cv = splitter(test_size=validation_fraction, random_state=random_state)
    try:
        idx_train, idx_val = next(cv.split(np.zeros((n_samples, 1)), y))
    except ValueError as exc:
        raise ValueError(
            f"early_stopping could not split {n_samples} samples into a training and a "
            f"validation set with validation_fraction={validation_fraction!r}: {exc} "
            "Use more samples, another validation_fraction, or early_stopping=False."
        ) from exc
    if idx_train.shape[0] == 0 or idx_val.shape[0] == 0:
        raise ValueError(
            f"Splitting {n_samples} samples into a train set and a validation set with "
            f"validation_fraction={validation_fraction!r} led to an empty set "
            f"({idx_train.shape[0]} and {idx_val.shape[0]} samples). Please either change "
            "validation_fraction, increase number of samples, or disable early_stopping."
        )
    if not np.any(sample_weight[idx_val] > 0):
        raise ValueError(
            "The sample weights for validation set are all zero, consider using a "
            "different random state."
        )
    return np.sort(idx_train).astype(np.intp), np.sort(idx_val).astype(np.intp)


class TransactionMixin:
    """Fits that lose nothing: a failed call leaves the estimator as it was."""

    def _transaction(self, train):
        """Run ``train()``; if it raises before completing an epoch, restore the
        estimator exactly as it was, so refused input or an early divergence or
        Ctrl-C loses nothing. Completed epochs stay (see ``_commit``)."""
        saved = self.__dict__.copy()
        # The curves (loss_curve_, validation_scores_) grow in place; a shallow copy
        # shares them, so remember their lengths too.
        lengths = {k: len(v) for k, v in saved.items() if isinstance(v, list)}
        self._epochs_committed = 0
        try:
            return train()
        except BaseException:
            if self.__dict__.get("_epochs_committed", 0) == 0:
                self.__dict__.clear()
                self.__dict__.update(saved)
                for k, n in lengths.items():
                    del saved[k][n:]
            else:
                # An interrupt between a curve's append and the commit of its epoch
                # leaves one entry too many: cut each curve back to what was committed.
                for k, n in self.__dict__.get("_curve_lengths", {}).items():
                    curve = self.__dict__.get(k)
                    if isinstance(curve, list):
                        del curve[n:]
            raise
        finally:
            self.__dict__.pop("_epochs_committed", None)
            self.__dict__.pop("_curve_lengths", None)


def check_class_labels(y):
    """scikit-learn's ``check_classification_targets``, without its cost for the usual
    labels: a 1-D array of integers or booleans is always binary or multiclass, which
    that check accepts, and asking it would take ~0.25 ms, a sizeable part of a small
    fit. Any other y goes through scikit-learn's check (its messages)."""
    if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iub"):
        check_classification_targets(y)


def class_weights(class_weight, classes, y):
    """scikit-learn's ``compute_class_weight`` (float64, one weight per class), short
    of its ~0.17 ms for the default ``class_weight=None``: all ones."""
    if class_weight is None:
        return np.ones(len(classes))
    return compute_class_weight(class_weight, classes=classes, y=y)


def linear_divergence_error(epoch):
    """The ValueError raised when a linear model's loss or weights stop being finite.

    It opens with scikit-learn's own message, word for word, so that code matching on
    it keeps working, then adds what cgd knows."""
    return ValueError(
        f"Floating-point under-/overflow occurred at epoch #{epoch}. Scaling input data "
        "with StandardScaler or MinMaxScaler might help. "
        f"Training diverged at epoch {epoch}: the loss or the weights became non-finite; "
        "a smaller learning rate (eta0) may help too. The estimator keeps the weights of "
        "its last finite epoch."
    )


def mlp_divergence_error(epoch, hint="a smaller learning rate (learning_rate_init)",
                         unit="epoch"):
    """The ValueError raised when an MLP's loss or weights stop being finite.

    scikit-learn's MLPs check their weights after training and raise this message; cgd
    stops at the epoch (or L-BFGS iteration) that overflowed, keeps scikit-learn's
    words for code that matches on them and adds what it knows."""
    return ValueError(
        "Solver produced non-finite parameter weights. The input data may contain large "
        f"values and need to be preprocessed. Training diverged at {unit} {epoch}: the "
        f"loss or the weights became non-finite; {hint} may help too. The estimator "
        f"keeps the weights of its last finite {unit}."
    )


def balanced_partial_fit_error():
    """scikit-learn's refusal of class_weight='balanced' in partial_fit (one batch does
    not show the class frequencies)."""
    return ValueError(
        "class_weight 'balanced' is not supported for partial_fit. In order to use "
        "'balanced' weights, use compute_class_weight('balanced', classes=classes, y=y). "
        "In place of y you can use a large enough sample of the full training set target "
        "to properly estimate the class frequency distributions. Pass the resulting "
        "weights as the class_weight parameter."
    )


def first_partial_fit_call(estimator, classes):
    """True on a classifier's first ``partial_fit`` call, which must name every class
    (``classes``) and sets ``classes_`` to them, sorted; later calls may repeat the same
    classes or pass None. The messages are scikit-learn's."""
    known = getattr(estimator, "classes_", None)
    if classes is None:
        if known is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return False
    if known is None:
        estimator.classes_ = unique_labels(classes)
        return True
    if not np.array_equal(known, unique_labels(classes)):
        raise ValueError(
            f"`classes={classes!r}` is not the same as on last call to partial_fit, "
            f"was: {known!r}"
        )
    return False


def run_epochs(epochs, tracker, order, *, max_iter, shuffle, early_stopping,
               incremental=False):
    """The loop between the kernels' epochs, one for every estimator family.

    Each pass shuffles the training rows (``shuffle(order)`` in place, unless
    ``shuffle`` is None), runs one compiled epoch, reads the epoch's
    loss (and with ``early_stopping`` the validation score), lets the stopping rule see
    them, and commits the epoch to the estimator; it ends when every problem has
    stopped, after ``max_iter`` epochs, or after one epoch when ``incremental``
    (scikit-learn's MLP ``partial_fit``). What differs between the families (the
    kernel's arguments, the published attributes, how divergence is reported) lives in
    ``epochs``, an object with these methods:

    ``start(epoch)``
        Before epoch number ``epoch`` (1-based): verbose header.
    ``run(order, tracker) -> bool``
        One epoch over the rows in ``order``, for the problems ``tracker`` still
        trains; False when the loss or the weights became non-finite.
    ``diverged(tracker)``
        The epoch just run diverged: raise, or return to end the fit where it is.
    ``loss(n_epochs, tracker) -> (loss, stop_losses)``
        The training loss of epoch ``n_epochs`` of this call (the curve's entry) and the
        per-problem losses the stopping rule reads; called before ``tracker`` sees the
        epoch.
    ``validate(tracker) -> (per_problem, overall)``
        Validation scores, with ``early_stopping``; called before ``tracker`` sees
        them, so that the family can keep the weights of a new best score.
    ``finish(n_epochs, loss, score, tracker)``
        After ``tracker`` has seen the epoch: publish it (one atomic update of the
        estimator, so an interrupt never leaves attributes describing different
        epochs), adapt learning rates, report.

    Returns the number of epochs completed (diverged ones not counted).
    """
    n_epochs = 0
    for _ in range(max_iter):
        epochs.start(n_epochs + 1)
        if shuffle is not None:
            shuffle(order)
        if not epochs.run(order, tracker):
            epochs.diverged(tracker)
            break
        n_epochs += 1
        loss, stop_losses = epochs.loss(n_epochs, tracker)
        score = None
        if early_stopping:
            per_problem, score = epochs.validate(tracker)
            tracker.update(scores=per_problem)
        else:
            tracker.update(losses=stop_losses)
        epochs.finish(n_epochs, loss, score, tracker)
        if tracker.done or incremental:
            break
    return n_epochs
