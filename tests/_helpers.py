"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

import os
import signal
import subprocess

import numpy as np
import pytest

from cgd import _openmp_helpers

# Tests that compare fits on several thread counts prove nothing on a build without
# OpenMP (CGD_DISABLE_OPENMP=1, or a compiler without it): every n_jobs then runs the
# same single thread, so they are skipped there rather than passed trivially.
requires_openmp = pytest.mark.skipif(
    not _openmp_helpers.openmp_enabled(),
    reason="serial build (no OpenMP): every n_jobs runs on one thread, so thread-count "
           "independence is not exercised")


def central_differences(f, x, h):
    """The gradient of scalar f at x by central differences, one coordinate at a time."""
    fd = np.empty_like(x)
    for j in range(x.size):
        p, q = x.copy(), x.copy()
        p[j] += h
        q[j] -= h
        fd[j] = (f(p) - f(q)) / (2 * h)
    return fd


def run_subprocess(args, timeout, **kwargs):
    """Run ``args`` in a new session and return the CompletedProcess (text output).

    On timeout the whole process group is killed (a stuck child may have started
    threads or processes of its own) and the test fails with what it printed so far.
    """
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args} did not finish within {timeout} s; stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
