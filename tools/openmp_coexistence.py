"""cgd's OpenMP runtime beside scikit-learn's, in one process (used by tools/check_dist.sh
and as part of cibuildwheel's test command on Linux and macOS).

A cgd wheel bundles its own OpenMP runtime (Linux: auditwheel's
cgd.libs/libgomp-<hash>.so; macOS: delocate's cgd/.dylibs/libomp.dylib), scikit-learn's
wheel bundles another (scikit_learn.libs/libgomp-<hash>.so, sklearn/.dylibs/libomp.dylib);
a source build links the system's runtime, again a copy distinct from scikit-learn's.
This checks that both runtimes load and work side by side:

1. threadpoolctl lists both OpenMP runtimes, and cgd.show_config() names cgd's;
2. scikit-learn OpenMP estimators (KMeans, HistGradientBoostingClassifier) and cgd
   multi-threaded fits, run alternately and then at the same time from two Python
   threads, give the same results every time (and cgd's equal its n_jobs=1 result);
3. ``threadpoolctl.threadpool_limits(1, "openmp")`` limits both runtimes, cgd's
   ``n_jobs=None`` then resolves to one thread, and both are restored afterwards.

Exits nonzero on the first failure. Run it in a subprocess with a timeout: a broken
runtime pair could hang rather than fail.
"""

import io
import os
import sys
import threading
import warnings


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_info, threadpool_limits

    import cgd
    from cgd import _openmp_helpers
    from cgd._threads import effective_n_threads

    if not _openmp_helpers.openmp_enabled():
        fail("serial build: there is no OpenMP runtime of cgd's to check")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6144, 100))
    y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((6144, 3)), axis=1)
    # scikit-learn's runtime keeps libgomp's default spin-wait, which makes its
    # 2-thread fits many times slower while other processes hold the cores: small data.
    Xk = rng.standard_normal((4000, 10))
    Xh, yh = X[:2000, :20], y[:2000]

    def cgd_fit(n_jobs):
        return cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", solver="adam",
                                 batch_size=512, learning_rate="constant", eta0=0.01,
                                 max_iter=3, tol=None, random_state=0,
                                 n_jobs=n_jobs).fit(X, y).coef_

    def sk_kmeans():
        return KMeans(n_clusters=8, n_init=1, random_state=0).fit(Xk).cluster_centers_

    def sk_hgb():
        return (HistGradientBoostingClassifier(max_iter=5, random_state=0)
                .fit(Xh, yh).predict_proba(Xh))

    # Load scikit-learn's runtime by using it once.
    ref = {"cgd1": cgd_fit(1), "cgd2": cgd_fit(2), "kmeans": sk_kmeans(), "hgb": sk_hgb()}
    if not np.array_equal(ref["cgd1"], ref["cgd2"]):
        fail("cgd n_jobs=1 and n_jobs=2 differ")

    # 1. Both runtimes are listed, and show_config says which one is cgd's.
    omp = [m for m in threadpool_info() if m["user_api"] == "openmp"]
    paths = sorted({os.path.realpath(m["filepath"]) for m in omp})
    print("OpenMP runtimes loaded:\n  " + "\n  ".join(paths))
    own = cgd._kernels_openmp_runtime()
    print(f"cgd's kernels use: {own}")
    if own is None or own not in paths:
        fail(f"cgd's own runtime ({own}) is not among threadpoolctl's {paths}")
    if len(paths) < 2:
        fail("only one OpenMP runtime loaded: expected cgd's and scikit-learn's")
    out = io.StringIO()
    cgd.show_config(file=out)
    marked = [line for line in out.getvalue().splitlines() if "cgd's kernels" in line]
    if len(marked) != 1 or own not in marked[0]:
        fail(f"show_config does not mark cgd's runtime once:\n{out.getvalue()}")

    # 2. Alternate, then run concurrently: same results each time.
    for round_ in range(2):
        for key, fn in (("cgd2", lambda: cgd_fit(2)), ("kmeans", sk_kmeans),
                        ("hgb", sk_hgb), ("cgd2", lambda: cgd_fit(None))):
            if not np.array_equal(fn(), ref[key]):
                fail(f"round {round_}: {key} changed after the other library's OpenMP ran")
    results, errors = {}, []

    def worker(key, fn, repeat):
        try:
            for i in range(repeat):
                results[(key, i)] = fn()
        except BaseException as exc:  # reported below: a thread's exception is not raised
            errors.append(f"{key}: {exc!r}")

    threads = [threading.Thread(target=worker, args=("cgd2", lambda: cgd_fit(2), 3)),
               threading.Thread(target=worker, args=("kmeans", sk_kmeans, 2)),
               threading.Thread(target=worker, args=("hgb", sk_hgb, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail(f"concurrent fits raised: {errors}")
    for (key, i), value in results.items():
        if not np.array_equal(value, ref[key]):
            fail(f"concurrent run {i} of {key} differs from its sequential result")
    print("alternating and concurrent fits (cgd n_jobs=2 / None, KMeans, "
          "HistGradientBoosting): results unchanged")

    # 3. threadpoolctl's OpenMP limit reaches both runtimes, and cgd honours it.
    before = {os.path.realpath(m["filepath"]): m["num_threads"] for m in omp}
    with threadpool_limits(limits=1, user_api="openmp"):
        inside = {os.path.realpath(m["filepath"]): m["num_threads"]
                  for m in threadpool_info() if m["user_api"] == "openmp"}
        n_none = effective_n_threads(None)
        limited_fit = cgd_fit(None)
    after = {os.path.realpath(m["filepath"]): m["num_threads"]
             for m in threadpool_info() if m["user_api"] == "openmp"}
    def short(d):
        return ", ".join(f"{os.path.basename(k)}: {v}" for k, v in sorted(d.items()))

    print(f"threads per runtime: before ({short(before)}); inside threadpool_limits(1) "
          f"({short(inside)}); after ({short(after)}); cgd's n_jobs=None inside the limit "
          f"-> {n_none} thread(s)")
    if set(inside.values()) != {1}:
        fail(f"threadpool_limits(1, 'openmp') did not limit every runtime: {inside}")
    if n_none != 1:
        fail(f"cgd's n_jobs=None resolves to {n_none} threads under threadpool_limits(1)")
    if after != before:
        fail(f"limits not restored: {after} != {before}")
    if not np.array_equal(limited_fit, ref["cgd1"]):
        fail("cgd fit under threadpool_limits(1) differs from n_jobs=1")
    print("OpenMP coexistence check passed")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.exit(main())
