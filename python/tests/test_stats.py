"""microbatch from Python against numpy: every dtype, shapes and strides, NaN, empty,
partials (merge, pickle, JSON with the CLI), files, errors, the GIL."""

import json
import os
import pickle
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import microbatch as mb

SEED = int.from_bytes(os.urandom(4), "little")
REPO = Path(__file__).resolve().parents[2]


def rng():
    print(f"seed {SEED}")
    return np.random.default_rng(SEED)


def reference(a, ddof=0, skip_nan=False):
    """numpy in float64 (integers exactly with Python ints)."""
    flat = np.asarray(a).ravel()
    if flat.dtype.kind in "iu":
        ints = [int(v) for v in flat.tolist()]
        n = len(ints)
        return {
            "count": n,
            "sum": sum(ints),
            "min": min(ints) if n else None,
            "max": max(ints) if n else None,
            "mean": float(np.mean(flat.astype(np.float64))) if n else None,
            "var": float(np.var(flat.astype(np.float64), ddof=ddof)) if n > ddof else None,
        }
    x = flat.astype(np.float64)
    nan = np.isnan(x)
    if skip_nan:
        x = x[~nan]
    finite = x[np.isfinite(x)]
    return {
        "count": int(x.size),
        "nan_count": int(nan.sum()),
        "sum": float(np.sum(x)) if x.size else None,
        "mean": float(np.mean(x)) if x.size else None,
        "min": float(np.min(finite)) if finite.size else None,
        "max": float(np.max(finite)) if finite.size else None,
        "var": float(np.var(x, ddof=ddof)) if x.size > ddof else None,
    }


def close(got, want, rel):
    if want is None:
        return got is None or (isinstance(got, float) and np.isnan(got))
    if isinstance(want, float) and np.isnan(want):
        return got is not None and np.isnan(got)
    return abs(got - want) <= rel * max(abs(want), 1e-300)


INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", INT_TYPES)
def test_integers_exact_for_every_dtype(dtype):
    info = np.iinfo(dtype)
    r = rng()
    a = r.integers(info.min, info.max, size=100_003, dtype=dtype, endpoint=True)
    a[:2] = [info.min, info.max]
    s = mb.stats(a)
    want = reference(a)
    assert s.count == want["count"] and s.nan_count == 0
    assert (s.sum, s.min, s.max) == (want["sum"], want["min"], want["max"])
    assert isinstance(s.sum, int)
    assert close(s.mean, want["mean"], 1e-12)
    assert close(s.var, want["var"], 1e-9)


@pytest.mark.parametrize("dtype,eps", [(np.float32, 2.0**-24), (np.float64, 2.0**-53)])
def test_floats_against_float64_reference(dtype, eps):
    r = rng()
    # A large offset: the variance is relative to the spread, not the magnitude.
    a = (r.normal(1e4, 3.0, 1_000_003)).astype(dtype)
    s = mb.stats(a, ddof=1)
    want = reference(a, ddof=1)
    # Pairwise/blocked sums: error bounded by a few log2(n) ulps of the magnitudes.
    tol = 64 * np.log2(a.size) * eps
    assert s.count == a.size
    assert close(s.sum, want["sum"], tol) and close(s.mean, want["mean"], tol)
    assert (s.min, s.max) == (want["min"], want["max"])
    assert close(s.var, want["var"], 1e-6 if dtype == np.float32 else 1e-10)
    assert close(s.std, float(np.sqrt(want["var"])), 1e-6)


def test_shapes_orders_and_strides_equal_the_flat_result():
    r = rng()
    a = r.normal(5, 2, (301, 257)).astype(np.float32)
    flat = mb.stats(a.ravel())
    assert mb.stats(a) == flat
    f = np.asfortranarray(a)
    s = mb.stats(f)
    assert s.count == flat.count and close(s.sum, flat.sum, 1e-12) and s.min == flat.min
    strided = a[::3, 1::2]
    want = reference(np.ascontiguousarray(strided))
    got = mb.stats(strided)
    assert got.count == strided.size
    assert close(got.mean, want["mean"], 1e-6) and (got.min, got.max) == (want["min"], want["max"])
    assert close(got.var, want["var"], 1e-5)
    big = np.repeat(a, 20, axis=0)[:, ::2]  # strided, more than one piece of 2^20
    want = reference(np.ascontiguousarray(big))
    got = mb.stats(big)
    assert got.count == big.size and close(got.mean, want["mean"], 1e-6)
    # Non-native byte order is read correctly.
    swapped = a.astype(a.dtype.newbyteorder(">"))
    assert mb.stats(swapped) == flat
    # 0-d and Python lists.
    assert mb.stats(np.float64(2.5)).sum == 2.5
    assert mb.stats([1, 2, 3]).sum == 6


def test_nan_inf_empty_one():
    a = np.array([1.0, np.nan, 3.0, np.inf, -2.0], dtype=np.float32)
    s = mb.stats(a)
    # As numpy: a NaN makes every statistic NaN (np.max too) unless skipped.
    assert s.nan_count == 1 and np.isnan(s.mean) and np.isnan(s.max) and np.isnan(s.var)
    s = mb.stats(a, skip_nan=True)
    assert s.count == 4 and s.max == np.nanmax(a) == np.inf and s.min == -2.0
    s = mb.stats(a[np.isfinite(a) | np.isnan(a)], skip_nan=True)
    assert s.count == 3 and s.sum == 2.0 and close(s.var, float(np.nanvar(a[[0, 1, 2, 4]])), 1e-7)
    s = mb.stats(np.array([np.inf, -np.inf]))
    assert np.isnan(s.sum) and np.isnan(s.mean)  # inf + -inf, as numpy
    e = mb.stats(np.array([], dtype=np.float32))
    assert e.count == 0 and e.sum == 0.0 and e.mean is None and e.min is None
    o = mb.stats(np.array([7.0]), ddof=1)
    assert o.mean == 7.0 and o.var is None


def test_float16_and_bool():
    h = np.array([1.5, -2.0, 65504, 6e-8, np.inf, -0.0], dtype=np.float16)
    s = mb.stats(h[:4])
    w = h[:4].astype(np.float64)
    assert s.sum == w.sum() and s.min == w.min() and s.max == 65504.0
    assert mb.stats(h).mean == np.inf
    b = np.random.default_rng().random(1001) < 0.3
    s = mb.stats(b)
    assert s.sum == int(b.sum()) and s.count == 1001
    assert close(s.mean, float(b.mean()), 1e-15) and close(s.var, float(b.var()), 1e-12)
    assert mb.stats(b.reshape(7, 143), axis=0).sum.tolist() == b.reshape(7, 143).sum(axis=0).tolist()


def test_values_near_the_f64_limit():
    # Deviations past f64's range: the variance is inf (numpy's too), never NaN or 0.
    s = mb.stats(np.array([1.5, -2.25e300, 0.0]))
    assert s.var == np.inf and s.sum == -2.25e300
    # Running sums past the range though the total is not: an error, not NaN statistics.
    a = np.concatenate([np.full(5000, 1.7e308), np.full(5000, -1.7e308), [1.0]])
    with pytest.raises(mb.InputError, match="f64's range"):
        mb.stats(a)
    with pytest.raises(ValueError, match="axis 1"):
        mb.stats(np.stack([a, a]), axis=1)


def test_axis_equals_numpy():
    r = rng()
    a = r.normal(0, 1, (40, 33, 7)).astype(np.float64)
    for axis in (0, 1, 2, -1):
        s = mb.stats(a, axis=axis, ddof=1)
        np.testing.assert_allclose(s.mean, a.mean(axis=axis), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(s.var, a.var(axis=axis, ddof=1), rtol=1e-10)
        np.testing.assert_array_equal(s.min, a.min(axis=axis))
        np.testing.assert_array_equal(s.count, np.full(s.mean.shape, a.shape[axis]))
    # Several blocks of the reduced axis (uneven last one), C and Fortran order, a NaN in one
    # lane: against numpy in float64.
    b = r.normal(1e3, 2.0, (3001, 200)).astype(np.float32)
    b[1234, 17] = np.nan
    wide = b.astype(np.float64)
    for arr in (b, np.asfortranarray(b), b[::2, ::3]):
        w = arr.astype(np.float64)
        for axis in (0, 1):
            s = mb.stats(arr, axis=axis, ddof=1)
            np.testing.assert_allclose(s.mean, w.mean(axis=axis), rtol=1e-9)
            np.testing.assert_allclose(s.var, w.var(axis=axis, ddof=1), rtol=1e-5)
            np.testing.assert_array_equal(s.max, w.max(axis=axis))
            np.testing.assert_array_equal(s.nan_count, np.isnan(w).sum(axis=axis))
    s = mb.stats(b, axis=0, skip_nan=True)
    np.testing.assert_allclose(s.mean, np.nanmean(wide, axis=0), rtol=1e-9)
    # More lanes than the block holds values: one value per lane per block.
    many = r.normal(0, 1, (3, 300_000))
    np.testing.assert_allclose(mb.stats(many, axis=0).var, many.var(axis=0), rtol=1e-12, atol=1e-15)
    i = r.integers(-100, 100, (5, 6)).astype(np.int16)
    s = mb.stats(np.asfortranarray(i), axis=0)
    np.testing.assert_array_equal(s.sum, i.sum(axis=0))
    assert s.sum.dtype == np.int64
    with pytest.raises(mb.InputError, match="out of bounds"):
        mb.stats(a, axis=3)


def test_partials_merge_pickle_and_json_round_trip():
    r = rng()
    a = r.normal(-3, 4, 200_001)
    parts = [mb.partial(c) for c in np.array_split(a, 7)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged + p
    whole = mb.stats(a)
    got = merged.finish()
    assert got.count == whole.count and close(got.var, whole.var, 1e-12)
    assert close(got.sum, whole.sum, 1e-12) and got.min == whole.min
    back = pickle.loads(pickle.dumps(merged))
    assert back == merged and back.finish() == merged.finish()
    again = mb.Partial.from_json(merged.to_json())
    assert again == merged
    doc = json.loads(merged.to_json())
    assert doc["format"] == "microbatch-partial"
    empty = mb.partial(np.array([], dtype=np.float32))
    assert pickle.loads(pickle.dumps(empty)).finish().count == 0
    nan_only = mb.partial(np.array([np.nan]))
    assert mb.Partial.from_json(nan_only.to_json()).nan_count == 1
    with pytest.raises(mb.InputError):
        mb.partial(a, ddof=1).merge(mb.partial(a))
    with pytest.raises(mb.InputError, match="not JSON"):
        mb.Partial.from_json("{")
    with pytest.raises(ValueError):
        mb.Partial.from_json('{"format": "something else"}')


def cli():
    exe = REPO / "target" / "release" / "microbatch"
    assert exe.exists(), f"{exe}: build the CLI first (cargo build --release)"
    return str(exe)


def test_partials_mix_with_the_cli(tmp_path):
    r = rng()
    a = r.normal(10, 2, 50_000).astype(np.float32)
    b = r.normal(-5, 1, 30_000).astype(np.float32)
    f = tmp_path / "b.f32"
    b.tofile(f)
    shard = tmp_path / "b.partial.json"
    subprocess.run([cli(), "run", str(f), "--backend", "cpu", "--partial", str(shard)], check=True,
                   stdout=subprocess.DEVNULL)
    from_cli = mb.Partial.from_json(shard.read_text())
    ours = tmp_path / "a.partial.json"
    ours.write_text(mb.partial(a).to_json())
    both = (mb.partial(a) + from_cli).finish()
    want = reference(np.concatenate([a, b]))
    assert both.count == want["count"] and close(both.var, want["var"], 1e-6)
    out = subprocess.run([cli(), "merge", str(ours), str(shard), "--json"], check=True,
                         capture_output=True, text=True).stdout
    merged = json.loads(out)["stats"]
    assert merged["count"] == both.count
    assert close(merged["mean"], both.mean, 1e-12) and close(merged["var"], both.var, 1e-12)


def test_stats_file_formats_and_errors(tmp_path):
    r = rng()
    a = r.normal(2, 3, 10_001)
    np.save(tmp_path / "a.npy", a)
    s = mb.stats_file(tmp_path / "a.npy")
    assert s == mb.stats(a) or close(s.var, mb.stats(a).var, 1e-12)
    a.astype(np.float32).tofile(tmp_path / "a.raw")
    s = mb.stats_file(str(tmp_path / "a.raw"), dtype="f32", backend="cpu")
    assert s.count == a.size
    (tmp_path / "t.csv").write_text("x,y\n1,2\n3,NA\n5,6\n")
    s, p = mb.stats_file(tmp_path / "t.csv", column="y", nulls=["NA"], return_partial=True)
    assert (s.count, s.sum) == (2, 8.0) and p.count == 2
    (tmp_path / "s.csv").write_text("x\n1\nzebra\n3\n")
    s, p = mb.stats_file(tmp_path / "s.csv", column="x", skip_invalid=True, return_partial=True)
    assert (s.count, s.sum) == (2, 4.0)
    assert json.loads(p.to_json())["skipped_invalid"] == 1
    s = mb.stats_file([tmp_path / "a.npy", tmp_path / "a.npy"])
    assert s.count == 2 * a.size
    (tmp_path / "bad.csv").write_text("x\n1\nzebra\n3\n")
    with pytest.raises(mb.InputError, match=r"bad\.csv.*line 3|line 3.*bad\.csv"):
        mb.stats_file(tmp_path / "bad.csv", column="x")
    with pytest.raises(mb.FileError) as e:
        mb.stats_file(tmp_path / "missing.npy")
    assert isinstance(e.value, OSError) and "missing.npy" in str(e.value)
    with pytest.raises(mb.InputError):
        mb.stats_file(tmp_path / "t.csv", column="nope")


def test_bad_arguments():
    with pytest.raises(TypeError, match="complex"):
        mb.stats(np.zeros(3, dtype=np.complex64))
    with pytest.raises(TypeError):
        mb.stats(np.array(["a", "b"]))
    with pytest.raises(mb.InputError):
        mb.stats(np.zeros(3), backend="tpu")
    with pytest.raises(mb.InputError):
        mb.stats(np.zeros(3), ddof=-1)
    with pytest.raises(ValueError):
        mb.stats(np.zeros(3), batch_size=0)
    assert issubclass(mb.InputError, mb.Error) and issubclass(mb.GpuError, mb.Error)


def test_gpu_backend_matches_cpu():
    if os.environ.get("MICROBATCH_REQUIRE_GPU") != "1":
        try:
            mb.stats(np.zeros(4, dtype=np.float32), backend="gpu")
        except mb.GpuError:
            pytest.skip("no GPU adapter (set MICROBATCH_REQUIRE_GPU=1 to make this a failure)")
    r = rng()
    a = r.normal(100, 5, 300_007).astype(np.float32)
    a[17] = np.nan
    g = mb.stats(a, backend="gpu", batch_size=65_536)
    c = mb.stats(a)
    assert (g.count, g.nan_count) == (c.count, c.nan_count) and np.isnan(g.max)
    g = mb.stats(a, backend="gpu", skip_nan=True)
    c = mb.stats(a, skip_nan=True)
    assert (g.min, g.max) == (c.min, c.max)
    assert close(g.mean, c.mean, 1e-9) and close(g.var, c.var, 1e-6)


def test_the_gil_is_released_while_reducing():
    """While a long reduction runs on one thread, another thread keeps running Python: with
    the GIL held it could not run at all in the middle of the call."""
    # One call (no Python between calls inside the window) long enough to tell: strided, so
    # copied a piece at a time (about 0.1 s).
    a = np.ones((8192, 8192), dtype=np.float32)[:, ::2]
    ticks = []
    window = {}

    def work():
        window["start"] = time.perf_counter()
        mb.stats(a)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    start, end = window["start"], window["end"]
    assert end - start > 0.02, "the call was too short to tell"
    lo, hi = start + 0.3 * (end - start), start + 0.7 * (end - start)
    inside = [x for x in ticks if lo <= x <= hi]
    assert len(inside) > 100, f"{len(inside)} ticks of the other thread during the call"
