"""``python -m cgd demo``: it runs, its numbers agree with each other and with what
they claim, and ``--plot`` writes a picture (or says clearly why it cannot)."""

import os
import re
import sys
import textwrap
import warnings

import pytest

from _helpers import run_subprocess

TIMEOUT = 300  # seconds; the demo takes a few on an idle 2-core machine

ROW = re.compile(r"^\s+(scikit-learn|cgd)\s+(\d+)\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)$")
RATIO = re.compile(r"time per epoch, cgd / scikit-learn: ([\d.]+) \(fit times: best of (\d+)\)")
SHUFFLE = re.compile(r"with shuffle=False both stop after (\d+) epochs with the same weights "
                     r"\(largest coef_ difference ([\d.e+-]+)\)")


def _env(tmp_path):
    env = dict(os.environ)
    # Neither the user's matplotlibrc nor a shared font cache: the figure's size must
    # come from the demo alone, and parallel test runs must not race on the cache.
    env["MPLCONFIGDIR"] = str(tmp_path / "mplconfig")
    return env


def _run(args, tmp_path):
    return run_subprocess([sys.executable, "-P", *args], TIMEOUT, cwd=tmp_path,
                          env=_env(tmp_path))


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    res = _run(["-m", "cgd", "demo"], tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _sections(text):
    """The demo's numbered sections: {1: text, 2: text, ...}."""
    parts = re.split(r"^(\d)\) ", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _digits(s):
    """Half a unit of the last printed digit of the number s."""
    return 0.5 * 10.0 ** -(len(s.split(".")[1]) if "." in s else 0)


def _check_timing_table(section):
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.groups()[1:]
    assert set(rows) == {"scikit-learn", "cgd"}, section
    per_epoch = {}
    for name, (epochs, fit_ms, epoch_ms, acc) in rows.items():
        n = int(epochs)
        assert n >= 1 and 0.5 < float(acc) <= 1.0
        # time per epoch = fit time / epochs, to the rounding of the printed numbers
        assert abs(float(epoch_ms) - float(fit_ms) / n) <= _digits(fit_ms) / n + _digits(epoch_ms)
        per_epoch[name] = epoch_ms
    ratio = RATIO.search(section)
    assert ratio, section
    assert 1 <= int(ratio.group(2)) <= 5
    # the ratio equals the quotient of the printed times per epoch, to rounding
    c, s = (float(per_epoch[k]) for k in ("cgd", "scikit-learn"))
    hc, hs = _digits(per_epoch["cgd"]), _digits(per_epoch["scikit-learn"])
    lo, hi = (c - hc) / (s + hs), (c + hc) / max(s - hs, 1e-12)
    r = float(ratio.group(1))
    assert lo - _digits(ratio.group(1)) <= r <= hi + _digits(ratio.group(1)), (r, c, s)
    return {name: int(v[0]) for name, v in rows.items()}


def test_demo_runs_and_its_timings_add_up(demo_output):
    sec = _sections(demo_output)
    assert sorted(sec) == [1, 2, 3, 4], demo_output

    # 1) ten epochs, a loss that goes down, a total and a per-epoch time that agree
    losses = [float(m.group(1)) for m in re.finditer(r"^\s+\d+\s+([\d.]+)\s+[\d.]+$", sec[1],
                                                     flags=re.M)]
    assert len(losses) == 10 and losses[-1] < losses[0]
    m = re.search(r"10 epochs in ([\d.]+) ms \(([\d.]+) ms per epoch\)", sec[1])
    assert m and abs(float(m.group(2)) - float(m.group(1)) / 10) <= (
        _digits(m.group(1)) / 10 + _digits(m.group(2)))

    # 2) and 4): the drop-in comparisons
    epochs = _check_timing_table(sec[2])
    mlp_epochs = _check_timing_table(sec[4])
    assert mlp_epochs == {"scikit-learn": 30, "cgd": 30}  # max_iter=30, tol never met
    assert "bit-identical coef_: True" in sec[3]
    assert "bit-identical coefs_ (batch_size=256, 3 epochs): True" in sec[4]
    diff = float(re.search(r"largest weight difference ([\d.e+-]+)", sec[4]).group(1))
    assert diff < 1e-10

    # When the epoch counts differ the demo says why; check its claim independently.
    if epochs["scikit-learn"] != epochs["cgd"]:
        m = SHUFFLE.search(" ".join(sec[2].split()))
        assert m, sec[2]
        assert float(m.group(2)) < 1e-9
        n_iter = _fit_digits_unshuffled()
        assert n_iter == (int(m.group(1)),) * 2


def _fit_digits_unshuffled():
    """n_iter_ of scikit-learn's and cgd's default SGDClassifier pipeline, shuffle=False,
    on the demo's split of the digits."""
    from sklearn import linear_model as sk
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import cgd

    X, y = load_digits(return_X_y=True)
    X_tr, _, y_tr, _ = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for cls in (sk.SGDClassifier, cgd.SGDClassifier):
            pipe = make_pipeline(StandardScaler(), cls(random_state=0, shuffle=False))
            out.append(pipe.fit(X_tr, y_tr)[-1].n_iter_)
    return tuple(out)


def test_demo_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install cgd[plot])")
    import matplotlib.image

    from cgd.__main__ import FIG_DPI, FIG_INCHES

    path = tmp_path / "curves.png"
    res = _run(["-m", "cgd", "demo", "--plot", str(path)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Loss curves written to {path}" in res.stdout
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (round(FIG_INCHES[1] * FIG_DPI), round(FIG_INCHES[0] * FIG_DPI))
    assert img.std() > 0.05  # something was drawn


BLOCK_MATPLOTLIB = textwrap.dedent("""
    import runpy, sys

    class NoMatplotlib:
        # As if matplotlib were not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoMatplotlib())
    sys.argv = ["cgd"] + sys.argv[1:]
    runpy.run_module("cgd", run_name="__main__", alter_sys=True)
""")


def test_demo_plot_without_matplotlib_says_how_to_install_before_running(tmp_path):
    path = tmp_path / "curves.png"
    res = _run(["-c", BLOCK_MATPLOTLIB, "demo", "--plot", str(path)], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'pip install "cgd[plot]"' in res.stderr and "matplotlib" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""  # refused up front: the demo did not start
    assert not path.exists()


def test_demo_plot_refuses_a_bad_file_name_before_running(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install cgd[plot])")
    from cgd.__main__ import main

    for bad, why in [(tmp_path / "curves.notanimage", "must end in one of"),
                     (tmp_path / "missing" / "curves.png", "does not exist")]:
        assert main(["demo", "--plot", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert why in err and out == "", (out, err)  # refused before the demo started
        assert not bad.exists()
