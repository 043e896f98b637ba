"""Scale-out: cgd's estimators under Dask, and out-of-core partial_fit over a np.memmap.

dask-ml's ``Incremental`` feeds the blocks of a Dask array to ``partial_fit`` one after
the other, as a chain of tasks that ships the model to whichever worker holds the next
block; ``ParallelPostFit`` predicts block by block on the workers. The cluster runs in a
subprocess (a LocalCluster of two worker processes can hang; the whole process group is
killed after a timeout); the test process computes the in-memory references and compares
bit for bit.
"""

import hashlib
import json
import pickle
import sys
import textwrap
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning

import cgd
from cgd import _openmp_helpers, linear_model

from _helpers import requires_openmp, run_subprocess

CLASSES = [0, 1, 2]
BLOCK = 250  # rows per Dask block (and per in-memory partial_fit call)
BIG_BLOCK = 4096  # rows per block of the threaded data set

# Estimators streamed through Incremental: every optimizer's state (momentum, Adam and
# Adagrad moments, averaging, the L1 penalty ledger, the MLP's step counter and learning
# rate) must travel with the pickled model from one worker to the next.
SPECS = {
    "sgd_clf": ("SGDClassifier", {"random_state": 0}, "clf"),
    "sgd_clf_adam": ("SGDClassifier",
                     {"loss": "log_loss", "multiclass": "multinomial", "solver": "adam",
                      "batch_size": 32, "learning_rate": "constant", "eta0": 0.01,
                      "random_state": 0}, "clf"),
    "sgd_clf_adagrad_l1": ("SGDClassifier",
                           {"loss": "log_loss", "penalty": "l1", "solver": "adagrad",
                            "batch_size": 8, "learning_rate": "constant", "eta0": 0.05,
                            "random_state": 0}, "clf"),
    "sgd_reg_nesterov_avg": ("SGDRegressor",
                             {"batch_size": 16, "momentum": 0.9, "nesterovs_momentum": True,
                              "average": 300, "random_state": 0}, "reg"),
    "mlp_clf_adam": ("MLPClassifier", {"hidden_layer_sizes": (16,), "random_state": 0},
                     "clf"),
    "mlp_reg_sgd": ("MLPRegressor",
                    {"hidden_layer_sizes": (8,), "solver": "sgd", "momentum": 0.9,
                     "learning_rate": "invscaling", "learning_rate_init": 0.01,
                     "random_state": 0}, "reg"),
}

# Fitted on the cluster with n_jobs=1 and n_jobs=2. Batches large enough to be spread
# over threads: 2048 rows x 100 features is above the linear kernel's 2**17
# multiply-adds; 128 rows are two of the MLP's 64-row blocks.
THREAD_SPECS = {
    "sgd_reg_batch2048": ("SGDRegressor",
                          {"batch_size": 2048, "solver": "adam", "learning_rate": "constant",
                           "eta0": 0.01, "random_state": 0}, "big"),
    "mlp_clf_batch128": ("MLPClassifier",
                         {"hidden_layer_sizes": (32,), "batch_size": 128, "random_state": 0},
                         "clf"),
}


def _make(spec, **extra):
    name, params, _ = spec
    return getattr(cgd, name)(**params, **extra)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2000, 20))
    score = X @ rng.standard_normal(20)
    y_clf = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    y_reg = score + 0.1 * rng.standard_normal(2000)
    Xb = rng.standard_normal((3 * BIG_BLOCK, 100))
    yb = Xb @ rng.standard_normal(100) + 0.1 * rng.standard_normal(3 * BIG_BLOCK)
    return {"X": X, "y_clf": y_clf, "y_reg": y_reg, "Xb": Xb, "yb": yb,
            "X_test": rng.standard_normal((1000, 20))}


def _arrays_for(kind, data):
    if kind == "big":
        return data["Xb"], data["yb"], BIG_BLOCK
    return data["X"], data["y_" + kind], BLOCK


def _partial_fit_blocks(est, X, y, block):
    kw = {"classes": CLASSES} if is_classifier(est) else {}
    for s in range(0, X.shape[0], block):
        est.partial_fit(X[s:s + block], y[s:s + block], **kw)
    return est


def _weights(est):
    """Every fitted weight array of a linear model or an MLP."""
    if hasattr(est, "coefs_"):
        return [*est.coefs_, *est.intercepts_]
    return [np.asarray(est.coef_), np.asarray(est.intercept_)]


def _assert_same_weights(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        assert np.array_equal(g, r), f"max |diff| {np.max(np.abs(g - r))}"


# ------------------------------------------------------------------ the cluster run

CLUSTER_SCRIPT = textwrap.dedent(r"""
    import json, logging, multiprocessing, os, pickle, sys
    import numpy as np
    import dask, dask.array as da
    from distributed import Client, LocalCluster, get_task_stream
    from dask_ml.wrappers import Incremental, ParallelPostFit
    import cgd

    out = sys.argv[1]
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    CLASSES = cfg["classes"]


    def probe():
        # Runs in a worker before any fit there: its environment, the threads cgd
        # would use, and the native (non-Python) threads that fits actually start
        # (GNU OpenMP keeps its pool threads alive between parallel regions).
        import threading
        import numpy as np
        import cgd
        from cgd._threads import effective_n_threads

        def native_threads():
            if not os.path.isdir("/proc/self/task"):  # Linux only; None elsewhere
                return None
            counts = []
            for _ in range(10):
                counts.append(len(os.listdir("/proc/self/task")) - threading.active_count())
                if len(counts) > 1 and counts[-1] == counts[-2]:
                    break
            return counts[-1]

        rng = np.random.default_rng(1)
        X = rng.standard_normal((4096, 100))
        y = X[:, 0].copy()
        counts = {"start": native_threads()}
        for n_jobs in (None, 1, 2):
            cgd.SGDRegressor(batch_size=2048, n_jobs=n_jobs, max_iter=2, tol=None).fit(X, y)
            counts[str(n_jobs)] = native_threads()
        return {"env": {k: os.environ.get(k) for k in
                        ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
                "effective_none": effective_n_threads(None),
                "effective_2": effective_n_threads(2),
                "native_threads": counts}


    def start_cluster(n_workers):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               local_directory=out)
        return Client(cluster, set_as_default=False)


    def pinned(client, workers, A, chunk):
        # Block i lives on worker i % 2, so that the chain of partial_fit tasks follows
        # the data and the model crosses between processes at every block.
        parts = [A[s:s + chunk] for s in range(0, A.shape[0], chunk)]
        futures = [None] * len(parts)
        for w in (0, 1):
            mine = list(range(w, len(parts), 2))
            for i, f in zip(mine, client.scatter([parts[i] for i in mine],
                                                 workers=[workers[w]])):
                futures[i] = f
        return da.concatenate([da.from_delayed(f, p.shape, p.dtype)
                               for f, p in zip(futures, parts)])


    def save(name, est):
        arrays = ([*est.coefs_, *est.intercepts_] if hasattr(est, "coefs_")
                  else [np.asarray(est.coef_), np.asarray(est.intercept_)])
        np.savez(os.path.join(out, name + ".npz"), *arrays)


    saved_env = dict(os.environ)
    result = {"chains": {}}
    client = start_cluster(2)
    workers = sorted(client.scheduler_info()["workers"])
    result["probe"] = list(client.run(probe).values())

    data = {k: np.load(os.path.join(out, k + ".npy")) for k in
            ("X", "y_clf", "y_reg", "Xb", "yb", "X_test")}
    dX = pinned(client, workers, data["X"], cfg["block"])
    dask_data = {
        "clf": (dX, pinned(client, workers, data["y_clf"], cfg["block"])),
        "reg": (dX, pinned(client, workers, data["y_reg"], cfg["block"])),
        "big": (pinned(client, workers, data["Xb"], cfg["big_block"]),
                pinned(client, workers, data["yb"], cfg["big_block"])),
    }

    with client.as_current():
        for name, (cls, params, kind), extra in (
                [(n, s, {}) for n, s in cfg["specs"].items()]
                + [(f"{n}_jobs{j}", s, {"n_jobs": j})
                   for n, s in cfg["thread_specs"].items() for j in (1, 2)]):
            est = getattr(cgd, cls)(**params, **extra)
            dX_fit, dy_fit = dask_data[kind]
            kw = {"classes": CLASSES} if kind == "clf" else {}
            with get_task_stream() as ts:
                inc = Incremental(est, shuffle_blocks=False).fit(dX_fit, dy_fit, **kw)
            chain = sorted((t["key"][1], workers.index(t["worker"])) for t in ts.data
                           if str(t["key"][0]).startswith("fit-") and t["key"][1] >= 0)
            result["chains"][name] = [w for _, w in chain]
            save(name, inc.estimator_)

        dX_test = da.from_array(data["X_test"], chunks=(300, -1))
        for name in cfg["post_fit"]:
            with open(os.path.join(out, name + ".pkl"), "rb") as f:
                ppf = ParallelPostFit(pickle.load(f))
            np.save(os.path.join(out, name + "_predict.npy"), ppf.predict(dX_test).compute())
            np.save(os.path.join(out, name + "_proba.npy"),
                    ppf.predict_proba(dX_test).compute())

    # The nanny copied Dask's worker variables (OMP_NUM_THREADS=1, ...) into this
    # process's environment, where they would override the configuration below.
    os.environ.clear()
    os.environ.update(saved_env)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": 2}):
        client2 = start_cluster(1)
    result["probe_pre_spawn_2"] = list(client2.run(probe).values())

    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
    # Closing the clusters cleanly takes seconds: end the worker processes instead.
    for child in multiprocessing.active_children():
        child.kill()
        child.join()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")

POST_FIT = {
    "post_sgd_log": lambda: cgd.SGDClassifier(loss="log_loss", random_state=0),
    "post_mlp": lambda: cgd.MLPClassifier(hidden_layer_sizes=(16,), max_iter=30,
                                          random_state=0),
}


def _run_cluster_script(out, timeout=150):
    proc = run_subprocess([sys.executable, "-P", "-c", CLUSTER_SCRIPT, str(out)], timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    with open(out / "result.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("dask_ml")
    pytest.importorskip("distributed")
    out = tmp_path_factory.mktemp("dask")
    data = _data()
    for k, v in data.items():
        np.save(out / f"{k}.npy", v)
    fitted = {}
    for name, make in POST_FIT.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a few epochs suffice
            fitted[name] = make().fit(data["X"], data["y_clf"])
        with open(out / f"{name}.pkl", "wb") as f:
            pickle.dump(fitted[name], f)
    with open(out / "config.json", "w") as f:
        json.dump({"classes": CLASSES, "block": BLOCK, "big_block": BIG_BLOCK,
                   "specs": SPECS, "thread_specs": THREAD_SPECS,
                   "post_fit": list(POST_FIT)}, f)
    result = _run_cluster_script(out)
    return {"dir": out, "data": data, "fitted": fitted, **result}


def _loaded(cluster, name):
    with np.load(cluster["dir"] / f"{name}.npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


@pytest.mark.parametrize("name", list(SPECS))
def test_incremental_equals_in_memory_partial_fit(cluster, name):
    X, y, block = _arrays_for(SPECS[name][2], cluster["data"])
    ref = _partial_fit_blocks(_make(SPECS[name]), X, y, block)
    _assert_same_weights(_loaded(cluster, name), _weights(ref))
    # The model really travelled: each block's partial_fit ran where the block lives.
    chain = cluster["chains"][name]
    assert len(chain) == X.shape[0] // block
    assert set(chain) == {0, 1}


def test_workers_get_one_openmp_thread_unless_n_jobs_says_otherwise(cluster):
    probes = cluster["probe"]
    assert len(probes) == 2
    for p in probes:
        # Dask's nanny sets these in every worker process.
        assert p["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                            "OPENBLAS_NUM_THREADS": "1"}
        assert p["effective_none"] == 1
        assert p["effective_2"] == (2 if _openmp_helpers.openmp_enabled() else 1)
        t = p["native_threads"]
        if _openmp_helpers.openmp_enabled() and t["start"] is not None:
            # n_jobs=None and n_jobs=1 start no thread; n_jobs=2 starts OpenMP's second.
            assert t["None"] == t["start"] and t["1"] == t["start"], t
            assert t["2"] > t["start"], t


def test_pre_spawn_environ_gives_workers_more_threads(cluster):
    (p,) = cluster["probe_pre_spawn_2"]
    assert p["env"]["OMP_NUM_THREADS"] == "2"
    assert p["effective_none"] == (2 if _openmp_helpers.openmp_enabled() else 1)


@requires_openmp
@pytest.mark.parametrize("name", list(THREAD_SPECS))
def test_incremental_n_jobs_does_not_change_weights(cluster, name):
    spec = THREAD_SPECS[name]
    X, y, block = _arrays_for(spec[2], cluster["data"])
    if spec[0].startswith("MLP"):
        assert spec[1]["batch_size"] > 64  # more than one of the MLP's 64-row blocks
    else:
        assert spec[1]["batch_size"] * X.shape[1] >= linear_model.PARALLEL_MIN_WORK
    ref = _partial_fit_blocks(_make(spec, n_jobs=1), X, y, block)
    for n_jobs in (1, 2):
        _assert_same_weights(_loaded(cluster, f"{name}_jobs{n_jobs}"), _weights(ref))


@pytest.mark.parametrize("name", list(POST_FIT))
def test_parallel_post_fit_predicts_as_in_memory(cluster, name):
    est, X_test = cluster["fitted"][name], cluster["data"]["X_test"]
    pred = np.load(cluster["dir"] / f"{name}_predict.npy")
    proba = np.load(cluster["dir"] / f"{name}_proba.npy")
    expected_proba = est.predict_proba(X_test)
    assert proba.dtype == expected_proba.dtype
    assert np.array_equal(proba, expected_proba)
    assert np.array_equal(pred, est.predict(X_test))
    assert len(np.unique(pred)) == len(CLASSES)  # a fitted model, not a constant


# ------------------------------------------------------------------ without a cluster


@pytest.mark.parametrize("name", list(SPECS))
def test_pickle_between_partial_fit_calls_keeps_optimizer_state(name):
    """What a worker-to-worker transfer does to the model, in one process."""
    data = _data()
    X, y, block = _arrays_for(SPECS[name][2], data)
    ref = _partial_fit_blocks(_make(SPECS[name]), X, y, block)
    est = _make(SPECS[name])
    kw = {"classes": CLASSES} if is_classifier(est) else {}
    for s in range(0, X.shape[0], block):
        est = pickle.loads(pickle.dumps(est.partial_fit(X[s:s + block], y[s:s + block], **kw)))
    _assert_same_weights(_weights(est), _weights(ref))
    assert est.t_ == ref.t_


def _write_memmap(path, X):
    mm = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    del mm
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


OUT_OF_CORE = {
    "sgd_reg": lambda: cgd.SGDRegressor(batch_size=32, solver="adam", learning_rate="constant",
                                        eta0=0.01, random_state=0),
    "sgd_clf": lambda: cgd.SGDClassifier(random_state=0),
    "mlp_clf": lambda: cgd.MLPClassifier(hidden_layer_sizes=(16,), random_state=0),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(OUT_OF_CORE))
def test_partial_fit_over_read_only_memmap(tmp_path, name, dtype):
    data = _data(seed=1)
    X = data["X"].astype(dtype)
    y = data["y_reg" if name == "sgd_reg" else "y_clf"]
    path = tmp_path / "X.bin"
    X_mm = _write_memmap(path, X)
    np.save(tmp_path / "y.npy", y)
    y_mm = np.load(tmp_path / "y.npy", mmap_mode="r")
    before = _digest(path)
    assert not X_mm.flags.writeable and not y_mm.flags.writeable

    from_disk = _partial_fit_blocks(OUT_OF_CORE[name](), X_mm, y_mm, BLOCK)
    in_memory = _partial_fit_blocks(OUT_OF_CORE[name](), X, y, BLOCK)
    _assert_same_weights(_weights(from_disk), _weights(in_memory))
    assert _weights(from_disk)[0].dtype == dtype
    assert _digest(path) == before


@pytest.mark.parametrize("name", list(OUT_OF_CORE))
def test_partial_fit_reads_a_memmap_block_in_place(tmp_path, name):
    """No copy of a C-contiguous block in the fit dtype: the fit's peak allocation stays
    well below the block's size, while a strided view of the same rows (which has to be
    copied) shows up in the same measurement."""
    rng = np.random.default_rng(2)
    n, d = 40_000, 50
    X = rng.standard_normal((n, d))
    y = (X[:, 0] > 0).astype(int) if name != "sgd_reg" else X[:, 0].copy()
    X_mm = _write_memmap(tmp_path / "X.bin", X)
    before = _digest(tmp_path / "X.bin")
    half = n // 2

    def peak(X_block, y_block):
        est = OUT_OF_CORE[name]()
        kw = {"classes": [0, 1]} if is_classifier(est) else {}
        tracemalloc.start()
        try:
            est.partial_fit(X_block, y_block, **kw)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    block = X_mm[:half]
    assert block.flags.c_contiguous and not block.flags.writeable
    in_place = peak(block, y[:half])
    strided = peak(X_mm[::2], y[::2])
    assert strided >= block.nbytes  # the measurement sees a copy of X
    assert in_place < block.nbytes / 4, (in_place, block.nbytes)
    assert _digest(tmp_path / "X.bin") == before
