"""``python -m cgd demo``: train on a bundled scikit-learn data set and compare.

``python -m cgd demo --plot FILE.png`` also draws the demo's loss curves (needs
matplotlib: ``pip install "cgd[plot]"``). ``python -m cgd config`` prints the build
(compiler, OpenMP, threads, BLAS).
"""

import argparse
import contextlib
import os
import sys
import textwrap
import time
import warnings

import numpy as np

# Fits are timed several times and the fastest kept: the minimum is the run least
# disturbed by other processes, so the printed ratios hardly move from run to run. On a
# machine so loaded that a round takes long, fewer rounds are run (at least one), which
# keeps the demo short; the table says how many.
LINEAR_REPEATS = 5
MLP_REPEATS = 3
RACE_BUDGET_SECONDS = 4.0

PLOT_INSTALL_HINT = 'pip install "cgd[plot]" (or: pip install matplotlib)'


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _race(makers, X, y, repeats, contexts=None):
    """Fit each ``make()`` up to ``repeats`` times, interleaved (so that a burst of load
    from elsewhere hits both libraries alike), inside ``contexts[name]()`` if given;
    returns the last fitted object of each, its fastest time and the number of rounds
    run."""
    contexts = contexts or {}
    fitted, best = {}, {name: np.inf for name in makers}
    t0 = time.perf_counter()
    rounds = 0
    while rounds < repeats and (rounds == 0 or time.perf_counter() - t0 < RACE_BUDGET_SECONDS):
        for name, make in makers.items():
            obj = make()
            with contexts.get(name, contextlib.nullcontext)():
                _, dt = _timed(lambda: obj.fit(X, y))
            fitted[name], best[name] = obj, min(best[name], dt)
        rounds += 1
    return fitted, best, rounds


def _wrapped(say, text):
    """Say a long remark in lines of at most 90 columns, indented as the tables."""
    for line in textwrap.wrap(text, width=90, initial_indent="   ", subsequent_indent="   "):
        say(line)


def _timing_table(say, rows, rounds, note=None):
    """rows: (library, epochs, best fit time in s, held-out accuracy). Prints the table,
    the ratio of cgd's time per epoch to scikit-learn's, then ``note``."""
    say(f"   {'library':<13} {'epochs':>6} {'fit time':>10} {'per epoch':>10} "
        f"{'held-out accuracy':>18}")
    per_epoch = {}
    for name, n_iter, dt, acc in rows:
        per_epoch[name] = dt / n_iter
        say(f"   {name:<13} {n_iter:>6} {dt * 1e3:>7.1f} ms {dt / n_iter * 1e3:>7.3f} ms "
            f"{acc:>18.3f}")
    say(f"   time per epoch, cgd / scikit-learn: "
        f"{per_epoch['cgd'] / per_epoch['scikit-learn']:.2f} (fit times: best of {rounds})")
    if note:
        _wrapped(say, note)
    busy = _busy()
    if busy:
        say(f"   (this machine is busy: load average {busy[0]:.1f} on {busy[1]} CPUs; "
            "times vary from run to run)")


def _busy():
    """(1-minute load average, usable CPUs) when other work holds every CPU, else None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (load, cpus) if cpus and load > cpus else None


def demo(out=None, plot=None):
    """Digits (1,797 images, 10 classes): cgd and scikit-learn side by side.

    Parameters
    ----------
    out : file-like, default=None
        Where to print (standard output by default).
    plot : str or path-like, default=None
        If given, draw the loss curves into this image file (needs matplotlib).

    Returns
    -------
    status : int
        0 when every n_jobs gave bit-identical weights, else 1.

    Raises
    ------
    ImportError, ValueError
        ``plot`` is given but matplotlib is missing, or the file cannot be written
        there (checked before the demo runs).
    """
    if plot is not None:
        backend = _plot_backend(plot)
        if isinstance(backend, str):
            raise (ImportError if "matplotlib" in backend else ValueError)(backend)
    from sklearn import linear_model as sk
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import cgd
    from cgd import _openmp_helpers

    out = sys.stdout if out is None else out

    def say(*a):
        print(*a, file=out)

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    Xs_tr, Xs_te = scaler.transform(X_tr), scaler.transform(X_te)
    say(f"cgd {cgd.__version__} demo: scikit-learn's digits, {X_tr.shape[0]} training and "
        f"{X_te.shape[0]} held-out images, {X.shape[1]} pixels, 10 classes.\n")

    say("1) Mini-batch softmax regression with Adam (neither exists in scikit-learn's SGD):")
    say("   cgd.SGDClassifier(loss='log_loss', multiclass='multinomial', solver='adam',")
    say("                     batch_size=32, learning_rate='constant', eta0=0.01)")
    est = cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", solver="adam",
                            batch_size=32, learning_rate="constant", eta0=0.01, random_state=0)
    say(f"   {'epoch':>5}  {'train loss':>10}  {'held-out accuracy':>17}")
    classes = np.unique(y_tr)
    t_total = 0.0
    n_epochs = 10
    for epoch in range(1, n_epochs + 1):
        _, dt = _timed(lambda: est.partial_fit(Xs_tr, y_tr, classes=classes))
        t_total += dt
        say(f"   {epoch:>5}  {est.loss_curve_[-1]:>10.4f}  {est.score(Xs_te, y_te):>17.3f}")
    say(f"   {n_epochs} epochs in {t_total * 1e3:.1f} ms "
        f"({t_total / n_epochs * 1e3:.2f} ms per epoch)\n")
    curves = {"adam": list(est.loss_curve_)}

    say("2) The drop-in: the same pipeline with one import changed (hinge loss, per-sample SGD)")
    libs = {"scikit-learn": sk.SGDClassifier, "cgd": cgd.SGDClassifier}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipes, best, rounds = _race(
            {name: (lambda cls=cls: make_pipeline(StandardScaler(), cls(random_state=0)))
             for name, cls in libs.items()}, X_tr, y_tr, LINEAR_REPEATS)
        rows = [(name, pipes[name][-1].n_iter_, best[name], pipes[name].score(X_te, y_te))
                for name in libs]
        _timing_table(say, rows, rounds, note=(
            "(one-vs-rest: cgd trains the 10 binary problems in one pass over the data, "
            "scikit-learn one after another)"))
        if rows[0][1] != rows[1][1]:
            # Say why, from a run that shows it rather than from belief.
            ordered = [make_pipeline(StandardScaler(), cls(random_state=0, shuffle=False))
                       .fit(X_tr, y_tr)[-1] for cls in libs.values()]
            diff = float(np.max(np.abs(ordered[0].coef_ - ordered[1].coef_)))
            if ordered[0].n_iter_ == ordered[1].n_iter_ and diff < 1e-9:
                _wrapped(say, "The epoch counts differ only because the libraries shuffle "
                         "with different random generators: with shuffle=False both stop "
                         f"after {ordered[0].n_iter_} epochs with the same weights (largest "
                         f"coef_ difference {diff:.1e}).")
            else:
                _wrapped(say, f"With shuffle=False: scikit-learn {ordered[0].n_iter_} "
                         f"epochs, cgd {ordered[1].n_iter_} (largest coef_ difference "
                         f"{diff:.1e}).")
    say("")

    say("3) Same weights whatever the thread count (batch_size=256, 5 epochs):")
    fits = [cgd.SGDClassifier(loss="log_loss", batch_size=256, n_jobs=j, max_iter=5, tol=None,
                              learning_rate="constant", eta0=0.05, random_state=0)
            .fit(Xs_tr, y_tr).coef_ for j in (1, 2, 4)]
    same = all(np.array_equal(fits[0], f) for f in fits[1:])
    say(f"   n_jobs=1, 2, 4 give bit-identical coef_: {same}")
    if not _openmp_helpers.openmp_enabled():
        say("   (this build has no OpenMP: every n_jobs runs on one thread)")
    say("")
    mlp_same = _demo_mlp(say, X_tr, y_tr, X_te, y_te, curves)
    if plot is not None:
        _plot(plot, curves)
        say(f"\nLoss curves written to {plot}")
    return 0 if same and mlp_same else 1


def _demo_mlp(say, X_tr, y_tr, X_te, y_te, curves):
    """MLPClassifier, scikit-learn's and cgd's, on the same standardised digits."""
    from sklearn import neural_network as sk_nn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    import cgd
    from cgd import _openmp_helpers

    params = dict(hidden_layer_sizes=(128, 64), batch_size=64, max_iter=30, random_state=0)
    say("4) A multilayer perceptron: MLPClassifier(hidden_layer_sizes=(128, 64), "
        "batch_size=64, max_iter=30)")
    say("   (relu, adam; cgd runs each epoch's forward pass, back-propagation and Adam steps"
        " in native code)")
    # Timed on one thread each. A 64-row batch is a single one of cgd's 64-row blocks,
    # so cgd runs it on one thread whatever n_jobs says, with BLAS held to one thread;
    # scikit-learn's BLAS is held to one thread too. Left to its default thread count,
    # its GEMMs on such small batches were measured 7 to 25 times slower on a 2-core
    # machine with one core busy elsewhere: the ratio would measure the load.
    _wrapped(say, "(timed on one thread each: scikit-learn's BLAS held to 1 thread, as "
                  "cgd holds its own; a 64-row batch is one of cgd's 64-row blocks, which "
                  "run one per thread)")
    libs = {"scikit-learn": sk_nn.MLPClassifier, "cgd": cgd.MLPClassifier}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipes, best, rounds = _race(
            {name: (lambda cls=cls: make_pipeline(StandardScaler(), cls(**params)))
             for name, cls in libs.items()}, X_tr, y_tr, MLP_REPEATS,
            contexts={"scikit-learn": lambda: threadpool_limits(limits=1, user_api="blas")})
    nets = [pipes[name][-1] for name in libs]
    rows = [(name, pipes[name][-1].n_iter_, best[name], pipes[name].score(X_te, y_te))
            for name in libs]
    _timing_table(say, rows, rounds)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(nets[0].coefs_, nets[1].coefs_))
    say(f"   Same initial weights, shuffles and steps: largest weight difference {diff:.1e}")
    curves["mlp"] = {name: list(net.loss_curve_) for name, net in zip(libs, nets)}

    # Batches of 256 rows: four 64-row blocks, which cgd spreads over the threads (a
    # 64-row batch is a single block and would run on one thread whatever n_jobs says).
    Xs_tr = StandardScaler().fit(X_tr).transform(X_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [cgd.MLPClassifier(**{**params, "batch_size": 256, "max_iter": 3}, n_jobs=j)
                .fit(Xs_tr, y_tr) for j in (1, 2, 4)]
    same = all(np.array_equal(a, b) for f in fits[1:] for a, b in zip(fits[0].coefs_, f.coefs_))
    say(f"   n_jobs=1, 2, 4 give bit-identical coefs_ (batch_size=256, 3 epochs): {same}")
    if not _openmp_helpers.openmp_enabled():
        say("   (this build has no OpenMP: every n_jobs runs on one thread)")
    return same


# The figure's size in pixels is fixed (FIG_INCHES * FIG_DPI), whatever the user's
# matplotlib settings, so that the file looks the same everywhere.
FIG_INCHES = (10.0, 4.0)
FIG_DPI = 100


def _plot_backend(path):
    """Import matplotlib's Agg canvas and check ``path`` can be written, before the
    demo spends its time; returns (Figure, FigureCanvasAgg) or an error message."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        return f"--plot needs matplotlib, which could not be imported ({exc}).\n" \
               f"Install it with: {PLOT_INSTALL_HINT}"
    ext = os.path.splitext(str(path))[1].lstrip(".").lower()
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if ext not in supported:
        return (f"--plot {path}: the file name must end in one of "
                f"{', '.join('.' + e for e in sorted(supported))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--plot {path}: folder {folder} does not exist"
    return Figure, FigureCanvasAgg


def _plot(path, curves):
    """Left: the Adam softmax run's training loss; right: both MLPs' loss curves."""
    Figure, FigureCanvasAgg = _plot_backend(path)
    # Agg through its canvas, not pyplot: no display needed, no global state touched.
    fig = Figure(figsize=FIG_INCHES, dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    adam = curves["adam"]
    left.plot(range(1, len(adam) + 1), adam, "o-", color="C0", label="cgd")
    left.set(title="1) Softmax regression, Adam, batch 32", xlabel="epoch",
             ylabel="mean training loss")
    left.legend()
    mlp = curves["mlp"]
    for name, style in (("scikit-learn", dict(color="C1", lw=4, alpha=0.5)),
                        ("cgd", dict(color="C0", lw=1.5, ls="--"))):
        right.plot(range(1, len(mlp[name]) + 1), mlp[name], label=name, **style)
    right.set(title="4) MLPClassifier (128, 64), adam, batch 64",
              xlabel="epoch", ylabel="training loss", yscale="log")
    right.legend()
    fig.savefig(path, dpi=FIG_DPI)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cgd", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "config"], nargs="?", default="demo")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="demo: also draw the loss curves into this image file "
                             f"(needs matplotlib: {PLOT_INSTALL_HINT})")
    args = parser.parse_args(argv)
    if args.command == "config":
        if args.plot is not None:
            parser.error("--plot belongs to the demo command")
        import cgd

        cgd.show_config()
        return 0
    if args.plot is not None:
        # Found out now rather than after the whole demo has run.
        backend = _plot_backend(args.plot)
        if isinstance(backend, str):
            print(f"python -m cgd demo: {backend}", file=sys.stderr)
            return 2
    return demo(plot=args.plot)


if __name__ == "__main__":
    sys.exit(main())
