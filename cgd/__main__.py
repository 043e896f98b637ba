"""``python -m cgd demo``: train on a bundled scikit-learn data set and compare.

``python -m cgd config`` prints the build (compiler, OpenMP, threads, BLAS).
"""

import argparse
import sys
import time
import warnings

import numpy as np


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def demo(out=sys.stdout):
    """Digits (1,797 images, 10 classes): cgd and scikit-learn side by side."""
    from sklearn import linear_model as sk
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import cgd

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
    for epoch in range(1, 11):
        _, dt = _timed(lambda: est.partial_fit(Xs_tr, y_tr, classes=classes))
        t_total += dt
        say(f"   {epoch:>5}  {est.loss_curve_[-1]:>10.4f}  {est.score(Xs_te, y_te):>17.3f}")
    say(f"   10 epochs in {t_total * 1e3:.1f} ms\n")

    say("2) The drop-in: the same pipeline with one import changed (hinge loss, per-sample SGD)")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, cls in [("scikit-learn", sk.SGDClassifier), ("cgd", cgd.SGDClassifier)]:
            pipe = make_pipeline(StandardScaler(), cls(random_state=0))
            _, dt = _timed(lambda: pipe.fit(X_tr, y_tr))
            est = pipe[-1]
            rows.append((name, est.n_iter_, dt, pipe.score(X_te, y_te)))
    say(f"   {'library':<13} {'epochs':>6} {'fit time':>10} {'held-out accuracy':>18}")
    for name, n_iter, dt, acc in rows:
        say(f"   {name:<13} {n_iter:>6} {dt * 1e3:>8.1f} ms {acc:>18.3f}")
    say(f"   cgd / scikit-learn fit-time ratio: {rows[1][2] / rows[0][2]:.2f} "
        "(one-vs-rest: cgd trains the 10 problems in one pass over the data)\n")

    say("3) Same weights whatever the thread count (batch_size=256, 5 epochs):")
    fits = [cgd.SGDClassifier(loss="log_loss", batch_size=256, n_jobs=j, max_iter=5, tol=None,
                              learning_rate="constant", eta0=0.05, random_state=0)
            .fit(Xs_tr, y_tr).coef_ for j in (1, 2, 4)]
    same = all(np.array_equal(fits[0], f) for f in fits[1:])
    say(f"   n_jobs=1, 2, 4 give bit-identical coef_: {same}\n")
    mlp_same = _demo_mlp(say, X_tr, y_tr, X_te, y_te)
    return 0 if same and mlp_same else 1


def _demo_mlp(say, X_tr, y_tr, X_te, y_te):
    """MLPClassifier, scikit-learn's and cgd's, on the same standardised digits."""
    from sklearn import neural_network as sk_nn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import cgd

    params = dict(hidden_layer_sizes=(128, 64), batch_size=64, max_iter=30, random_state=0)
    say("4) A multilayer perceptron: MLPClassifier(hidden_layer_sizes=(128, 64), "
        "batch_size=64, max_iter=30)")
    say("   (relu, adam; cgd runs each epoch's forward pass, back-propagation and Adam steps"
        " in native code)")
    rows, nets = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, cls in [("scikit-learn", sk_nn.MLPClassifier), ("cgd", cgd.MLPClassifier)]:
            pipe = make_pipeline(StandardScaler(), cls(**params))
            _, dt = _timed(lambda: pipe.fit(X_tr, y_tr))
            rows.append((name, pipe[-1].n_iter_, dt, pipe.score(X_te, y_te)))
            nets.append(pipe[-1])
    say(f"   {'library':<13} {'epochs':>6} {'fit time':>10} {'held-out accuracy':>18}")
    for name, n_iter, dt, acc in rows:
        say(f"   {name:<13} {n_iter:>6} {dt * 1e3:>8.1f} ms {acc:>18.3f}")
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(nets[0].coefs_, nets[1].coefs_))
    say(f"   scikit-learn / cgd fit-time ratio: {rows[0][2] / rows[1][2]:.2f}; same initial "
        f"weights, shuffles and steps: largest weight difference {diff:.1e}")
    Xs_tr = StandardScaler().fit(X_tr).transform(X_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [cgd.MLPClassifier(**{**params, "max_iter": 3}, n_jobs=j).fit(Xs_tr, y_tr)
                for j in (1, 2, 4)]
    same = all(np.array_equal(a, b) for f in fits[1:] for a, b in zip(fits[0].coefs_, f.coefs_))
    say(f"   n_jobs=1, 2, 4 give bit-identical coefs_: {same}")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cgd", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "config"], nargs="?", default="demo")
    args = parser.parse_args(argv)
    if args.command == "config":
        import cgd

        cgd.show_config()
        return 0
    return demo()


if __name__ == "__main__":
    sys.exit(main())
