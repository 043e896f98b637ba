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
    # 4. A child forked after a 2-thread fit keeps its threads and the parent's weights:
    # the bundled GNU OpenMP must be the one whose idle threads cgd ends before os.fork().
    _check_fork(X, y, coefs[0])

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



def _check_fork(X, y, expected, timeout=60):
    """Fork after a threaded fit; the child refits on 2 threads and reports through a
    pipe. A child that hangs is killed after ``timeout`` seconds and the check fails."""
    import pickle
    import select
    import signal

    import numpy as np

    import cgd
    from cgd import _openmp_helpers, _threads

    if not hasattr(os, "fork") or not _openmp_helpers.openmp_enabled():
        print("fork check: skipped (no fork, or no OpenMP)")
        return
    if not _threads._FORK_HANDLED_BY_RUNTIME and _openmp_helpers.release_threads() != 0:
        fail("omp_pause_resource_all is unavailable in the bundled OpenMP runtime: "
             "forked children would run on one thread")

    def fit():
        return cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", solver="adam",
                                 batch_size=512, learning_rate="constant", eta0=0.01,
                                 max_iter=3, tol=None, random_state=0, n_jobs=2).fit(X, y).coef_

    fit()  # the parent's OpenMP threads exist when it forks
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running the parent's cleanup
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                n_threads = _threads.effective_n_threads(2)
                coef = fit()
            msg = (n_threads, coef, [str(c.message) for c in caught
                                     if issubclass(c.category, _threads.ForkedProcessThreadsWarning)])
            os.write(w, pickle.dumps(msg))
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            fail(f"a child forked after a 2-thread fit hung for {timeout} s")
        chunk = os.read(r, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    if not chunks:
        fail("the forked child reported nothing")
    n_threads, coef, warned = pickle.loads(b"".join(chunks))
    if warned:
        fail(f"the forked child warned: {warned[0]}")
    if n_threads != 2:
        fail(f"the forked child resolved n_jobs=2 to {n_threads} thread(s)")
    if not np.array_equal(coef, expected):
        fail("the forked child's 2-thread fit differs from the parent's")
    print("fork after a 2-thread fit: the child keeps 2 threads and the parent's weights")


if __name__ == "__main__":
    sys.exit(main())
