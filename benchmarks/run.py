"""cgd benchmarks: one command, one table (SPEC.md section 5).

    python benchmarks/run.py            # full run (markdown table, pasteable into README.md)
    python benchmarks/run.py --quick    # smoke run: every n divided by 10
    python benchmarks/run.py --plain    # plain-text table instead of markdown

Workloads (synthetic, seeded; X standard normal, each dataset generated once and shared
by every implementation in the run):

    W1  linear regression, n=200,000, d=100, float64, 5 epochs, y = X @ w + 0.1 * noise
    W2  binary logistic regression, same shape, y = [X @ w + 0.1 * noise > 0]
    W4  W1 in float32 at n=1,000,000: bytes of X read per second against the machine

plus the machine limits, measured here with NumPy in the same process: memory read
bandwidth (summing a large array, on 1 thread and on all threads) and GEMM GFLOP/s.
(W3, the MLP workload of SPEC.md, is not run: cgd has no MLP estimators yet.)

cgd is run at batch_size=1 n_jobs=1 (scikit-learn's per-sample SGD, one thread), and at
batch_size 64 and 2048 with n_jobs 1 and 2, so the effect of the batch and the effect of
the second thread can be told apart (a batch below cgd's parallel threshold runs on one
thread whatever n_jobs says; the row says so and the threads column shows what ran). Every estimator uses its defaults
otherwise (same learning-rate schedule as scikit-learn; the row label says which).

Time per epoch is the best of ``--repeats`` fits divided by the number of epochs
(``max_iter=5, tol=None``, so every fit runs exactly 5 epochs; checked via ``n_iter_``).
"speedup vs sklearn" is sklearn's time per epoch divided by cgd's: > 1 means cgd is
faster. "X GB/s" is n * d * itemsize bytes per epoch divided by the time per epoch, and
"of BW" that as a fraction of the read bandwidth measured with as many threads as the fit
uses. Machines are shared and noisy: read the ratios, not the absolute times.
"""

import argparse
import datetime
import gc
import os
import platform
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import cgd  # noqa: E402
import sklearn  # noqa: E402
from sklearn.linear_model import SGDClassifier as SkSGDClassifier  # noqa: E402
from sklearn.linear_model import SGDRegressor as SkSGDRegressor  # noqa: E402

EPOCHS = 5
D = 100


# --------------------------------------------------------------------------- machine


def _best(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def read_bandwidth(nbytes, n_threads, repeats=10):
    """Read bandwidth in GB/s: best time to sum an array of `nbytes` float64 that is far
    larger than the caches, split in `n_threads` contiguous parts summed concurrently
    (NumPy's reductions release the GIL). Summing is a pure streaming read: ~1 add per
    8 bytes, far below what a core can compute."""
    a = np.ones(nbytes // 8)
    parts = np.array_split(a, n_threads)
    out = [0.0] * n_threads

    def work(k):
        out[k] = parts[k].sum()

    def run():
        if n_threads == 1:
            work(0)
            return
        ts = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run()  # touch every page once (first-touch faults are not reading)
    sec = _best(run, repeats)
    assert sum(out) == a.size
    return a.nbytes / sec / 1e9


def gemm_gflops(dtype, n=2048, repeats=3):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    np.dot(a, b)  # warm-up
    sec = _best(lambda: np.dot(a, b), repeats)
    return 2.0 * n ** 3 / sec / 1e9


# --------------------------------------------------------------------------- data


def make_linear(n, n_test, d, dtype, seed, classification):
    """Rows [0, n) train and [n, n + n_test) held out, from one seeded generator."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_test, d), dtype=dtype)
    w = rng.standard_normal(d).astype(dtype)
    z = X @ w + dtype(0.1) * rng.standard_normal(n + n_test, dtype=dtype)
    if classification:
        y = (z > 0).astype(np.int64)
    else:
        y = z.astype(dtype)
    # Leading-row slices of a C-contiguous array are C-contiguous: no copy.
    return X[:n], y[:n], X[n:], y[n:]


# --------------------------------------------------------------------------- timing


def time_fit(make, X, y, repeats):
    """Best time per epoch over `repeats` fresh fits, and the last fitted estimator."""
    times, est = [], None
    for _ in range(repeats):
        est = make()
        gc.collect()
        t0 = time.perf_counter()
        est.fit(X, y)
        times.append(time.perf_counter() - t0)
    n_iter = getattr(est, "n_iter_", EPOCHS)
    if int(np.max(n_iter)) != EPOCHS:
        raise RuntimeError(f"{type(est).__name__} ran {n_iter} epochs, expected {EPOCHS}")
    return min(times) / EPOCHS, max(times) / min(times), est


def warm_up():
    """A tiny fit of every estimator and dtype used, so that imports, OpenMP thread-pool
    start-up and first-call overheads are not timed."""
    rng = np.random.default_rng(123)
    for dtype in (np.float64, np.float32):
        X = rng.standard_normal((512, D)).astype(dtype)
        y = X[:, 0] + X[:, 1]
        yc = (y > 0).astype(np.int64)
        for nj, bs in ((1, 1), (2, 64)):
            cgd.SGDRegressor(max_iter=2, tol=None, batch_size=bs, n_jobs=nj).fit(X, y).score(X, y)
            cgd.SGDClassifier(loss="log_loss", max_iter=2, tol=None, batch_size=bs,
                              n_jobs=nj).fit(X, yc).score(X, yc)
        SkSGDRegressor(max_iter=2, tol=None).fit(X, y).score(X, y)
        SkSGDClassifier(loss="log_loss", max_iter=2, tol=None).fit(X, yc).score(X, yc)


# --------------------------------------------------------------------------- workloads

# Each config: (label, library, n_jobs, factory(random_state) -> estimator)
SEED_FIT = 0


def _threads_used(batch_size, n_jobs, d=D, n_outputs=1):
    """Threads a cgd fit really uses: batches below cgd's parallel threshold (in
    multiply-adds) run on one thread whatever n_jobs says (cgd.linear_model)."""
    from cgd.linear_model import PARALLEL_MIN_WORK

    return n_jobs if batch_size * d * n_outputs >= PARALLEL_MIN_WORK else 1


def _cgd_rows(cls, name, note, common):
    rows = []
    for bs, nj in [(1, 1), (64, 1), (64, 2), (2048, 1), (2048, 2)]:
        label = f"cgd {name} batch_size={bs} n_jobs={nj} ({note})"
        used = _threads_used(bs, nj)
        if used != nj:
            label += f" [batch below the parallel threshold: runs on {used} thread]"
        rows.append((label, "cgd", used,
                     lambda bs=bs, nj=nj: cls(batch_size=bs, n_jobs=nj, **common)))
    return rows


def regressor_configs(dtype_note=""):
    common = dict(max_iter=EPOCHS, tol=None, random_state=SEED_FIT)
    return _cgd_rows(cgd.SGDRegressor, "SGDRegressor", "invscaling, eta0=0.01: defaults",
                     common) + [
        ("sklearn SGDRegressor (invscaling, eta0=0.01: defaults)" + dtype_note, "sklearn", 1,
         lambda: SkSGDRegressor(**common)),
    ]


def classifier_configs():
    common = dict(loss="log_loss", max_iter=EPOCHS, tol=None, random_state=SEED_FIT)
    return _cgd_rows(cgd.SGDClassifier, "SGDClassifier log_loss",
                     "optimal, alpha=1e-4: defaults", common) + [
        ("sklearn SGDClassifier log_loss (optimal, alpha=1e-4: defaults)", "sklearn", 1,
         lambda: SkSGDClassifier(**common)),
    ]


def run_workload(wid, title, configs, data, repeats, bw, score_name, log):
    X, y, Xt, yt = data
    n, d = X.shape
    x_bytes = X.nbytes
    results = []
    for label, lib, n_jobs, make in configs:
        log(f"  {wid}: timing {label} ...")
        sec, spread, est = time_fit(make, X, y, repeats)
        score = est.score(Xt, yt)
        coef_dtype = np.asarray(est.coef_).dtype
        results.append(dict(wid=wid, title=title, label=label, lib=lib, n_jobs=n_jobs,
                            sec=sec, spread=spread, score=score, score_name=score_name,
                            gbs=x_bytes / sec / 1e9, bw=bw[n_jobs], n=n, d=d,
                            dtype=X.dtype.name, coef_dtype=coef_dtype.name))
        del est
    peer = [r for r in results if r["lib"] == "sklearn"]
    peer_sec = peer[0]["sec"] if peer else None
    for r in results:
        r["speedup"] = (peer_sec / r["sec"]) if (peer_sec and r["lib"] == "cgd") else None
    return results


# --------------------------------------------------------------------------- output


def fmt_table(header, rows, markdown):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    right = [i >= 2 for i in range(len(header))]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            s = str(c)
            out.append(s.rjust(widths[i]) if right[i] else s.ljust(widths[i]))
        return ("| " + " | ".join(out) + " |") if markdown else "  ".join(out)

    lines = [line(header)]
    if markdown:
        lines.append("| " + " | ".join(
            ("-" * (w - 1) + ":") if right[i] else "-" * w for i, w in enumerate(widths)) + " |")
    else:
        lines.append("  ".join("-" * w for w in widths))
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: every n divided by 10")
    ap.add_argument("--markdown", action="store_true", default=True,
                    help="markdown table (the default)")
    ap.add_argument("--plain", dest="markdown", action="store_false",
                    help="plain-text table instead of markdown")
    ap.add_argument("--repeats", type=int, default=3, help="fits per row; the best counts")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    scale = 10 if args.quick else 1
    n_w1, n_w4, n_test = 200_000 // scale, 1_000_000 // scale, 20_000 // scale
    md = args.markdown

    def log(msg):
        if not args.quiet:
            print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # ---- header
    print("# cgd benchmarks" + (" (--quick: n / 10)" if args.quick else ""))
    print()
    if md:
        print("```text")
    cgd.show_config()
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
          f"host cpus: {os.cpu_count()}; {platform.processor() or platform.machine()}")
    print(f"command: python benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}"
          .rstrip())
    if md:
        print("```")
    print()
    print("Note: the machine is shared and noisy; the ratios (speedup vs sklearn, fraction "
          "of bandwidth) are what matter, not absolute times.")
    print()
    sys.stdout.flush()

    # ---- machine limits
    log("warm-up fits")
    warm_up()
    log("machine limits: read bandwidth (1 thread, 2 threads), GEMM")
    n_cores = os.cpu_count() or 1
    bw_nbytes = (400 << 20) // (1 if not args.quick else 2)
    n_bw = max(2, n_cores)

    def measure_bandwidth():
        b1 = read_bandwidth(bw_nbytes, 1)
        bN = read_bandwidth(bw_nbytes, n_bw)
        return {1: b1, 2: read_bandwidth(bw_nbytes, 2) if n_bw != 2 else bN, n_bw: bN}

    bw = measure_bandwidth()
    g64 = gemm_gflops(np.float64)
    g32 = gemm_gflops(np.float32)

    # ---- workloads (each dataset generated once, shared by all rows)
    results = []
    workloads = [  # id, title, n, dtype, seed, classification, configs, score name
        ("W1", "linear regression", n_w1, np.float64, 1, False, regressor_configs(), "R^2"),
        ("W2", "binary logistic regression", n_w1, np.float64, 2, True, classifier_configs(),
         "accuracy"),
        ("W4", "linear regression, float32", n_w4, np.float32, 4, False, regressor_configs(),
         "R^2"),
    ]
    for wid, title, n, dtype, seed, classification, configs, score_name in workloads:
        log(f"{wid} data: n={n}+{n_test} held out, d={D}, {np.dtype(dtype).name}")
        data = make_linear(n, n_test, D, dtype, seed=seed, classification=classification)
        results += run_workload(wid, title, configs, data, args.repeats, bw, score_name, log)
        del data
        gc.collect()

    # ---- bandwidth again: on a shared machine the best of both measurements is the limit
    log("machine limits: read bandwidth again")
    bw_end = measure_bandwidth()
    bw = {k: max(v, bw_end[k]) for k, v in bw.items()}
    bw1, bwN = bw[1], bw[n_bw]
    for r in results:
        r["bw"] = bw[r["n_jobs"]]

    # ---- table
    header = ["id", "workload / implementation", "n", "dtype", "threads", "s/epoch",
              "worst/best", "held-out score", "speedup vs sklearn", "X GB/s", "of BW"]
    rows = []
    for r in results:
        label = r["label"]
        if r["dtype"] != r["coef_dtype"]:
            label += f" [coef_ {r['coef_dtype']}]"
        rows.append([
            r["wid"], f"{r['title']}: {label}", f"{r['n']:,}", r["dtype"], r["n_jobs"],
            f"{r['sec']:.4f}", f"{r['spread']:.2f}", f"{r['score_name']} {r['score']:.6f}",
            "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
            f"{r['gbs']:.2f}", f"{r['gbs'] / r['bw']:.1%}",
        ])
    rows.append(["M", "machine: memory read bandwidth, 1 thread (np.sum, "
                 f"{bw_nbytes >> 20} MiB float64, best of 2x10)", "", "float64", 1, "", "", "", "",
                 f"{bw1:.2f}", "100%"])
    rows.append(["M", f"machine: memory read bandwidth, {n_bw} threads (np.sum over equal "
                 "parts in threads, best of 2x10)", "", "float64", n_bw, "", "", "",
                 "", f"{bwN:.2f}", "100%"])
    rows.append(["M", "machine: GEMM float64, np.dot 2048x2048 (best of 3): "
                 f"{g64:.1f} GFLOP/s", "", "float64", "BLAS", "", "", "", "", "", ""])
    rows.append(["M", "machine: GEMM float32, np.dot 2048x2048 (best of 3): "
                 f"{g32:.1f} GFLOP/s", "", "float32", "BLAS", "", "", "", "", "", ""])
    print(fmt_table(header, rows, md))
    print()
    print(f"s/epoch: best of {args.repeats} fits / {EPOCHS} epochs (max_iter={EPOCHS}, "
          f"tol=None, random_state={SEED_FIT}); held-out set: {n_test:,} rows from the same "
          "generator. X GB/s = n*d*itemsize / (s/epoch); \"of BW\" against the read bandwidth "
          "with the fit's thread count. worst/best: slowest over fastest of the repeated fits "
          "(well above 1 means the machine was busy during that row). sklearn's SGD is "
          "single-threaded.")
    print(f"total run time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
