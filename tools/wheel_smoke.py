"""Smoke test of an installed cgd (a wheel, or an sdist build), run from outside the clone.

Used as cibuildwheel's test-command and by tools/check_dist.sh. It checks that:

1. ``cgd`` imports from an installed location (not a source folder), with its compiled
   kernels, and - unless ``--allow-serial`` - with OpenMP compiled in;
2. a short fit is right: per-sample SGD with ``shuffle=False`` gives scikit-learn's
   ``SGDRegressor`` weights to 1e-10 (the same update, computed by the native kernel);
3. thread counts do not change results: mini-batch fits whose batches are large enough
   to be spread over threads, and an MLP fit, give bit-identical weights with
   ``n_jobs=1`` and ``n_jobs=2``.

Exits nonzero (with the reason) on the first failure.
"""

import argparse
import os
import shutil
import sys
import sysconfig
import time
import warnings
from pathlib import Path


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-serial", action="store_true",
                        help="accept a build without OpenMP (CGD_DISABLE_OPENMP=1)")
    parser.add_argument("--source-tree", type=Path, default=None,
                        help="a clone cgd must NOT be imported from")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDRegressor as SkSGDRegressor

    import cgd
    from cgd import _linear, _mlp, _openmp_helpers, _optim
    from cgd._threads import effective_n_threads

    pkg = Path(cgd.__file__).resolve().parent
    print(f"cgd {cgd.__version__} from {pkg}")
    if args.source_tree is not None and args.source_tree.resolve() in pkg.parents:
        fail(f"cgd was imported from the source tree {args.source_tree}, not an install")
    ext_suffixes = tuple(s for s in (sysconfig.get_config_var("EXT_SUFFIX"), ".so", ".pyd") if s)
    for mod in (_linear, _mlp, _optim, _openmp_helpers):
        if not str(mod.__file__).endswith(ext_suffixes):
            fail(f"{mod.__name__} is not a compiled extension: {mod.__file__}")
    # What a user without a compiler would see (informational: the wheel needs none).
    print("compiler on PATH: " + ", ".join(
        f"{c}={shutil.which(c) or 'not found'}" for c in ("cc", "gcc", "clang", "cl")))
    cgd.show_config()
    if not _openmp_helpers.openmp_enabled() and not args.allow_serial:
        fail("this build has no OpenMP (every fit would run on one thread)")

    rng = np.random.default_rng(0)

    # 2. The native per-sample update against scikit-learn's.
    X = rng.standard_normal((300, 8))
    y = X @ rng.standard_normal(8) + 0.1 * rng.standard_normal(300)
    params = dict(max_iter=5, tol=None, shuffle=False, random_state=0,
                  learning_rate="invscaling", eta0=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = cgd.SGDRegressor(**params).fit(X, y)
        ref = SkSGDRegressor(**params).fit(X, y)
    scale = np.max(np.abs(ref.coef_))
    err = max(np.max(np.abs(ours.coef_ - ref.coef_)), abs(ours.intercept_[0] - ref.intercept_[0]))
    print(f"SGDRegressor vs scikit-learn: max |diff| = {err:.2e} (coef scale {scale:.2f})")
    if not err <= 1e-10 * scale:
        fail(f"cgd's SGDRegressor differs from scikit-learn's by {err:.3e}")

    # 3. Bit identity across thread counts. The kernels spread a batch over threads only
    # from 2**17 multiply-adds on: 512 rows x 3 classes x 100 features is above that.
    n_threads = effective_n_threads(2)
    if _openmp_helpers.openmp_enabled() and n_threads != 2:
        fail(f"n_jobs=2 resolves to {n_threads} threads")
    X = rng.standard_normal((6144, 100))
    y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((6144, 3)), axis=1)
    coefs = [
        cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", solver="adam",
                          batch_size=512, learning_rate="constant", eta0=0.01, max_iter=3,
                          tol=None, random_state=0, n_jobs=j).fit(X, y).coef_
        for j in (1, 2)
    ]
    if not np.array_equal(coefs[0], coefs[1]):
        fail("SGDClassifier coef_ differs between n_jobs=1 and n_jobs=2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlps = [
            cgd.MLPClassifier(hidden_layer_sizes=(64,), batch_size=256, max_iter=2,
                              random_state=0, n_jobs=j).fit(X, y).coefs_
            for j in (1, 2)
        ]
    if not all(np.array_equal(a, b) for a, b in zip(*mlps)):
        fail("MLPClassifier coefs_ differ between n_jobs=1 and n_jobs=2")
    acc = cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", batch_size=512,
                            solver="adam", learning_rate="constant", eta0=0.01, max_iter=3,
                            tol=None, random_state=0).fit(X, y).score(X, y)
    print(f"n_jobs=1 and 2: bit-identical coef_ (SGDClassifier, training accuracy {acc:.3f}) "
          "and coefs_ (MLPClassifier)")
    if acc < 0.6:  # three classes from three informative features: chance is 1/3
        fail(f"multinomial SGD training accuracy {acc:.3f} is barely above chance")
    print(f"wheel smoke test passed in {time.perf_counter() - t0:.1f} s "
          f"(pid {os.getpid()}, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
