"""Fits in processes made by fork, and under joblib's process and thread backends.

GNU OpenMP never resets its pool of worker threads in a forked child, so a child's
first parallel region of several threads waits forever for threads that do not exist.
cgd ends the forking thread's pool just before ``os.fork()``; a child whose parent's
pool could not be ended runs its fits on one thread, with one warning. Every scenario
runs in its own process group with a timeout, so that a hang fails its test (and is
killed) instead of stalling the whole run. Each parent first fits on two threads, so
that its OpenMP pool holds a worker when it forks.
"""

import json
import os
import sys
import textwrap

import pytest

from cgd import _threads

from _helpers import requires_openmp, run_subprocess

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

# Seconds a scenario may take: each takes 2-12 s (the most on a loaded machine), a
# hang takes forever.
TIMEOUT = 60

# Shared by every script: data, estimators large enough to run on two threads, and the
# count of cgd's fork warning. A linear batch of 2048 rows x 100 features is above the
# work from which the linear kernel threads a batch (2**17 multiply-adds); an MLP batch
# of 256 rows is four 64-row blocks, which run side by side.
PRELUDE = textwrap.dedent("""
    import json, os, sys, warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
    warnings.filterwarnings("ignore", message=".*Maximum iterations")  # few epochs on purpose
    import numpy as np
    import cgd
    from cgd import _threads

    rng = np.random.RandomState(0)
    X = rng.standard_normal((4096, 100))
    y = (X[:, 0] + X[:, 1] + 0.5 * rng.standard_normal(4096) > 0).astype(int)

    def make(kind, n_jobs=2, **kw):
        if kind == "linear":
            return cgd.SGDClassifier(loss="log_loss", batch_size=2048, max_iter=3, tol=None,
                                     random_state=0, n_jobs=n_jobs, **kw)
        if kind == "mlp":
            return cgd.MLPClassifier(hidden_layer_sizes=(32,), batch_size=256, max_iter=3,
                                     tol=0.0, random_state=0, n_jobs=n_jobs, **kw)
        if kind == "mlp_lbfgs":
            return cgd.MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", max_iter=5,
                                     random_state=0, n_jobs=n_jobs, **kw)
        raise ValueError(kind)

    def weights(model):
        # float64 lists: JSON writes each float's shortest repr, which reads back exactly.
        if hasattr(model, "coefs_"):
            return [w.tolist() for w in model.coefs_ + model.intercepts_]
        return [model.coef_.tolist(), model.intercept_.tolist()]

    def fit_and_report(kind):
        # fit, predict, partial_fit and fit again (each asks for two threads), counting
        # cgd's fork warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            model = make(kind).fit(X, y)
            proba = model.predict_proba(X[:600]).tolist()
            partial = (weights(make(kind).partial_fit(X, y, classes=[0, 1]))
                       if kind != "mlp_lbfgs" else None)
            model = make(kind).fit(X, y)
        n_warn = sum(issubclass(w.category, _threads.ForkedProcessThreadsWarning)
                     for w in caught)
        msgs = [str(w.message) for w in caught
                if issubclass(w.category, _threads.ForkedProcessThreadsWarning)]
        return {"weights": weights(model), "proba": proba, "partial": partial, "n_warn": n_warn,
                "msgs": msgs, "n_threads": _threads.effective_n_threads(2),
                "pid": os.getpid()}
""")


def _run(body, timeout=TIMEOUT):
    """Run PRELUDE + body in a new process group; return the JSON it prints last.

    On timeout the whole group (the script and the processes it forked) is killed and
    the test fails with what the script printed so far."""
    script = PRELUDE + textwrap.dedent(body)
    res = run_subprocess([sys.executable, "-P", "-c", script], timeout)
    out, err = res.stdout, res.stderr
    assert res.returncode == 0, f"exit code {res.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


KINDS = ["linear", "mlp", "mlp_lbfgs"]


@pytest.fixture(scope="module")
def fork_pool_results():
    """Each estimator fitted in a parent on two threads, then in the workers of a
    fork-context multiprocessing pool, then in the parent again (one process for all,
    to keep the tests short: most of a script's time is importing scikit-learn)."""
    return _run(f"""
        import multiprocessing as mp
        parent = {{kind: fit_and_report(kind) for kind in {KINDS!r}}}
        with mp.get_context("fork").Pool(2) as pool:
            children = pool.map(fit_and_report, {KINDS!r} * 2)
        again = {{kind: fit_and_report(kind) for kind in {KINDS!r}}}
        print(json.dumps({{"parent": parent, "children": children, "again": again}}))
    """)


@requires_openmp
@pytest.mark.parametrize("kind", KINDS)
def test_fork_pool_after_threaded_fit_gives_parents_weights(fork_pool_results, kind):
    parent = fork_pool_results["parent"][kind]
    children = [c for i, c in enumerate(fork_pool_results["children"])
                if KINDS[i % len(KINDS)] == kind]
    assert parent["n_threads"] == 2
    for proc in children + [fork_pool_results["again"][kind]]:
        assert proc["weights"] == parent["weights"]  # the same floats, bit for bit
        assert proc["proba"] == parent["proba"]
        assert proc["partial"] == parent["partial"]
    for child in children:
        assert child["pid"] != parent["pid"]
        # The parent's threads were released before the fork: the child keeps n_jobs
        # and has nothing to warn about.
        assert child["n_threads"] == 2
        assert child["n_warn"] == 0, child["msgs"]


@pytest.fixture(scope="module")
def unreleased_results():
    """Processes forked without the parent's OpenMP pool being ended first: as with a
    runtime that cannot end it (older than GCC 9), then through fork() called from C,
    which runs none of os.fork's hooks. Each child inherits the pool with its worker
    missing: it must fit on one thread (two would hang) and warn once, and a process
    it forks in turn must not hang either."""
    return _run("""
        import ctypes
        import multiprocessing as mp
        from cgd import _openmp_helpers

        def in_forked_process(fork, target, *args):
            # Run target(*args) in a child made by fork(); return what it returns.
            r, w = os.pipe()
            pid = fork()
            if pid == 0:
                code = 1
                try:
                    os.close(r)
                    os.write(w, json.dumps(target(*args)).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            chunks = []
            while chunk := os.read(r, 1 << 20):
                chunks.append(chunk)
            os.close(r)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            return json.loads(b"".join(chunks))

        def child_and_grandchild(fork, kind):
            return [fit_and_report(kind), in_forked_process(os.fork, fit_and_report, kind)]

        parent = {kind: fit_and_report(kind) for kind in ("linear", "mlp")}
        # PyDLL: the GIL stays held across the call, as os.fork holds it.
        from_c = in_forked_process(ctypes.PyDLL(None).fork, child_and_grandchild,
                                   None, "linear")
        _openmp_helpers.release_threads = lambda: -2   # as a runtime that cannot
        no_release = in_forked_process(os.fork, child_and_grandchild, None, "mlp")
        print(json.dumps({"parent": parent, "from_c": from_c, "no_release": no_release}))
    """)


@requires_openmp
@pytest.mark.skipif(_threads._FORK_HANDLED_BY_RUNTIME or not sys.platform.startswith("linux"),
                    reason="only GNU OpenMP keeps its threads' pool in a forked child; "
                           "fork() from C through ctypes (Linux)")
@pytest.mark.parametrize("case, kind, reason", [
    ("from_c", "linear", "fork() called from C"),
    ("no_release", "mlp", "older than GCC 9"),
])
def test_child_of_unreleased_pool_fits_on_one_thread_and_warns_once(
        unreleased_results, case, kind, reason):
    parent = unreleased_results["parent"][kind]
    assert parent["n_warn"] == 0
    child, grandchild = unreleased_results[case]
    for proc in (child, grandchild):
        assert proc["pid"] != parent["pid"]
        assert proc["weights"] == parent["weights"]
        assert proc["proba"] == parent["proba"]
        assert proc["partial"] == parent["partial"]
        assert proc["n_threads"] == 1
        assert proc["n_warn"] == 1, proc["msgs"]  # four calls that use threads: one warning
        msg = proc["msgs"][0]
        for words in ("forked", "GNU OpenMP", "one thread", reason, "loky", "spawn",
                      "forkserver"):
            assert words in msg
    assert grandchild["pid"] != child["pid"]


@pytest.fixture(scope="module")
def grid_results():
    """GridSearchCV run sequentially on one thread, then in two workers under each
    joblib backend with two threads per fit, in one process that first fitted on two
    threads (joblib's "multiprocessing" backend forks it)."""
    return _run("""
        import joblib
        from sklearn.model_selection import GridSearchCV
        make("linear").fit(X, y)
        make("mlp").fit(X, y)
        # Log-loss scores differ between candidates (accuracies tie on this data), so
        # the comparison sees every candidate's score and which one wins.
        grids = {"linear": {"alpha": [1e-4, 1e-1], "eta0": [0.01, 0.1]},
                 "mlp": {"alpha": [1e-4, 1e-1], "learning_rate_init": [1e-3, 1e-2]}}
        def search(kind, n_jobs, threads):
            est = (make(kind, threads, learning_rate="constant") if kind == "linear"
                   else make(kind, threads))
            gs = GridSearchCV(est, grids[kind], cv=2, scoring="neg_log_loss",
                              n_jobs=n_jobs).fit(X, y)
            return {"best_params": gs.best_params_, "best_score": gs.best_score_,
                    "scores": gs.cv_results_["mean_test_score"].tolist()}
        out = {kind: {"sequential": search(kind, 1, 1)} for kind in grids}
        for backend in ("threading", "multiprocessing", "loky"):
            with joblib.parallel_config(backend=backend):
                for kind in grids:
                    out[kind][backend] = search(kind, 2, 2)
            print("done", backend, flush=True)
        print(json.dumps(out))
    """)


@requires_openmp
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("backend", ["loky", "threading", "multiprocessing"])
def test_grid_search_same_result_under_each_joblib_backend(grid_results, backend, kind):
    ref, got = grid_results[kind]["sequential"], grid_results[kind][backend]
    assert got["best_params"] == ref["best_params"]
    assert got["best_score"] == ref["best_score"]
    assert got["scores"] == ref["scores"]


def test_fork_inside_another_threads_blas_limit_restores_blas_in_the_child():
    """A fork while another thread is inside a fit (BLAS held to 1 thread for it): the
    child, where that thread does not exist, must neither keep BLAS at 1 thread for good
    nor wait on the parent's bookkeeping; its first fit restores the original limit."""
    res = _run("""
        import threading
        from threadpoolctl import threadpool_info

        def blas_threads():
            return sorted(m["num_threads"] for m in threadpool_info()
                          if m["user_api"] == "blas")

        before = blas_threads()
        inside, release = threading.Event(), threading.Event()

        def hold():
            with _threads.blas_limited(1):
                inside.set()
                release.wait()

        t = threading.Thread(target=hold)
        t.start()
        inside.wait()
        during = blas_threads()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            make("mlp").fit(X[:512], y[:512])
            os.write(w, json.dumps({"child_after_fit": blas_threads(),
                                    "depth": _threads._LIMIT_STATE["depth"]}).encode())
            os._exit(0)
        os.close(w)
        child = json.loads(os.read(r, 1 << 16))
        os.waitpid(pid, 0)
        release.set()
        t.join()
        print(json.dumps(dict(child, before=before, during=during, after=blas_threads())))
    """)
    assert all(n == 1 for n in res["during"]) and max(res["before"]) > 1, res
    assert res["child_after_fit"] == res["before"], res
    assert res["depth"] == 0 and res["after"] == res["before"], res
