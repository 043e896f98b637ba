"""cgd benchmarks: one command, one table.

    python benchmarks/run.py            # full run (markdown table, pasteable into README.md)
    python benchmarks/run.py --quick    # smoke run: every n divided by 10
    python benchmarks/run.py --plain    # plain-text table instead of markdown
    python benchmarks/run.py --no-torch # skip the PyTorch rows even when torch is installed
    python benchmarks/run.py --only W5  # only the workloads whose id starts with W5
    python benchmarks/run.py --loaded   # beside another process keeping one core busy
    python benchmarks/run.py --json F   # also write the figures to F, to compare commits

Workloads (synthetic, seeded; X standard normal, each dataset generated once and shared
by every implementation in the run):

    W1  linear regression, n=200,000, d=100, float64, 5 epochs, y = X @ w + 0.1 * noise
    W2  binary logistic regression, same shape, y = [X @ w + 0.1 * noise > 0]
    W3  MLP classifier, n=60,000 (+10,000 held out), d=784, 10 classes, float32, hidden
        (256, 128), relu, adam, batch 128, 2 epochs; y = argmax of a fixed random teacher
        network (784 -> 64 tanh -> 10) on X, so held-out accuracy means something
    W4  W1 in float32 at n=1,000,000: bytes of X read per second against the machine
    W5  sparse, text-like input (CSR after TF-IDF: rows of unit norm, Zipf-distributed
        column frequencies, labels of a sparse linear teacher):
        W5a n=200,000, 2**18 columns, ~50 non-zeros a row, binary log-loss, 5 epochs:
            cgd at batch 1 / 1 thread (scikit-learn's per-sample SGD) and batch 256
        W5b 60,000 such rows, 20 classes, hinge one-vs-rest at the defaults, 5 epochs
            (scikit-learn makes one pass over the data per class, cgd one in all)
        W5c n=20,000, 50,000 columns at ~1% density, 5 classes, MLPClassifier at its
            defaults ((100,), relu, adam, batch 200), 2 epochs

    S1  small data: scikit-learn's digits (1,347 training images after a stratified 75/25
        split, standardised), whole 20-epoch fits of SGDClassifier at its defaults
    S2  the same data, whole 20-epoch fits of MLPClassifier((128, 64), batch 64)

plus the machine limits, measured here with NumPy in the same process: memory read
bandwidth (summing a large array, on 1 thread and on all threads) and GEMM GFLOP/s
(float32 also on 1 and on 2 BLAS threads, the limit W3's rows are compared with).

cgd is run at batch_size 1 (scikit-learn's per-sample SGD), 64, 256 and 2048, each with
n_jobs 1 and 2, so the effect of the batch and the effect of the second thread can be
told apart (per-sample SGD always runs on one thread; for batches the kernel keeps its
second thread only while it measures it faster: the "busy threads" column shows what
ran). Every estimator uses its defaults otherwise (same learning-rate schedule as scikit-learn; the row label says which).

W3 runs cgd.MLPClassifier at n_jobs 1 and 2 (BLAS held at 1 thread inside the fit, its
own OpenMP threads over fixed 64-row blocks of each batch), scikit-learn's MLPClassifier
as is (NumPy + OpenBLAS on its default threads) and with BLAS limited to 1 thread
(threadpoolctl), and, when torch imports, PyTorch CPU with the same net, batch, optimizer
and initialisation on 1 and on 2 threads (the faster is "the torch peer"). W3 runs last,
so that loading torch cannot affect the other workloads.

Time per epoch is the best of ``--repeats`` fits divided by the number of epochs
(``max_iter=5, tol=None``, so every fit runs exactly 5 epochs, W3 ``max_iter=2, tol=0``;
checked via ``n_iter_``).
"speedup vs sklearn" is scikit-learn's time per epoch (its faster row where there are
two: the MLPs on their default BLAS threads and on one) divided by cgd's: > 1 means cgd is
faster ("vs torch" likewise, against the faster torch row). "X GB/s" is n * d * itemsize
bytes per epoch divided by the time per epoch, and "of BW" that as a fraction of the read
bandwidth measured with as many threads as the fit uses; for W3, "GFLOP/s" is the training
FLOPs per epoch (see mlp_train_flops) over the time per epoch, and "of GEMM" that as a
fraction of NumPy's float32 GEMM rate on as many threads. "busy threads (CPU/wall)": the
OS threads of this process that ran for more than 10% of the best fit's wall time ("?":
not Linux, or a fit under 20 clock ticks), and the process CPU time over the wall time of
that fit: more busy threads than the row's threads, or a CPU/wall above them, shows
threads fighting for the cores (e.g. BLAS threads spinning beside OpenMP ones).
Machines are shared and noisy: read the ratios, not the absolute times.
"""

import argparse
import datetime
import gc
import os
import platform
import sys
import threading
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import cgd  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import SGDClassifier as SkSGDClassifier  # noqa: E402
from sklearn.linear_model import SGDRegressor as SkSGDRegressor  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

EPOCHS = 5
D = 100

# W3: MLP classifier on a random teacher network's labels
D_MLP = 784
HIDDEN = (256, 128)
N_CLASSES = 10
TEACHER_HIDDEN = 64
EPOCHS_MLP = 2
BATCH_MLP = 128
ALPHA_MLP = 1e-4  # scikit-learn's default L2 penalty, kept by every W3 implementation

# W5: text-like sparse input (a bag of words after TF-IDF)
N_W5, D_W5, NNZ_W5 = 200_000, 2 ** 18, 50      # rows, columns, mean non-zeros a row
N_W5_OVR, CLASSES_W5_OVR = 60_000, 20          # the one-vs-rest hinge rows
N_W5_MLP, D_W5_MLP, DENSITY_W5_MLP = 20_000, 50_000, 0.01
CLASSES_W5_MLP = 5
ZIPF_S = 1.1          # column frequency of the r-th most frequent word ~ 1 / r**ZIPF_S
EPOCHS_W5_MLP = 2

# S: small data (scikit-learn's digits), whole fits
EPOCHS_SMALL = 20
REPEATS_SMALL = 15    # fits of a few milliseconds: more of them for a stable best


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


def gemm_gflops(dtype, n=2048, repeats=3, n_threads=None):
    """NumPy's GEMM rate in GFLOP/s, on its BLAS's default threads or on `n_threads`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    with threadpool_limits(n_threads, user_api="blas"):
        np.dot(a, b)  # warm-up
        sec = _best(lambda: np.dot(a, b), repeats)
    return 2.0 * n ** 3 / sec / 1e9


def numpy_blas_threads():
    """Threads NumPy's BLAS uses by default (what scikit-learn's MLP runs on)."""
    for info in threadpool_info():
        if info["user_api"] == "blas" and "numpy" in info["filepath"]:
            return info["num_threads"]
    return max([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] or [1])


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


def make_teacher(n, n_test, d, seed):
    """W3: float32 X standard normal; y = argmax of a fixed random teacher network
    d -> TEACHER_HIDDEN tanh -> N_CLASSES on X (weights N(0, 1/fan_in), no biases), so the
    labels are a smooth nonlinear function of X that a student MLP can learn."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_test, d), dtype=np.float32)
    w1 = (rng.standard_normal((d, TEACHER_HIDDEN)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((TEACHER_HIDDEN, N_CLASSES)) / np.sqrt(TEACHER_HIDDEN)).astype(
        np.float32)
    y = np.argmax(np.tanh(X @ w1) @ w2, axis=1).astype(np.int64)
    return X[:n], y[:n], X[n:], y[n:]


def make_text_csr(n, d, nnz_per_row, seed, dtype=np.float64):
    """A TF-IDF-like CSR matrix: row lengths Poisson(nnz_per_row) (at least 1), columns
    drawn with Zipf frequencies (the r-th most frequent column with probability
    ~ 1 / r**ZIPF_S, ranks scattered over the columns), values log(1 + count) * idf,
    rows scaled to unit L2 norm, as TfidfVectorizer's defaults give."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, d + 1) ** ZIPF_S)
    cdf /= cdf[-1]
    # Frequent words repeat within a row: draw enough words that a row holds about
    # nnz_per_row distinct ones (the ratio measured on a pilot of 2,000 rows).
    pilot = np.searchsorted(cdf, rng.random((2000, nnz_per_row)))
    distinct = np.mean([np.unique(r).size for r in pilot]) / nnz_per_row
    lengths = np.maximum(1, rng.poisson(nnz_per_row / distinct, n))
    rank_to_col = rng.permutation(d)
    cols = rank_to_col[np.searchsorted(cdf, rng.random(int(lengths.sum())))]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    X = sp.csr_matrix((np.ones(cols.size), cols, indptr), shape=(n, d))
    X.sum_duplicates()  # counts of repeated words
    df = np.bincount(X.indices, minlength=d)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    X.data = np.log1p(X.data) * idf[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.csr_matrix(sp.diags(1.0 / norms) @ X)
    X.data = X.data.astype(dtype)
    return X


def sparse_teacher_labels(X, n_classes, seed, teacher_density=0.05):
    """Labels of a sparse linear teacher: a weight on 5% of the columns (N(0, 1)),
    binary = sign of the score above its median, multiclass = argmax of one score per
    class, so that every class occurs and held-out accuracy means something."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    d = X.shape[1]
    k = 1 if n_classes == 2 else n_classes
    W = sp.random(d, k, density=teacher_density, random_state=rng,
                  data_rvs=rng.standard_normal, format="csc")
    Z = np.asarray((X @ W).todense()) + 0.01 * rng.standard_normal((X.shape[0], k))
    if n_classes == 2:
        return (Z[:, 0] > np.median(Z[:, 0])).astype(np.int64)
    return np.argmax(Z, axis=1).astype(np.int64)


def make_w5(n, n_test, d, nnz_per_row, n_classes, seed, dtype=np.float64):
    """W5 data: rows [0, n) train, [n, n + n_test) held out (CSR row slices)."""
    X = make_text_csr(n + n_test, d, nnz_per_row, seed, dtype)
    y = sparse_teacher_labels(X, n_classes, seed + 1)
    return X[:n], y[:n], X[n:], y[n:]


def mlp_train_flops(n, layer_units):
    """FLOPs of one training epoch of an MLP with `layer_units` = (d, h1, ..., out) on n
    rows, counting only the layer products (2 FLOPs per multiply-add); activations, loss
    and optimizer steps are O(n * units) or O(weights) and left out. With
    S = sum_l fan_in_l * fan_out_l over all layers and S1 = the same sum without the
    first layer:

        forward                        2 * n * S
      + backward, weight gradients     2 * n * S      (X_l^T @ delta_l per layer)
      + backward, deltas               2 * n * S1     (delta_l @ W_l^T for layers l >= 1;
                                                       the input's delta is not computed)

    cgd, scikit-learn and PyTorch (X does not require grad) all do exactly these
    products, so one count serves every W3 row."""
    pairs = list(zip(layer_units[:-1], layer_units[1:]))
    s = sum(a * b for a, b in pairs)
    s1 = sum(a * b for a, b in pairs[1:])
    return 2.0 * n * (2 * s + s1)


# --------------------------------------------------------------------------- timing


def quiesce(seconds=0.3):
    """Let idle worker threads go to sleep before a timed row: OpenBLAS's threads spin
    for ~0.1 s after each multi-threaded call (the GEMM measurements, a dataset's X @ w,
    scikit-learn's MLP), and on a 2-core machine that spinning would take a core from the
    first fit of the next row."""
    time.sleep(seconds)


def _thread_cpu_ticks():
    """{thread id: user + system clock ticks} of this process's threads (Linux), or None."""
    try:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[tid] = int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return out
    except OSError:
        return None


def _busy_threads(before, after, wall):
    """OS threads that ran for more than 10% of `wall` seconds between the snapshots, or
    None when not measurable: thread CPU times come in clock ticks (10 ms), too coarse
    for a fit shorter than 20 ticks."""
    hz = os.sysconf("SC_CLK_TCK")
    if before is None or after is None or wall < 20.0 / hz:
        return None
    return sum(1 for tid, t in after.items() if (t - before.get(tid, 0)) / hz > 0.1 * wall)


def _reseed(est, seed):
    """Give a fresh estimator (or a wrapper of one) the random_state `seed`."""
    inner = getattr(est, "est", est)
    if hasattr(inner, "set_params"):
        inner.set_params(random_state=seed)
    else:
        inner.random_state = seed


def time_fit(make, X, y, repeats, epochs=EPOCHS, Xt=None, yt=None):
    """Time `repeats` fresh fits, the i-th with random_state SEED_FIT + i (shuffles and
    initialisations differ, the work per epoch does not), and score each on (Xt, yt).
    Returns the best time per epoch, worst/best, the process CPU time over the wall time
    of the best fit, the OS threads busy in it, the held-out scores of all fits, and the
    last fitted estimator."""
    times, scores, est, best = [], [], None, None
    for i in range(repeats):
        est = make()
        _reseed(est, SEED_FIT + i)
        gc.collect()
        ticks0, c0 = _thread_cpu_ticks(), time.process_time()
        t0 = time.perf_counter()
        est.fit(X, y)
        wall = time.perf_counter() - t0
        cpu, ticks1 = time.process_time() - c0, _thread_cpu_ticks()
        if not times or wall < min(times):
            best = (cpu / wall, _busy_threads(ticks0, ticks1, wall))
        times.append(wall)
        if Xt is not None:
            scores.append(est.score(Xt, yt))
        n_iter = getattr(est, "n_iter_", epochs)
        if int(np.max(n_iter)) != epochs:
            raise RuntimeError(f"{type(est).__name__} ran {n_iter} epochs, expected {epochs}")
    return min(times) / epochs, max(times) / min(times), best[0], best[1], scores, est


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
    X, y, _, _ = make_teacher(512, 0, D_MLP, seed=123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for make in [lambda nj=nj: cgd.MLPClassifier(n_jobs=nj, **mlp_params()) for nj in (1, 2)] + [
                lambda: SkMLPClassifier(**mlp_params())]:
            make().fit(X, y).score(X, y)


# --------------------------------------------------------------------------- workloads

# Each config: (label, library, n_jobs, factory(random_state) -> estimator)
SEED_FIT = 0


def _cgd_rows(cls, name, note, common):
    # Dense input: with n_jobs > 1 every batch of two chunks (33 rows) or more runs on a
    # team of threads that the kernel keeps only while it measures it faster than one
    # thread (the "busy threads" column shows what ran); per-sample SGD on one thread.
    rows = []
    for bs, nj in [(1, 1), (1, 2), (64, 1), (64, 2), (256, 1), (256, 2), (2048, 1),
                   (2048, 2)]:
        label = f"cgd {name} batch_size={bs} n_jobs={nj} ({note})"
        rows.append((label, "cgd", nj,
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


def mlp_params():
    """W3's MLPClassifier parameters: scikit-learn's, shared by cgd and scikit-learn.
    tol=0 and n_iter_no_change > max_iter: every fit runs exactly EPOCHS_MLP epochs (and
    warns that it did not converge)."""
    return dict(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam", alpha=ALPHA_MLP,
                batch_size=BATCH_MLP, learning_rate_init=1e-3, max_iter=EPOCHS_MLP, tol=0.0,
                n_iter_no_change=EPOCHS_MLP + 1, shuffle=True, random_state=SEED_FIT)


def w5_binary_configs():
    """W5 per-sample and mini-batch rows: log-loss on the text-like CSR. At batch 256 the
    defaults (the 'optimal' schedule, one step per batch) end 5 epochs less accurate than
    per-sample SGD; the last row is a mini-batch setting that is not: Adam at a constant
    step of 0.0025 (the best of 0.01, 0.005, 0.0025 and 0.001 on this data)."""
    common = dict(loss="log_loss", max_iter=EPOCHS, tol=None, random_state=SEED_FIT)
    rows = [(f"cgd SGDClassifier log_loss batch_size={bs} n_jobs={nj} (optimal: defaults)",
             "cgd", nj, lambda bs=bs, nj=nj: cgd.SGDClassifier(batch_size=bs, n_jobs=nj,
                                                               **common))
            for bs, nj in [(1, 1), (256, 1), (256, 2)]]
    rows.append(("cgd SGDClassifier log_loss batch_size=256 n_jobs=2 solver='adam' "
                 "learning_rate='constant' eta0=0.0025", "cgd", 2,
                 lambda: cgd.SGDClassifier(batch_size=256, n_jobs=2, solver="adam",
                                           learning_rate="constant", eta0=0.0025, **common)))
    return rows + [("sklearn SGDClassifier log_loss (optimal: defaults)", "sklearn", 1,
                    lambda: SkSGDClassifier(**common))]


def w5_ovr_configs():
    """W5 one-vs-rest rows: 20-class hinge at the defaults. scikit-learn makes one pass
    over the data per class (n_jobs=None: one after another); cgd one pass for all."""
    common = dict(max_iter=EPOCHS, tol=None, random_state=SEED_FIT)
    return [("cgd SGDClassifier hinge, 20 classes one-vs-rest (defaults)", "cgd", 1,
             lambda: cgd.SGDClassifier(n_jobs=1, **common)),
            ("sklearn SGDClassifier hinge, 20 classes one-vs-rest (defaults)", "sklearn", 1,
             lambda: SkSGDClassifier(**common))]


def w5_mlp_params():
    """scikit-learn's MLPClassifier defaults (hidden (100,), relu, adam, batch 200), run
    for exactly EPOCHS_W5_MLP epochs."""
    return dict(max_iter=EPOCHS_W5_MLP, tol=0.0, n_iter_no_change=EPOCHS_W5_MLP + 1,
                random_state=SEED_FIT)


def w5_mlp_configs():
    nb = numpy_blas_threads()
    rows = [(f"cgd MLPClassifier n_jobs={nj} (defaults: (100,), adam, batch 200)", "cgd", nj,
             lambda nj=nj: cgd.MLPClassifier(n_jobs=nj, **w5_mlp_params())) for nj in (1, 2)]
    return rows + [
        (f"sklearn MLPClassifier (defaults; scipy.sparse products, default {nb} BLAS "
         "threads)", "sklearn", nb, lambda: SkMLPClassifier(**w5_mlp_params())),
        ("sklearn MLPClassifier, same, BLAS limited to 1 thread", "sklearn-blas1", 1,
         lambda: BlasLimited(SkMLPClassifier(**w5_mlp_params()), 1)),
    ]


def make_digits():
    """Small data: scikit-learn's digits (1,797 images, 64 pixels, 10 classes), split 75/25
    stratified and standardised on the training part, as the demo does."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), y_tr, scaler.transform(X_te), y_te


def small_linear_configs():
    """Whole 20-epoch fits of SGDClassifier at its defaults (hinge, one-vs-rest over 10
    classes, per-sample): where Python's share of a fit shows."""
    common = dict(max_iter=EPOCHS_SMALL, tol=None, random_state=SEED_FIT)
    return [("cgd SGDClassifier (defaults: hinge, 10 classes one-vs-rest, batch 1)", "cgd", 1,
             lambda: cgd.SGDClassifier(n_jobs=1, **common)),
            ("sklearn SGDClassifier (defaults)", "sklearn", 1,
             lambda: SkSGDClassifier(**common))]


def small_mlp_configs():
    """Whole 20-epoch fits of the demo's MLPClassifier ((128, 64), relu, adam, batch 64)."""
    p = dict(hidden_layer_sizes=(128, 64), batch_size=64, max_iter=EPOCHS_SMALL, tol=0.0,
             n_iter_no_change=EPOCHS_SMALL + 1, random_state=SEED_FIT)
    nb = numpy_blas_threads()
    return [(f"cgd MLPClassifier n_jobs={nj} ((128, 64), adam, batch 64)", "cgd", nj,
             lambda nj=nj: cgd.MLPClassifier(n_jobs=nj, **p)) for nj in (1, 2)] + [
        (f"sklearn MLPClassifier (same; default {nb} BLAS threads)", "sklearn", nb,
         lambda: SkMLPClassifier(**p)),
        ("sklearn MLPClassifier, same, BLAS limited to 1 thread", "sklearn-blas1", 1,
         lambda: BlasLimited(SkMLPClassifier(**p), 1))]


class BlasLimited:
    """An estimator fitted with BLAS limited to `n_threads` (threadpoolctl)."""

    def __init__(self, est, n_threads):
        self.est, self.n_threads = est, n_threads

    def fit(self, X, y):
        with threadpool_limits(self.n_threads, user_api="blas"):
            self.est.fit(X, y)
        self.n_iter_, self.coefs_ = self.est.n_iter_, self.est.coefs_
        return self

    def score(self, X, y):
        return self.est.score(X, y)

    def predict(self, X):
        return self.est.predict(X)


class TorchMLP:
    """W3's MLPClassifier in PyTorch CPU on `n_threads` intra-op threads: the same net
    (Linear-ReLU-...-Linear, softmax cross-entropy), batch, epochs and Adam (lr, betas,
    eps) as mlp_params(), scikit-learn's initialisation (Glorot uniform, bound
    sqrt(6 / (fan_in + fan_out)), weights and biases) and its L2 penalty: scikit-learn adds
    alpha * W / batch_size to each weight gradient and not to biases, which is
    torch.optim.Adam's (coupled) weight_decay = alpha / batch_size on the weights only
    (scikit-learn divides by the short last batch's own size; torch does not: negligible).
    Rows are reshuffled every epoch (torch.randperm) and gathered by index, without a
    DataLoader; float32 throughout."""

    _warmed = set()

    def __init__(self, torch, n_threads, epochs=EPOCHS_MLP, batch_size=BATCH_MLP,
                 random_state=SEED_FIT):
        self.torch, self.n_threads, self.epochs = torch, n_threads, epochs
        self.batch_size, self.random_state = batch_size, random_state
        if n_threads not in TorchMLP._warmed:  # untimed: factories run outside the timing
            TorchMLP._warmed.add(n_threads)
            X, y, _, _ = make_teacher(512, 0, D_MLP, seed=123)
            TorchMLP(torch, n_threads, epochs=1).fit(X, y)

    def fit(self, X, y):
        torch, p = self.torch, mlp_params()
        prev = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)
        try:
            self.classes_, yi = np.unique(y, return_inverse=True)
            g = torch.Generator().manual_seed(self.random_state)
            units = [X.shape[1], *p["hidden_layer_sizes"], len(self.classes_)]
            layers = []
            for fan_in, fan_out in zip(units[:-1], units[1:]):
                lin = torch.nn.Linear(fan_in, fan_out, dtype=torch.float32)
                bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
                with torch.no_grad():
                    lin.weight.uniform_(-bound, bound, generator=g)
                    lin.bias.uniform_(-bound, bound, generator=g)
                layers += [lin, torch.nn.ReLU()]
            net = torch.nn.Sequential(*layers[:-1])
            lins = [m for m in net if isinstance(m, torch.nn.Linear)]
            opt = torch.optim.Adam(
                [{"params": [m.weight for m in lins],
                  "weight_decay": p["alpha"] / self.batch_size},
                 {"params": [m.bias for m in lins], "weight_decay": 0.0}],
                lr=p["learning_rate_init"], betas=(0.9, 0.999), eps=1e-8)
            loss_fn = torch.nn.CrossEntropyLoss()
            Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
            yt = torch.from_numpy(yi.astype(np.int64))
            n, bs = X.shape[0], self.batch_size
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=g)
                for start in range(0, n, bs):
                    idx = perm[start:start + bs]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(Xt[idx]), yt[idx])
                    loss.backward()
                    opt.step()
            self.net_, self.n_iter_ = net, self.epochs
            self.coefs_ = [m.weight.detach().numpy().T for m in lins]
        finally:
            torch.set_num_threads(prev)
        return self

    def predict(self, X):
        with self.torch.no_grad():
            z = self.net_(self.torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
        return self.classes_[z.argmax(1).numpy()]

    def score(self, X, y):
        return float(np.mean(self.predict(X) == y))


def import_torch(skip):
    """(torch or None, why not)."""
    if skip:
        return None, "skipped (--no-torch)"
    try:
        import torch
    except Exception as e:  # not installed, or a broken install: the rows are skipped
        return None, f"not available ({type(e).__name__}: {e})"
    return torch, f"torch {torch.__version__}"


def mlp_configs(torch=None):
    nb = numpy_blas_threads()
    net = "adam, relu, (256, 128), batch 128, alpha=1e-4"
    rows = [(f"cgd MLPClassifier n_jobs={nj} ({net})", "cgd", nj,
             lambda nj=nj: cgd.MLPClassifier(n_jobs=nj, **mlp_params())) for nj in (1, 2)]
    rows += [
        (f"sklearn MLPClassifier ({net}; NumPy + OpenBLAS, default {nb} BLAS threads)",
         "sklearn", nb, lambda: SkMLPClassifier(**mlp_params())),
        ("sklearn MLPClassifier, same, BLAS limited to 1 thread (threadpoolctl)",
         "sklearn-blas1", 1, lambda: BlasLimited(SkMLPClassifier(**mlp_params()), 1)),
    ]
    if torch is not None:
        rows += [(f"PyTorch {torch.__version__} CPU, same net/init/Adam/L2, "
                  f"torch.set_num_threads({k})", "torch", k,
                  lambda k=k: TorchMLP(torch, k)) for k in (1, 2)]
    return rows


def same_score(scores, peer_scores):
    """Compare a row's held-out scores with its peer's, both over fits with the same
    random_states: "same" when the difference of the means is within twice its standard
    error as estimated from the seed-to-seed spread of both, else "better" / "WORSE".
    Two implementations that shuffle with different generators cannot agree to the
    digit; what must hold is that cgd's score is one the peer itself gives with
    another random_state."""
    a, b = np.asarray(scores, float), np.asarray(peer_scores, float)
    diff = a.mean() - b.mean()
    se = np.sqrt((a.var(ddof=1) / a.size if a.size > 1 else 0.0)
                 + (b.var(ddof=1) / b.size if b.size > 1 else 0.0))
    # A floor of one held-out row's worth keeps identical repeats from reading as unequal.
    if abs(diff) <= max(2.0 * se, 1e-12):
        return "same", diff
    return ("better" if diff > 0 else "WORSE"), diff


# Per-sample rows with shuffle=False: cgd and scikit-learn then make the same updates in
# the same order, so the held-out scores must agree to every printed digit (the timed
# rows shuffle with different random generators, and are compared by same_score).
EXACTNESS = {
    "W1": (lambda **kw: cgd.SGDRegressor(batch_size=1, **kw), SkSGDRegressor, {}),
    "W2": (lambda **kw: cgd.SGDClassifier(batch_size=1, **kw), SkSGDClassifier,
           dict(loss="log_loss")),
    "W5a": (lambda **kw: cgd.SGDClassifier(batch_size=1, **kw), SkSGDClassifier,
            dict(loss="log_loss")),
    "W5b": (lambda **kw: cgd.SGDClassifier(**kw), SkSGDClassifier, {}),
}


def _one_ulp_up(X):
    """X with every stored value moved one float step up (a copy)."""
    if hasattr(X, "indptr"):
        X = X.copy()
        X.data = np.nextafter(X.data, np.inf)
        return X
    return np.nextafter(X, np.inf)


def exactness_check(wid, data, score_name):
    """Untimed: fit cgd at batch 1 and scikit-learn with shuffle=False on the workload's
    data; return a line comparing their held-out scores, predictions and weights, with
    the weights' sensitivity to rounding as the yardstick: scikit-learn fitted on X moved
    by one float step. Per-sample SGD with large early steps amplifies rounding
    differences, so on some data two correct implementations that sum a dot product in
    different orders drift apart by as much as that."""
    make_cgd, make_sk, extra = EXACTNESS[wid]
    X, y, Xt, yt = data
    kw = dict(max_iter=EPOCHS, tol=None, shuffle=False, random_state=SEED_FIT, **extra)
    a, b = make_cgd(**kw).fit(X, y), make_sk(**kw).fit(X, y)
    c = make_sk(**kw).fit(_one_ulp_up(X), y)

    def rel(u, v):
        u, v = np.asarray(u.coef_, np.float64), np.asarray(v.coef_, np.float64)
        return np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300)

    same = ""
    if score_name == "accuracy":
        same = f"same prediction on {np.mean(a.predict(Xt) == b.predict(Xt)):.2%} of them; "
    return (f"{wid} exactness (shuffle=False, batch 1, untimed): held-out {score_name} "
            f"cgd {a.score(Xt, yt):.6f}, scikit-learn {b.score(Xt, yt):.6f}; "
            f"{same}max |coef_ difference| / "
            f"max |coef_| = {rel(a, b):.1e} (scikit-learn against itself on X one float "
            f"step up: {rel(c, b):.1e})")


def run_workload(wid, title, configs, data, repeats, bw, score_name, log, epochs=EPOCHS,
                 flops=None, gemm=None):
    """Time every config on `data`. `flops` (per epoch) and `gemm` ({threads: GFLOP/s})
    for compute-bound workloads (W3), else None."""
    X, y, Xt, yt = data
    n, d = X.shape
    # CSR: the bytes an epoch streams are its three arrays.
    x_bytes = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) if hasattr(X, "indptr") \
        else X.nbytes
    results = []
    for label, lib, n_jobs, make in configs:
        log(f"  {wid}: timing {label} ...")
        quiesce()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # W3: max_iter=2 on purpose
            sec, spread, cpu_wall, busy, scores, est = time_fit(make, X, y, repeats, epochs,
                                                                Xt, yt)
        coef = est.coefs_[0] if hasattr(est, "coefs_") else est.coef_
        coef_dtype = np.asarray(coef).dtype
        results.append(dict(wid=wid, title=title, label=label, lib=lib, n_jobs=n_jobs,
                            sec=sec, spread=spread, cpu_wall=cpu_wall, busy=busy,
                            score=float(np.mean(scores)),
                            score_sd=float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                            scores=[float(v) for v in scores], score_name=score_name,
                            gbs=x_bytes / sec / 1e9, bw=bw.get(n_jobs), n=n, d=d,
                            gflops=None if flops is None else flops / sec / 1e9,
                            gemm=None if gemm is None else gemm.get(n_jobs),
                            dtype=X.dtype.name, coef_dtype=coef_dtype.name))
        del est
    # The peer is scikit-learn's faster configuration in this run (MLPs: its default
    # BLAS threads or BLAS held to one thread, whichever was faster).
    peer = sorted((r for r in results if r["lib"] in ("sklearn", "sklearn-blas1")),
                  key=lambda r: r["sec"])[:1]
    if peer:
        peer[0]["label"] += " [the peer: scikit-learn's faster row]" if len(
            [r for r in results if r["lib"].startswith("sklearn")]) > 1 else ""
    peer_sec = peer[0]["sec"] if peer else None
    torch_rows = [r for r in results if r["lib"] == "torch"]
    torch_sec = min(r["sec"] for r in torch_rows) if torch_rows else None
    for r in torch_rows:
        if r["sec"] == torch_sec and len(torch_rows) > 1:
            r["label"] += " [faster of the torch rows: the torch peer]"
    for r in results:
        r["vs_peer"] = (same_score(r["scores"], peer[0]["scores"])
                        if peer and r is not peer[0] else None)
        r["speedup"] = (peer_sec / r["sec"]) if (peer_sec and r["lib"] == "cgd") else None
        r["vs_torch"] = (torch_sec / r["sec"]) if (torch_sec and r["lib"] == "cgd") else None
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


class BusyProcess:
    """Another process spinning on one core (`--loaded`): what a shared machine looks like
    to a fit. A pure-Python loop, not pinned to a core (the OS moves it as it would any
    other process). Killed with its process group on stop, at exit, and on errors."""

    def __init__(self):
        self.proc = None

    def start(self):
        import atexit
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                     start_new_session=True)
        atexit.register(self.stop)
        time.sleep(0.2)  # let it reach the scheduler's run queue

    def stop(self):
        import signal

        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None


def write_json(path, args, argv, results, exactness, bw, g64, g32, g32t, torch_note):
    """Every row's figures and the run's context, for comparing runs between commits."""
    import json
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    keys = ("wid", "title", "label", "lib", "n_jobs", "sec", "spread", "cpu_wall", "busy",
            "score", "score_sd", "scores", "score_name", "vs_peer", "speedup", "vs_torch",
            "gbs", "bw", "n", "d", "gflops", "gemm", "dtype", "coef_dtype")
    rows = []
    for r in results:
        row = {k: r.get(k) for k in keys}
        if row["vs_peer"] is not None:
            row["vs_peer"] = {"verdict": row["vs_peer"][0], "difference": row["vs_peer"][1]}
        rows.append(row)
    doc = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit,
        "command": ["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)],
        "quick": args.quick, "loaded": args.loaded, "repeats": args.repeats,
        "cpus": os.cpu_count(), "cgd": cgd.__version__, "numpy": np.__version__,
        "torch": torch_note,
        "machine": {"read_bandwidth_gbs": {str(k): v for k, v in bw.items()},
                    "gemm_float64_gflops": g64, "gemm_float32_gflops": g32,
                    "gemm_float32_gflops_by_threads": {str(k): v for k, v in g32t.items()}},
        "rows": rows,
        "exactness": exactness,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: every n divided by 10")
    ap.add_argument("--markdown", action="store_true", default=True,
                    help="markdown table (the default)")
    ap.add_argument("--plain", dest="markdown", action="store_false",
                    help="plain-text table instead of markdown")
    ap.add_argument("--repeats", type=int, default=3, help="fits per row; the best counts")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--only", nargs="+", metavar="ID",
                    help="run only the workloads whose id starts with one of these "
                         "(e.g. --only W5 or --only W1 W3)")
    ap.add_argument("--no-exactness", action="store_true",
                    help="skip the untimed shuffle=False comparisons with scikit-learn")
    ap.add_argument("--loaded", action="store_true",
                    help="run the workloads beside another process that keeps one core busy "
                         "(started after the machine limits are measured, stopped before "
                         "they are measured again)")
    ap.add_argument("--json", metavar="FILE",
                    help="also write every row's figures and the machine limits to FILE "
                         "(JSON), for comparing runs between commits")
    ap.add_argument("--no-torch", action="store_true",
                    help="skip W3's PyTorch rows even when torch is installed")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    scale = 10 if args.quick else 1
    n_w1, n_w4, n_test = 200_000 // scale, 1_000_000 // scale, 20_000 // scale
    n_w3, n_test_w3 = 60_000 // scale, 10_000 // scale
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
    gemm_threads = sorted({1, 2, n_bw})

    def measure_gemm32():  # W3's limit: float32 GEMM on as many BLAS threads as the row
        return {k: gemm_gflops(np.float32, n_threads=k) for k in gemm_threads}

    g32t = measure_gemm32()

    # ---- workloads (each dataset generated once, shared by all rows)
    results, exactness = [], []
    torch = torch_note = None
    busy = BusyProcess() if args.loaded else None
    if busy is not None:
        log("--loaded: starting a process that keeps one core busy")
        busy.start()

    def w3_configs():  # torch is imported only now, when the other workloads are done
        nonlocal torch, torch_note
        torch, torch_note = import_torch(args.no_torch)
        log(f"W3 PyTorch: {torch_note}")
        return mlp_configs(torch)

    layer_units = (D_MLP, *HIDDEN, N_CLASSES)
    workloads = [  # id, title, n, n held out, d, dtype, seed, kind, configs, score name
        ("W1", "linear regression", n_w1, n_test, D, np.float64, 1, "regression",
         regressor_configs, "R^2"),
        ("W2", "binary logistic regression", n_w1, n_test, D, np.float64, 2, "binary",
         classifier_configs, "accuracy"),
        ("W4", "linear regression, float32", n_w4, n_test, D, np.float32, 4, "regression",
         regressor_configs, "R^2"),
        ("W5a", "text-like CSR, binary log-loss", N_W5 // scale, n_test, D_W5, np.float64,
         5, "w5_binary", w5_binary_configs, "accuracy"),
        ("W5b", "text-like CSR, 20-class hinge", N_W5_OVR // scale, n_test, D_W5, np.float64,
         6, "w5_ovr", w5_ovr_configs, "accuracy"),
        ("W5c", "TF-IDF-like CSR, MLP, 5 classes", N_W5_MLP // scale, n_test // 4, D_W5_MLP,
         np.float64, 7, "w5_mlp", w5_mlp_configs, "accuracy"),
        ("S1", "small data (digits), linear, whole fits", None, None, 64, np.float64, 0,
         "small", small_linear_configs, "accuracy"),
        ("S2", "small data (digits), MLP, whole fits", None, None, 64, np.float64, 0,
         "small", small_mlp_configs, "accuracy"),
        # W3 runs last (the table is sorted by id): see the module docstring
        ("W3", "MLP classifier, 10 classes", n_w3, n_test_w3, D_MLP, np.float32, 3, "mlp",
         w3_configs, "accuracy"),
    ]
    if args.only:
        workloads = [w for w in workloads if w[0].startswith(tuple(args.only))]
    for wid, title, n, n_held, d, dtype, seed, kind, configs, score_name in workloads:
        if n is not None:
            log(f"{wid} data: n={n}+{n_held} held out, d={d}, {np.dtype(dtype).name}")
        if kind == "small":
            data = make_digits()
            n, n_held = data[0].shape[0], data[2].shape[0]
            extra = dict(epochs=EPOCHS_SMALL, repeats=max(args.repeats, REPEATS_SMALL))
        elif kind == "mlp":
            data = make_teacher(n, n_held, d, seed=seed)
            extra = dict(epochs=EPOCHS_MLP, flops=mlp_train_flops(n, layer_units), gemm=g32t)
        elif kind.startswith("w5"):
            nnz, k = {"w5_binary": (NNZ_W5, 2), "w5_ovr": (NNZ_W5, CLASSES_W5_OVR),
                      "w5_mlp": (int(DENSITY_W5_MLP * d), CLASSES_W5_MLP)}[kind]
            data = make_w5(n, n_held, d, nnz, k, seed=seed, dtype=dtype)
            log(f"{wid} CSR: {data[0].nnz / n:.1f} non-zeros a row on average")
            extra = dict(epochs=EPOCHS_W5_MLP) if kind == "w5_mlp" else {}
        else:
            data = make_linear(n, n_held, d, dtype, seed=seed,
                               classification=kind == "binary")
            extra = {}
        extra.setdefault("repeats", args.repeats)
        results += run_workload(wid, title, configs(), data, bw=bw, score_name=score_name,
                                log=log, **extra)
        if wid in EXACTNESS and not args.no_exactness:
            log(f"  {wid}: exactness check (shuffle=False)")
            exactness.append(exactness_check(wid, data, score_name))
        del data
        gc.collect()
    if busy is not None:
        busy.stop()
    results.sort(key=lambda r: r["wid"])  # stable: rows keep their order within a workload

    # ---- bandwidth again: on a shared machine the best of both measurements is the limit
    log("machine limits: read bandwidth and float32 GEMM again")
    bw_end = measure_bandwidth()
    bw = {k: max(v, bw_end[k]) for k, v in bw.items()}
    bw1, bwN = bw[1], bw[n_bw]
    g32_end = measure_gemm32()
    g32t = {k: max(v, g32_end[k]) for k, v in g32t.items()}
    for r in results:
        r["bw"] = bw.get(r["n_jobs"])
        if r["gflops"] is not None:
            r["gemm"] = g32t.get(r["n_jobs"])

    # ---- table
    header = ["id", "workload / implementation", "n", "dtype", "threads", "s/epoch",
              "worst/best", "busy threads (CPU/wall)", "held-out score (mean ± sd over the fits)",
              "score vs peer (difference of means)", "speedup vs sklearn",
              "speedup vs torch", "X GB/s", "of BW", "GFLOP/s", "of GEMM"]
    rows = []

    def ratio(x):
        return "-" if x is None else f"{x:.2f}x"

    def vs_peer(v):
        return "(peer)" if v is None else f"{v[0]} ({v[1]:+.4f})"

    for r in results:
        label = r["label"]
        if r["dtype"] != r["coef_dtype"]:
            label += f" [coef_ {r['coef_dtype']}]"
        mlp = r["gflops"] is not None
        rows.append([
            r["wid"], f"{r['title']}: {label}", f"{r['n']:,}", r["dtype"], r["n_jobs"],
            f"{r['sec']:.4f}", f"{r['spread']:.2f}",
            f"{'?' if r['busy'] is None else r['busy']} ({r['cpu_wall']:.2f})",
            f"{r['score_name']} {r['score']:.4f} ± {r['score_sd']:.4f}", vs_peer(r["vs_peer"]),
            ratio(r["speedup"]), ratio(r["vs_torch"]),
            "-" if mlp else f"{r['gbs']:.2f}",
            "-" if mlp or not r["bw"] else f"{r['gbs'] / r['bw']:.1%}",
            f"{r['gflops']:.1f}" if mlp else "-",
            f"{r['gflops'] / r['gemm']:.1%}" if mlp and r["gemm"] else "-",
        ])
    def machine_row(label, dtype, threads, gbs="", of_bw="", gflops="", of_gemm=""):
        cells = ["M", f"machine: {label}", "", dtype, threads]
        return cells + [""] * (len(header) - len(cells) - 4) + [gbs, of_bw, gflops, of_gemm]

    rows.append(machine_row(f"memory read bandwidth, 1 thread (np.sum, {bw_nbytes >> 20} MiB "
                            "float64, best of 2x10)", "float64", 1, f"{bw1:.2f}", "100%"))
    rows.append(machine_row(f"memory read bandwidth, {n_bw} threads (np.sum over equal parts "
                            "in threads, best of 2x10)", "float64", n_bw, f"{bwN:.2f}", "100%"))
    rows.append(machine_row("GEMM float64, np.dot 2048x2048 (best of 3), default BLAS threads: "
                            f"{g64:.1f} GFLOP/s", "float64", "BLAS", gflops=f"{g64:.1f}"))
    rows.append(machine_row("GEMM float32, np.dot 2048x2048 (best of 3), default BLAS threads: "
                            f"{g32:.1f} GFLOP/s", "float32", "BLAS", gflops=f"{g32:.1f}"))
    for k in gemm_threads:
        rows.append(machine_row(
            f"GEMM float32, np.dot 2048x2048 on {k} BLAS thread{'s' if k > 1 else ''} "
            f"(threadpoolctl; best of 2x3): {g32t[k]:.1f} GFLOP/s", "float32", k,
            gflops=f"{g32t[k]:.1f}", of_gemm="100%"))
    print(fmt_table(header, rows, md))
    print()
    print(f"s/epoch: best of {args.repeats} fits / {EPOCHS} epochs (max_iter={EPOCHS}, "
          f"tol=None); held-out set: {n_test:,} rows from the same "
          "generator. X GB/s = n*d*itemsize / (s/epoch); \"of BW\" against the read bandwidth "
          "with the fit's thread count. worst/best: slowest over fastest of the repeated fits "
          "(well above 1 means the machine was busy during that row). sklearn's SGD is "
          "single-threaded.")
    print()
    print("held-out score: mean and standard deviation over the row's fits, the i-th fit "
          f"with random_state={SEED_FIT}+i in every row. score vs peer: 'same' when the "
          "difference of the means is within twice its standard error estimated from both "
          "rows' seed-to-seed spread (the implementations shuffle with different random "
          "generators, so only that can be asked), else 'better' or 'WORSE'.")
    for line in exactness:
        print()
        print(line)
    if any(r["wid"].startswith("S") for r in results):
        print()
        print(f"S1, S2: whole fits of {EPOCHS_SMALL} epochs (tol=None / tol=0), best of "
              f"{max(args.repeats, REPEATS_SMALL)} fits; s/epoch is the fit's time / "
              f"{EPOCHS_SMALL}, Python's share of a fit included.")
    if any(r["wid"] == "W3" for r in results):
        print()
        print(f"W3: {n_w3:,} rows + {n_test_w3:,} held out, d={D_MLP}, labels from a random "
            f"784-64(tanh)-10 teacher; every fit runs max_iter={EPOCHS_MLP} epochs (tol=0), "
            f"s/epoch = best of {args.repeats} fits / {EPOCHS_MLP}. GFLOP/s = training FLOPs "
            f"per epoch ({mlp_train_flops(n_w3, layer_units) / 1e9:.2f} GFLOP: forward 2nS + "
            "weight gradients 2nS + deltas of layers >= 1 2nS1, S = sum of fan_in*fan_out) / "
            "(s/epoch); 'of GEMM' against NumPy's float32 GEMM on the row's thread count "
            "(best of the start and end measurements). cgd holds BLAS at 1 thread and runs "
            "n_jobs OpenMP threads; sklearn runs on NumPy's BLAS threads; PyTorch: "
            f"{torch_note}. 'speedup vs torch' is against the faster torch row.")
    if args.loaded:
        print()
        print("--loaded: every workload ran beside another process spinning on one core.")
    if args.json:
        write_json(args.json, args, argv, results, exactness, bw, g64, g32, g32t, torch_note)
        print(f"JSON: {args.json}")
    print(f"total run time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
