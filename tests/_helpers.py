"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

import numpy as np


def central_differences(f, x, h):
    """The gradient of scalar f at x by central differences, one coordinate at a time."""
    fd = np.empty_like(x)
    for j in range(x.size):
        p, q = x.copy(), x.copy()
        p[j] += h
        q[j] -= h
        fd[j] = (f(p) - f(q)) / (2 * h)
    return fd
