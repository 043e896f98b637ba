"""Results do not depend on the number of threads; n_jobs means what it says."""

import os
import sys
import textwrap

import numpy as np
import pytest

import cgd
from cgd import _openmp_helpers
from cgd import linear_model
from cgd._threads import effective_n_threads

from _helpers import requires_openmp, run_subprocess

_SAVED_MIN_WORK = linear_model.PARALLEL_MIN_WORK


def setup_module():
    # Small test problems would otherwise run on one thread (see PARALLEL_MIN_WORK):
    # force every multi-chunk batch through the parallel path.
    linear_model.PARALLEL_MIN_WORK = 0


def teardown_module():
    linear_model.PARALLEL_MIN_WORK = _SAVED_MIN_WORK


def _data(dtype, n=3000, d=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y.astype(dtype)


ESTIMATORS = [
    lambda **kw: cgd.SGDRegressor(learning_rate="constant", eta0=0.01, **kw),
    lambda **kw: cgd.SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05, **kw),
    lambda **kw: cgd.SGDClassifier(loss="log_loss", multiclass="multinomial",
                                   learning_rate="constant", eta0=0.05, **kw),
    lambda **kw: cgd.SGDClassifier(loss="hinge", solver="adam", learning_rate="constant",
                                   eta0=0.01, **kw),
]


def _target(i, y):
    if i == 0:
        return y
    if i == 1:
        return (y > 0).astype(int)
    return np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("i", range(len(ESTIMATORS)))
def test_n_jobs_gives_bit_identical_weights(i, dtype):
    X, y = _data(dtype)
    yt = _target(i, y)
    fits = [ESTIMATORS[i](batch_size=256, n_jobs=j, max_iter=4, tol=None, random_state=0,
                          penalty="elasticnet").fit(X, yt) for j in (1, 2, 3)]
    for f in fits[1:]:
        assert np.array_equal(f.coef_, fits[0].coef_)
        assert np.array_equal(f.intercept_, fits[0].intercept_)
        assert f.loss_curve_ == fits[0].loss_curve_


@requires_openmp
def test_omp_num_threads_in_subprocess_gives_same_weights(tmp_path):
    X, y = _data(np.float64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    script = textwrap.dedent(f"""
        import numpy as np, cgd, cgd.linear_model
        cgd.linear_model.PARALLEL_MIN_WORK = 0
        from cgd._threads import effective_n_threads
        # OMP_NUM_THREADS alone decides, even above the number of cores.
        got = {{k: effective_n_threads(k) for k in (None, -1, -2, -3, -9, 1, 2, 7)}}
        assert got == {{None: 3, -1: 3, -2: 2, -3: 1, -9: 1, 1: 1, 2: 2, 7: 7}}, got
        X = np.load({str(tmp_path / 'X.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})
        est = cgd.SGDRegressor(batch_size=256, max_iter=4, tol=None, random_state=0,
                               learning_rate="constant", eta0=0.01).fit(X, y)
        np.save({str(tmp_path / 'coef3.npy')!r}, est.coef_)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="3")
    res = run_subprocess([sys.executable, "-P", "-c", script], 120, env=env)
    assert res.returncode == 0, res.stderr
    ref = cgd.SGDRegressor(batch_size=256, max_iter=4, tol=None, random_state=0, n_jobs=1,
                           learning_rate="constant", eta0=0.01).fit(X, y)
    assert np.array_equal(np.load(tmp_path / "coef3.npy"), ref.coef_)


@requires_openmp
def test_n_jobs_identical_at_default_parallel_threshold():
    """A batch large enough to be spread over threads with the shipped threshold."""
    X, y = _data(np.float64, n=6000, d=_SAVED_MIN_WORK // 2048 + 1)
    assert 2048 * X.shape[1] >= _SAVED_MIN_WORK
    saved, linear_model.PARALLEL_MIN_WORK = linear_model.PARALLEL_MIN_WORK, _SAVED_MIN_WORK
    try:
        fits = [cgd.SGDRegressor(batch_size=2048, n_jobs=j, max_iter=3, tol=None, solver="adam",
                                 learning_rate="constant", random_state=0).fit(X, y)
                for j in (1, 2)]
    finally:
        linear_model.PARALLEL_MIN_WORK = saved
    assert np.array_equal(fits[0].coef_, fits[1].coef_)


def test_effective_n_threads_explicit_counts():
    with pytest.raises(ValueError, match="n_jobs"):
        effective_n_threads(0)
    if not _openmp_helpers.openmp_enabled():
        # A serial build has one thread whatever is asked.
        assert {effective_n_threads(k) for k in (None, -1, -2, 1, 2, 5)} == {1}
        return
    for k in (1, 2, 5, 17):
        assert effective_n_threads(k) == k  # exactly k, even above the number of cores


@requires_openmp
def test_effective_n_threads_follows_the_machine_and_threadpoolctl():
    """Without OMP_NUM_THREADS, None and -1 mean every core the process may use: the
    CPUs of its affinity mask (what OpenMP starts from), but no more than the physical
    cores joblib counts (it also reads cgroup CPU quotas); threadpoolctl's OpenMP limit
    lowers that; -k leaves k - 1 of them free."""
    script = textwrap.dedent("""
        import os, joblib
        from threadpoolctl import threadpool_limits
        from cgd._threads import effective_n_threads
        cores = min(len(os.sched_getaffinity(0)), joblib.cpu_count(only_physical_cores=True))
        got = {k: effective_n_threads(k) for k in (None, -1, -2, -100, 3)}
        want = {None: cores, -1: cores, -2: max(1, cores - 1), -100: 1, 3: 3}
        assert got == want, (got, want)
        with threadpool_limits(limits=1, user_api="openmp"):
            got = {k: effective_n_threads(k) for k in (None, -1, 3)}
            assert got == {None: 1, -1: 1, 3: 3}, got
        print("ok")
    """)
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no os.sched_getaffinity on this platform to compare with")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    res = run_subprocess([sys.executable, "-P", "-c", script], 120, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_n_jobs_zero_is_rejected_before_training():
    X, y = _data(np.float64, n=50)
    with pytest.raises(ValueError, match="n_jobs"):
        cgd.SGDRegressor(n_jobs=0).fit(X, y)


from hypothesis import given, settings, strategies as st  # noqa: E402


@requires_openmp
@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 300), d=st.integers(1, 17), batch_size=st.integers(1, 400),
       multinomial=st.booleans(), solver=st.sampled_from(["sgd", "adam"]))
def test_thread_independence_for_any_shape(n, d, batch_size, multinomial, solver):
    """Chunk boundaries depend on the batch size only: any shape, any thread count."""
    rng = np.random.default_rng(n * 1000 + d)
    X = rng.standard_normal((n, d))
    if multinomial:
        y = np.arange(n) % 3
        make = lambda j: cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", n_jobs=j,
                                           batch_size=batch_size, solver=solver, max_iter=2,
                                           tol=None, learning_rate="constant", random_state=0)
    else:
        y = rng.standard_normal(n)
        make = lambda j: cgd.SGDRegressor(n_jobs=j, batch_size=batch_size, solver=solver,
                                          max_iter=2, tol=None, learning_rate="constant",
                                          random_state=0)
    a, b = make(1).fit(X, y), make(2).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)


# ------------------------------------------------------------ wide models
# The per-chunk gradients of a batch are summed over the parameters in blocks of 2048
# (REDUCE_BLOCK in src/_linear.pyx), the blocks spread over the threads once there are
# at least two of them and P * chunks >= 65536; below that one thread sums them all.
# The models here have P > 2048 parameters and batches of 1024 rows (32 chunks), at or
# above the shipped threshold of multiply-adds per batch, so with n_jobs > 1 both the
# chunk gradients and their reduction run on several threads.
WIDE = {
    # name: (outputs K, features d) -> P = K * (d + 1)
    "regression": (1, 2100),   # P = 2101: two reduction blocks, the second of 53
    "multinomial": (5, 500),   # P = 2505
}


def _wide_data(kind, dtype=np.float64):
    K, d = WIDE[kind]
    rng = np.random.default_rng(11)
    n = 2048
    X = rng.standard_normal((n, d))
    sw = rng.uniform(0.5, 2.0, n)
    if kind == "regression":
        y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    else:
        y = np.argmax(X @ rng.standard_normal((d, K)), axis=1)
    return X.astype(dtype), y, sw.astype(dtype)


def _wide_fit(kind, X, y, sw, n_jobs, max_iter=2):
    kw = dict(batch_size=1024, max_iter=max_iter, tol=None, shuffle=False, alpha=1e-3,
              learning_rate="constant", eta0=0.1, n_jobs=n_jobs)
    if kind == "regression":
        est = cgd.SGDRegressor(**kw)
    else:
        est = cgd.SGDClassifier(loss="log_loss", multiclass="multinomial", **kw)
    return est.fit(X, y, sample_weight=sw)


def _wide_reference(kind, X, y, sw, max_iter=2, batch_size=1024, eta=0.1, alpha=1e-3):
    """NumPy: mini-batch SGD, w <- w - eta * ((1/m) sum_i s_i dl_i/dz x_i + alpha w),
    intercepts unpenalised, rows in storage order."""
    K, d = WIDE[kind]
    W, b = np.zeros((K, d)), np.zeros(K)
    for _ in range(max_iter):
        for s in range(0, len(y), batch_size):
            Xb, yb, sb = X[s:s + batch_size], y[s:s + batch_size], sw[s:s + batch_size]
            Z = Xb @ W.T + b
            if kind == "regression":
                D = Z - yb[:, None]                        # squared error: z - y
            else:
                P = np.exp(Z - Z.max(axis=1, keepdims=True))
                D = P / P.sum(axis=1, keepdims=True)       # softmax cross-entropy:
                D[np.arange(len(yb)), yb] -= 1.0           # p - onehot(y)
            D *= sb[:, None]
            W = W - eta * (D.T @ Xb / len(yb) + alpha * W)
            b = b - eta * D.mean(axis=0)
    return W, b


@pytest.mark.parametrize("kind", sorted(WIDE))
def test_wide_model_matches_numpy_reference(kind):
    X, y, sw = _wide_data(kind)
    K, d = WIDE[kind]
    assert 1024 * K * d >= _SAVED_MIN_WORK  # threaded at the shipped threshold too
    est = _wide_fit(kind, X, y, sw, n_jobs=2)
    W, b = _wide_reference(kind, X, y, sw)
    scale = np.max(np.abs(W))
    assert scale > 0.01  # the four steps moved the weights well away from zero
    np.testing.assert_allclose(np.reshape(est.coef_, (K, d)), W, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(est.intercept_, b, rtol=0, atol=1e-10 * scale)


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", sorted(WIDE))
def test_wide_model_threaded_reduction_is_bit_identical(kind, dtype):
    X, y, sw = _wide_data(kind, dtype)
    saved, linear_model.PARALLEL_MIN_WORK = linear_model.PARALLEL_MIN_WORK, _SAVED_MIN_WORK
    try:
        fits = [_wide_fit(kind, X, y, sw, n_jobs=j) for j in (1, 2, 3)]
    finally:
        linear_model.PARALLEL_MIN_WORK = saved
    for f in fits[1:]:
        assert f.coef_.dtype == dtype
        assert np.array_equal(f.coef_, fits[0].coef_)
        assert np.array_equal(f.intercept_, fits[0].intercept_)
        assert f.loss_curve_ == fits[0].loss_curve_


# ------------------------------------------------------------ the epoch's team
# A dense epoch with n_jobs > 1 runs in one parallel region: each thread computes its
# share of a batch's fixed chunks, the master takes the chunks a helper has not begun
# when it is done with its own and computes the ones a helper holds for too long (a late
# helper's result is dropped), and the kernel measures whether the team beats one
# thread, dropping to one thread for the rest of the epoch when it does not. None of
# this may change a bit.
# _linear.set_team_window(0) makes the kernel switch between the team and one thread
# every two batches; a huge window keeps the team for whole epochs;
# _linear.set_takeover_eager(True) makes the master take every chunk a helper has not
# begun and take over the ones it has, as soon as it waits.
from cgd import _linear  # noqa: E402

TEAM_ESTIMATORS = {
    "regressor-averaged-elasticnet": lambda **kw: cgd.SGDRegressor(
        learning_rate="invscaling", eta0=0.01, penalty="elasticnet", average=3, **kw),
    "log_loss": lambda **kw: cgd.SGDClassifier(loss="log_loss", **kw),
    "multinomial": lambda **kw: cgd.SGDClassifier(
        loss="log_loss", multiclass="multinomial", learning_rate="constant", eta0=0.05, **kw),
    "ovr-hinge-adam": lambda **kw: cgd.SGDClassifier(
        loss="hinge", solver="adam", learning_rate="constant", eta0=0.01, **kw),
}


class _TeamLog:
    """Record what the kernel measured in each epoch (config["team_rates"]: rows per
    second of the team, of one thread, whether the team was on at the end, whether the
    master took over chunks that a helper held too long)."""

    def __init__(self, monkeypatch):
        self.rates = []
        kernel = _linear.linear_epoch

        def logged(*args):
            out = kernel(*args)
            self.rates.append(args[19].get("team_rates"))
            return out

        monkeypatch.setattr(linear_model._linear, "linear_epoch", logged)


@requires_openmp
@pytest.mark.parametrize("window, eager", [(0.0, False), (1e9, False), (1e9, True)])
@pytest.mark.parametrize("batch_size", [1, 33, 64, 256])
@pytest.mark.parametrize("name", sorted(TEAM_ESTIMATORS))
def test_team_gives_bit_identical_results(name, batch_size, window, eager, monkeypatch):
    X, y = _data(np.float64, n=2000, d=30)
    yt = {"log_loss": (y > 0).astype(int)}.get(
        name, y if name.startswith("regressor") else _target(2, y))
    saved = _linear.set_team_window(window)
    saved_eager = _linear.set_takeover_eager(eager)
    try:
        log = _TeamLog(monkeypatch)
        fits = [TEAM_ESTIMATORS[name](batch_size=batch_size, n_jobs=j, max_iter=3, tol=None,
                                      random_state=0).fit(X, yt) for j in (1, 2, 3)]
    finally:
        _linear.set_team_window(saved)
        _linear.set_takeover_eager(saved_eager)
    # The team really ran: with n_jobs > 1 its rate was measured (window 0), or it was
    # still on at the end of every epoch (a window longer than the fit), unless the
    # machine was so busy that a helper held chunks too long and the master dropped it
    # (the fit's next epochs then start on one thread: the back-off).
    # (Not at batch 1: one-row batches have nothing to share.)
    team_epochs = log.rates[3:]
    assert len(team_epochs) == 6 and all(r is not None for r in team_epochs)
    if batch_size == 1:
        assert not any(r[2] for r in team_epochs)
    elif window == 0.0:
        assert all(r[0] > 0 or r[3] for r in team_epochs)
    else:
        for fit in (team_epochs[:3], team_epochs[3:]):
            backed_off = [any(r[3] for r in fit[:e]) for e in range(3)]
            assert all(r[2] or r[3] or b for r, b in zip(fit, backed_off))
        assert not eager or not any(r[3] for r in team_epochs)  # eager keeps the team
    assert all(r is None or not r[2] for r in log.rates[:3])  # n_jobs=1: no team
    for f in fits[1:]:
        assert np.array_equal(f.coef_, fits[0].coef_)
        assert np.array_equal(f.intercept_, fits[0].intercept_)
        assert f.loss_curve_ == fits[0].loss_curve_  # coef_: averaged ones if average


@requires_openmp
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_team_switching_on_wide_model_is_bit_identical(dtype):
    """The team's reduction blocks (P > 2048) while the kernel switches between the team
    and one thread every two batches."""
    X, y, sw = _wide_data("multinomial", dtype)
    kw = dict(batch_size=256, max_iter=2, tol=None, shuffle=True, random_state=0, alpha=1e-3,
              learning_rate="constant", eta0=0.1, loss="log_loss", multiclass="multinomial")
    saved = _linear.set_team_window(0.0)
    saved_eager = _linear.set_takeover_eager(True)
    try:
        fits = [cgd.SGDClassifier(n_jobs=j, **kw).fit(X, y, sample_weight=sw) for j in (1, 2, 3)]
    finally:
        _linear.set_team_window(saved)
        _linear.set_takeover_eager(saved_eager)
    for f in fits[1:]:
        assert np.array_equal(f.coef_, fits[0].coef_)
        assert np.array_equal(f.intercept_, fits[0].intercept_)


@requires_openmp
def test_team_stats_account_for_the_shared_batches(monkeypatch):
    """The profiling counters (set_team_stats) see the team's batches, and recording
    them changes no bit."""
    X, y = _data(np.float64, n=4000, d=30)
    saved = _linear.set_team_window(1e9)
    log = []
    kernel = _linear.linear_epoch

    def logged(*args):
        out = kernel(*args)
        log.append(args[19].get("team_stats"))
        return out

    monkeypatch.setattr(linear_model._linear, "linear_epoch", logged)
    kw = dict(batch_size=256, n_jobs=2, max_iter=2, tol=None, random_state=0,
              learning_rate="constant", eta0=0.01)
    try:
        plain = cgd.SGDRegressor(**kw).fit(X, y)
        saved_stats = _linear.set_team_stats(True)
        try:
            profiled = cgd.SGDRegressor(**kw).fit(X, y)
        finally:
            _linear.set_team_stats(saved_stats)
    finally:
        _linear.set_team_window(saved)
    assert log[:2] == [None, None]
    n_batches = -(-4000 // 256)
    for st in log[2:]:
        assert 0 < st["shared_batches"] <= n_batches  # (the last batch may be one chunk)
        assert st["master_busy"] > 0 and len(st["helper_busy"]) == 1
        assert st["takeovers"] >= 0
    assert np.array_equal(plain.coef_, profiled.coef_)
    assert plain.loss_curve_ == profiled.loss_curve_


@requires_openmp
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("n, batch_size", [(2000, 64), (2000, 300), (1985, 64)])
def test_team_gathered_targets_give_the_same_bits(mode, n, batch_size, monkeypatch):
    """The epoch's targets and weights in visiting order are gathered by the master and
    a helper, half each (mode 1), or by the master alone before the epoch (0), or by the
    master in two steps, the second when the epoch reaches the second half (2: what
    happens when the helper has not begun), or the second half never (3: as when the
    helper that claimed it is held up all epoch; its chunks read y and sample_weight
    where they are): every way and thread count, the same bits. 1985 rows at batch 64
    end on a one-row batch (the per-sample step: not split)."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, 20))
    y = X @ rng.standard_normal(20) + 0.1 * rng.standard_normal(n)
    sw = rng.uniform(0.2, 3.0, n)
    kw = dict(batch_size=batch_size, max_iter=3, tol=None, learning_rate="constant",
              eta0=0.01, random_state=0)
    saved = _linear.set_team_window(1e9)
    saved_split = _linear.set_gather_split(mode)
    try:
        log = _TeamLog(monkeypatch)
        fits = [cgd.SGDRegressor(n_jobs=j, **kw).fit(X, y, sample_weight=sw) for j in (2, 3)]
    finally:
        _linear.set_team_window(saved)
        _linear.set_gather_split(saved_split)
    # The team was on (unless a held-up helper was dropped on a busy machine).
    assert all(r[2] or r[3] for r in log.rates[:1])
    ref = cgd.SGDRegressor(n_jobs=1, **kw).fit(X, y, sample_weight=sw)
    for f in fits:
        assert np.array_equal(f.coef_, ref.coef_)
        assert np.array_equal(f.intercept_, ref.intercept_)
        assert f.loss_curve_ == ref.loss_curve_


def test_gather_split_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        _linear.set_gather_split(4)


# The CPU-share rule of the linear team (a busy machine: the master on its CPU for too
# little of a window), forced with _linear.set_cpu_rule: a share above 1 and a window of 0
# make it fire at the first batch; a short-epoch length of 1e9 s drops the team at once,
# 0 makes the master time itself alone first, and the gain decides who wins that timing
# (0: the team always, 1e300: never). Run in a subprocess with a timeout: a helper that
# is dismissed sleeps until the master says the epoch is over, so a mistake there would
# hang rather than fail.
_CPU_RULE_SCRIPT = r"""
import json, sys
import numpy as np
import cgd
from cgd import _linear, linear_model

linear_model.PARALLEL_MIN_WORK = 0
mode, batch_size = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(3)
X = rng.standard_normal((2000, 30))
y = X @ rng.standard_normal(30) + 0.1 * rng.standard_normal(2000)
log = []
kernel = _linear.linear_epoch


def logged(*args):
    out = kernel(*args)
    c = args[19]
    st = c.get("team_stats") or {}
    log.append([c.get("team_backoff"), bool(c["team_rates"][2]), st.get("cpu_dropped"),
                st.get("cpu_probes")])
    return out


linear_model._linear.linear_epoch = logged
_linear.set_team_stats(True)
_linear.set_team_window(1e9)  # (the rule alone decides: no timing windows end)
_linear.set_cpu_rule(*{"drop": (2.0, 0.0, 1e300, 1e9), "probe_lost": (2.0, 0.0, 1e300, 0.0),
                       "probe_won": (2.0, 0.0, 0.0, 0.0)}[mode])
out = {}
for n_jobs in (1, 2, 3):
    log.clear()
    est = cgd.SGDRegressor(batch_size=batch_size, n_jobs=n_jobs, max_iter=4, tol=None,
                           random_state=0, learning_rate="constant", eta0=0.01,
                           penalty="elasticnet").fit(X, y)
    out[n_jobs] = dict(coef=est.coef_.tolist(), intercept=est.intercept_.tolist(),
                       curve=est.loss_curve_, log=list(log))
print(json.dumps(out))
"""


@requires_openmp
@pytest.mark.parametrize("mode", ["drop", "probe_lost", "probe_won"])
@pytest.mark.parametrize("batch_size", [64, 256])
def test_cpu_share_rule_drops_or_keeps_the_team_with_the_same_bits(mode, batch_size):
    """A master off its CPU too often: in a short epoch the team leaves at once; in a
    longer one the master times itself alone and the team leaves if it was not faster
    (probe_lost) or stays (probe_won). A team that left makes the fit's next epoch run
    on one thread, the one after on the team again, which leaves again and backs off
    for 2 epochs: (epochs to skip, skips after the next drop) goes (1, 2), (0, 2),
    (2, 4), (1, 4). Whoever computes the chunks, the bits are those of one thread."""
    import json

    from cgd import _linear

    if _linear.thread_cpu_time() < 0:
        pytest.skip("no thread CPU clock here: the CPU-share rule is off")
    r = run_subprocess([sys.executable, "-c", _CPU_RULE_SCRIPT, mode, str(batch_size)],
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = {int(k): v for k, v in json.loads(r.stdout).items()}
    for n_jobs in (2, 3):
        assert out[n_jobs]["coef"] == out[1]["coef"]
        assert out[n_jobs]["intercept"] == out[1]["intercept"]
        assert out[n_jobs]["curve"] == out[1]["curve"]
        log = out[n_jobs]["log"]
        if mode == "probe_won":
            # the team stays (every probe won): no back-off, several probes an epoch
            assert [e[0] for e in log] == [[0, 1]] * 4
            assert all(e[2] is False and e[3] >= 2 for e in log)
        else:
            assert [e[0] for e in log] == [[1, 2], [0, 2], [2, 4], [1, 4]]
            team = [log[0], log[2]]  # the epochs that had a team
            assert all(e[2] is True and not e[1] for e in team)
            assert all(e[3] == (0 if mode == "drop" else 1) for e in team)
            assert log[1][2] is False and log[3][2] is False  # one thread: nothing to drop
    assert all(e[0] is None or e[0] == [0, 1] for e in out[1]["log"])  # n_jobs=1: no team


def test_thread_cpu_time_advances_with_work():
    """The clock the CPU-share rule reads: the calling thread's CPU time, which grows
    with its work (or -1 where it is not read, and the rule is off)."""
    from cgd import _linear

    t0 = _linear.thread_cpu_time()
    if t0 < 0:
        pytest.skip("no thread CPU clock here")
    x = 0
    for i in range(300000):
        x += i * i
    assert _linear.thread_cpu_time() > t0
