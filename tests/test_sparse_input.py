"""Sparse X whose index arrays are malformed (edited after construction, or built with
check=False) gives a ValueError at every entry point of every estimator, never a crash.

scipy validates a matrix when it is built but not after its arrays change; its own
conversions and sorting, like cgd's kernels, would then read and write out of bounds.
The cases run in a subprocess with a timeout that kills its process group: a crash
(segmentation fault) or a hang fails the test rather than the test run.
"""

import json
import sys

from _helpers import run_subprocess

SCRIPT = r"""
import json, warnings
import numpy as np
import scipy.sparse as sp
import cgd

warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
n, d = 40, 12
dense = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.4)
dense[:, 0] += 1.0  # every row stores an entry
y_clf = np.arange(n) % 3
y_reg = rng.standard_normal(n)


def malformed(case):
    X = sp.csr_matrix(dense)
    if case == "index_too_large":
        X.indices[3] = d + 1000
    elif case == "negative_index":
        X.indices[3] = -5
    elif case == "indptr_past_the_end":
        X.indptr[5] = X.nnz + 10 ** 6
    elif case == "indptr_decreasing":
        X.indptr[5], X.indptr[6] = X.indptr[6], X.indptr[5]
    elif case == "indptr_first_not_zero":
        X.indptr[0] = 1
    elif case == "csc_index_too_large":
        X = sp.csc_matrix(dense)
        X.indices[3] = n + 1000
    elif case == "coo_index_too_large":
        X = sp.coo_matrix(dense)
        X.col[3] = d + 1000
    elif case == "csr_array_index_too_large":
        X = sp.csr_array(dense)
        X.indices[3] = d + 1000
    return X


def estimators():
    return {
        "SGDClassifier": (cgd.SGDClassifier(max_iter=3, tol=None), y_clf),
        "SGDClassifier_batch": (cgd.SGDClassifier(max_iter=3, tol=None, batch_size=8), y_clf),
        "SGDRegressor": (cgd.SGDRegressor(max_iter=3, tol=None), y_reg),
        "MLPClassifier": (cgd.MLPClassifier(hidden_layer_sizes=(5,), max_iter=3), y_clf),
        "MLPRegressor": (cgd.MLPRegressor(hidden_layer_sizes=(5,), max_iter=3), y_reg),
    }


CASES = ["index_too_large", "negative_index", "indptr_past_the_end", "indptr_decreasing",
         "indptr_first_not_zero", "csc_index_too_large", "coo_index_too_large",
         "csr_array_index_too_large"]
out = {}
for name, (est, y) in estimators().items():
    fitted = type(est)(**est.get_params()).fit(sp.csr_matrix(dense), y)
    for case in CASES:
        calls = {"fit": lambda X: est.fit(X, y),
                 "partial_fit": (lambda X: est.partial_fit(X, y, classes=np.unique(y)))
                 if "Classifier" in name else (lambda X: est.partial_fit(X, y)),
                 "predict": lambda X: fitted.predict(X)}
        for call, fn in calls.items():
            try:
                fn(malformed(case))
                out[f"{name} {call} {case}"] = "accepted"
            except ValueError as e:
                out[f"{name} {call} {case}"] = "ValueError: " + str(e)
            except Exception as e:
                out[f"{name} {call} {case}"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_malformed_sparse_input_raises_value_error_everywhere():
    res = run_subprocess([sys.executable, "-P", "-c", SCRIPT], timeout=120)
    assert res.returncode == 0, (
        f"the subprocess died (exit code {res.returncode}: a crash?)\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out) == 5 * 8 * 3
    wrong = {k: v for k, v in out.items() if not v.startswith("ValueError")}
    assert not wrong, wrong
    unclear = {k: v for k, v in out.items()
               if "malformed" not in v.lower() and "index" not in v.lower()}
    assert not unclear, unclear
