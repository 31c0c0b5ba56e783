"""microbatch.dask on a distributed LocalCluster with two worker processes, against numpy."""

import os

import numpy as np
import pytest

import microbatch as mb

# Required, not skipped: the test command installs dask and distributed.
import dask.array as da  # noqa: E402
import distributed  # noqa: E402

import microbatch.dask as mbd  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    # Both workers registered before any test counts them (under load one may come late).
    c.wait_for_workers(2, timeout=120)
    yield c
    c.close()
    cluster.close()


def test_dask_array_on_a_two_process_cluster_equals_numpy(client):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    # Chunks made on the workers (the data never travel through the graph); numpy's view of
    # the same values made here.
    x = da.random.default_rng(seed).normal(50, 7, (4000, 2600), chunks=(500, 700)).astype(np.float32)
    x = da.where((da.arange(4000)[:, None] == 123) & (da.arange(2600)[None, :] == 45), np.nan, x)
    a = x.compute()  # 1.04e7 values
    s = mbd.stats(x, skip_nan=True)
    f = a.astype(np.float64)
    assert s.count == a.size - 1 and s.nan_count == 1
    assert abs(s.mean - np.nanmean(f)) <= 1e-9 * abs(np.nanmean(f))
    assert abs(s.var - np.nanvar(f)) <= 1e-6 * np.nanvar(f)
    assert (s.min, s.max) == (float(np.nanmin(f)), float(np.nanmax(f)))
    # The work ran on the cluster's processes.
    assert len(client.scheduler_info()["workers"]) == 2
    lazy = mbd.stats(x, compute=False)
    assert np.isnan(lazy.compute().mean)


def test_dask_integers_exact_and_frames(client):
    import pandas as pd
    import dask.dataframe as dd

    x = da.arange(-5_000_000, 5_000_000, dtype=np.int64, chunks=1_000_000) * 3
    i = x.compute()
    s = mbd.stats(x)
    assert s.sum == int(i.astype(object).sum()) and s.min == int(i.min())
    df = pd.DataFrame({"a": np.arange(100_000, dtype=np.float64), "b": np.arange(100_000) % 7,
                       "c": ["x"] * 100_000})
    out = mbd.stats_frame(dd.from_pandas(df, npartitions=5))
    assert set(out) == {"a", "b"}
    assert out["a"].mean == df["a"].mean() and out["b"].sum == int(df["b"].sum())
    assert abs(out["a"].var - df["a"].var(ddof=0)) <= 1e-9 * df["a"].var(ddof=0)
    with pytest.raises(KeyError):
        mbd.stats_frame(dd.from_pandas(df, npartitions=2), columns=["zz"])
