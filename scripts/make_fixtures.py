#!/usr/bin/env python3
"""Writes the small input files under tests/data/ with numpy itself (so the .npy headers and text
layouts are numpy's, not ours) and the statistics numpy computes for them, in f64, on the values
at the precision microbatch reduces them in (float32 for f4 and integers of up to 16 bits, which
it holds exactly; float64 for everything else, text included), into tests/data/expected.json.

Run from the repository root: python3 scripts/make_fixtures.py   (needs numpy)
The outputs are committed; tests/it/formats.rs checks both backends against them.
"""
import json, os
import numpy as np

out = "tests/data"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(20261127)
expected = {}


def record(name, values):
    a = np.asarray(values)
    narrow = a.dtype.kind == "f" and a.dtype.itemsize == 4
    x = (a.astype(np.float32) if narrow else a).astype(np.float64).ravel()
    expected[name] = {
        "count": int(x.size),
        "sum": float(x.sum()),
        "mean": float(x.mean()),
        "min": float(x.min()),
        "max": float(x.max()),
        "var": float(x.var()),
        "shape": list(np.shape(values)) if not isinstance(values, list) else None,
    }


def save(name, arr, version=None):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)
    record(name, arr)


save("f64_2d.npy", rng.normal(1e4, 3.0, (40, 25)))
save("f32_be_fortran.npy", np.asfortranarray(rng.normal(-2.0, 5.0, (30, 20)).astype(">f4")))
save("i16.npy", rng.integers(-30000, 30000, 1000).astype("<i2"))
save("u8_3d.npy", rng.integers(0, 256, (10, 10, 10)).astype("|u1"))
save("i64_v2.npy", rng.integers(-(2**40), 2**40, 500).astype("<i8"), version=(2, 0))
save("f32_v3.npy", rng.uniform(0, 1, (3, 4, 5)).astype("<f4"), version=(3, 0))
save("u32_be.npy", rng.integers(0, 2**32, 300, dtype=np.uint64).astype(">u4"))
save("scalar.npy", np.array(2.5))

# Text: a CSV with a header and a non-numeric column, the same as TSV, and whitespace without a
# header; column "b" (index 1) is the one the tests reduce.
a = rng.normal(50.0, 10.0, 400)
b = rng.normal(-3.0, 0.5, 400)
labels = [f"row{i}" for i in range(400)]
with open(os.path.join(out, "table.csv"), "w") as f:
    f.write("label,a,b\n")
    for l, x, y in zip(labels, a, b):
        f.write(f"{l},{float(x)!r},{float(y)!r}\n")
with open(os.path.join(out, "table.tsv"), "w") as f:
    f.write("label\ta\tb\n")
    for l, x, y in zip(labels, a, b):
        f.write(f"{l}\t{float(x)!r}\t{float(y)!r}\n")
with open(os.path.join(out, "table.txt"), "w") as f:
    for x, y in zip(a, b):
        f.write(f"  {float(x)!r}   {float(y)!r}\n")
record("table.csv:a", a.tolist())
record("table.csv:b", b.tolist())

with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"wrote {len(expected)} expectations to {out}/expected.json")
