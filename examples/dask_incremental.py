"""Train a cgd estimator on a Dask array too large for one process's memory.

dask-ml's ``Incremental`` calls ``partial_fit`` on one block of rows after another, each
on the worker that holds the block, shipping the model (with its optimizer state) from
worker to worker; ``predict`` and ``score`` then run block by block on the workers.

Run with ``python examples/dask_incremental.py`` (needs ``pip install dask-ml distributed``).
The data here are generated on the workers; with real data, read them with
``dask.array.from_zarr``, ``dask.dataframe.read_parquet(...).to_dask_array(lengths=True)``,
and so on, chunked along rows only.
"""

import logging

import dask
import dask.array as da
import numpy as np
from dask_ml.wrappers import Incremental
from distributed import Client, LocalCluster

from cgd import SGDClassifier

N_ROWS, N_FEATURES, BLOCK_ROWS = 400_000, 100, 50_000
THREADS_PER_FIT = 2


def main():
    # Dask's nanny starts every worker with OMP_NUM_THREADS=1, so n_jobs=None means one
    # thread there. Incremental runs one partial_fit at a time, so let that one fit use
    # more cores: either pass n_jobs=k to the estimator (below), or change what the
    # workers are started with, before the cluster is created:
    #     dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": 2})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster):
        rng = da.random.default_rng(0)
        X = rng.standard_normal((N_ROWS, N_FEATURES), chunks=(BLOCK_ROWS, N_FEATURES))
        w = rng.standard_normal(N_FEATURES, chunks=N_FEATURES)
        y = (X @ w + rng.standard_normal(N_ROWS, chunks=BLOCK_ROWS) > 0).astype(int)
        X, y = dask.persist(X, y)  # generated once, kept on the workers

        clf = Incremental(
            SGDClassifier(loss="log_loss", solver="adam", batch_size=2048,
                          learning_rate="constant", eta0=0.01, n_jobs=THREADS_PER_FIT,
                          random_state=0),
            # A RandomState rather than a seed: every pass visits the blocks in a new order.
            shuffle_blocks=True, random_state=np.random.RandomState(0))
        for n_pass in range(1, 4):
            # One pass over the blocks in a random order; each block gets one epoch.
            clf.partial_fit(X, y, classes=[0, 1])
            print(f"pass {n_pass}: training accuracy {clf.score(X, y):.4f}")

        proba = clf.predict_proba(X[:10])  # lazy, block-wise on the workers
        print("P(y=1) of the first rows:", proba[:, 1].compute().round(3))


if __name__ == "__main__":
    main()
