"""Exact statistics of numpy arrays and files in one pass, from Python.

``microbatch.stats(a)`` gives count, sum, mean, min, max, var, std and nan_count of an array of
any shape, strides and supported dtype in one pass over memory (the engine's SIMD CPU kernels,
or the GPU with ``backend="gpu"``), with the GIL released; contiguous arrays (C or Fortran
order) are read in place, never copied. ``microbatch.partial(a)`` gives a mergeable, picklable
:class:`Partial` whose JSON is the CLI's partial-file format, so partials from Python, the
``microbatch`` CLI and ``microbatch serve`` combine exactly. ``microbatch.dask`` runs the same on
Dask arrays and data frames.

Numerics: float32 and float64 are reduced at their own precision with a pivot scheme whose error
is relative to the data's spread, not their magnitude; integers exactly (the sum is an exact
Python int). NaN and infinities are counted as numpy counts them (``skip_nan=True`` is numpy's
``nan*`` functions).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import numpy as np

__all__ = [
    "Error",
    "InputError",
    "FileError",
    "GpuError",
    "Stats",
    "Partial",
    "stats",
    "partial",
    "stats_file",
]


class Error(Exception):
    """Base class of every error the engine reports."""


class InputError(Error, ValueError):
    """Bad input or options: a malformed file, an unknown column, an incompatible partial."""


class FileError(Error, OSError):
    """A file could not be opened or read (the message names it)."""


class GpuError(Error, RuntimeError):
    """No usable GPU, or the GPU failed."""


_FIELDS = ("count", "nan_count", "sum", "mean", "min", "max", "var", "std")


class Stats:
    """The statistics of a reduction.

    Attributes: ``count`` (finite values; with ``skip_nan`` the values counted), ``nan_count``,
    ``sum``, ``mean``, ``min``, ``max``, ``var``, ``std`` (``None`` where undefined, e.g. the
    mean of nothing; NaN where numpy gives NaN), and the ``ddof`` and ``skip_nan`` they were
    computed with. Integer inputs have an exact ``sum``, ``min`` and ``max`` (Python ints).
    Along an axis every field is a numpy array of the result's shape.
    """

    __slots__ = _FIELDS + ("ddof", "skip_nan")

    def __init__(self, fields: Dict[str, Any]):
        for name in self.__slots__:
            setattr(self, name, fields[name])

    def to_dict(self) -> Dict[str, Any]:
        """The statistics as a dict (the fields above)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in _FIELDS)
        return f"Stats({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stats):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        return all(_same(a[k], b[k]) for k in a)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return bool(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True))
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True
    return x == y


from ._native import Partial  # noqa: E402
from . import _native  # noqa: E402

_BACKENDS = ("auto", "cpu", "gpu")


def _as_array(array: Any) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.byteorder not in ("=", "|") and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype == np.float16:
        # Every float16 is a float32: widened exactly, reduced as one (as the CLI's f16).
        a = a.astype(np.float32)
    elif a.dtype == np.bool_:
        # One byte 0/1 each: the same bytes as uint8, counted exactly (sum = trues).
        a = a.view(np.uint8)
    return a


def _check(ddof: int, backend: str, batch_size: Optional[int]) -> int:
    if not isinstance(ddof, (int, np.integer)) or isinstance(ddof, bool) or ddof < 0:
        raise InputError(f"ddof must be a non-negative integer, not {ddof!r}")
    if backend not in _BACKENDS:
        raise InputError(f'backend must be "auto", "cpu" or "gpu", not {backend!r}')
    if batch_size is None:
        return _native.DEFAULT_BATCH_SIZE
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
    return int(batch_size)


def stats(
    array: Any,
    *,
    ddof: int = 0,
    skip_nan: bool = False,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    axis: Optional[int] = None,
) -> Stats:
    """Count, sum, mean, min, max, var, std and nan_count of ``array`` in one pass.

    ``array``: any numpy array (or array-like) of float32, float64 or 8- to 64-bit integers,
    any shape; C- or Fortran-contiguous arrays are read in place (no copy), strided ones a
    piece at a time. The GIL is released while the values are reduced. ``ddof`` as numpy's
    ``var``; ``skip_nan`` leaves NaN out (numpy's ``nanmean``, ``nanvar``…). ``backend``:
    ``"auto"`` and ``"cpu"`` reduce on the CPU (data in host memory: the CPU reads it at memory
    speed, where the GPU would first copy it over the bus); ``"gpu"`` sends float32 to the GPU
    kernel in micro-batches of ``batch_size`` (float64 and integers are reduced by the engine's
    host kernels on either backend). ``axis``: reduce along one axis like numpy (the fields are
    arrays of the remaining shape).
    """
    batch = _check(ddof, backend, batch_size)
    a = _as_array(array)
    if axis is None:
        return Stats(_native._stats(a, int(ddof), bool(skip_nan), backend, batch))
    if a.ndim == 0:
        raise InputError("axis needs an array of at least one dimension")
    k = int(axis)
    if not -a.ndim <= k < a.ndim:
        raise InputError(f"axis {axis} is out of bounds for an array of {a.ndim} dimensions")
    k %= a.ndim
    flat = _native._stats_axis(a, k, int(ddof), bool(skip_nan))
    shape = a.shape[:k] + a.shape[k + 1 :]
    fields: Dict[str, Any] = {}
    for name in _FIELDS:
        values = flat[name]
        if isinstance(values, list):  # integers' exact sum, min and max
            fields[name] = _int_array(values).reshape(shape)
        elif name in ("count", "nan_count"):
            fields[name] = values.astype(np.int64).reshape(shape)
        else:
            fields[name] = values.reshape(shape)
    fields["ddof"] = int(ddof)
    fields["skip_nan"] = bool(skip_nan)
    return Stats(fields)


def _int_array(values: Sequence[Any]) -> np.ndarray:
    """Exact integers as int64 (uint64 where they only fit there; else Python ints)."""
    if any(v is None for v in values):
        return np.array(values, dtype=object)
    for dtype in (np.int64, np.uint64):
        try:
            return np.array(values, dtype=dtype)
        except OverflowError:
            pass
    return np.array(values, dtype=object)


def partial(array: Any, *, ddof: int = 0, skip_nan: bool = False) -> Partial:
    """A mergeable :class:`Partial` of every value of ``array`` (see :func:`stats`).

    Partials merge exactly (``p.merge(q)`` or ``p + q``), pickle, and convert to and from the
    CLI's partial-file JSON (``to_json``, ``Partial.from_json``); ``p.finish()`` gives the
    :class:`Stats`.
    """
    _check(ddof, "cpu", None)
    return _native._partial(_as_array(array), int(ddof), bool(skip_nan))


def stats_file(
    path_or_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    *,
    ddof: int = 0,
    skip_nan: bool = False,
    backend: str = "auto",
    batch_size: Optional[int] = None,
    format: Optional[str] = None,
    dtype: Optional[str] = None,
    column: Optional[Union[int, str]] = None,
    delimiter: Optional[str] = None,
    header: Optional[bool] = None,
    skip_invalid: bool = False,
    nulls: Optional[Iterable[str]] = None,
    return_partial: bool = False,
):
    """Reads and reduces files as ``microbatch run`` does, in bounded memory.

    Formats as the CLI: ``.npy``, raw binary (``dtype``: f32, f64, i8…u64), CSV/TSV/text
    (``column`` by name or 0-based index, ``delimiter``, ``header``, ``skip_invalid``,
    ``nulls``), Parquet and Arrow; gzip and zstd files are decompressed. Several paths reduce
    as one. ``backend`` ``"auto"`` lets the engine's cost model choose. Returns the
    :class:`Stats` (and the :class:`Partial` too with ``return_partial=True``). A bad file
    raises :class:`InputError` or :class:`FileError` naming it, with the offset or line.
    """
    batch = _check(ddof, backend, batch_size)
    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [os.fspath(path_or_paths)]
    else:
        paths = [os.fspath(p) for p in path_or_paths]
    if not paths:
        raise InputError("stats_file needs at least one path")
    options = {
        "format": format,
        "dtype": dtype,
        "column": column,
        "delimiter": delimiter,
        "header": header,
        "skip_invalid": skip_invalid,
        "nulls": list(nulls) if nulls is not None else None,
    }
    fields, p = _native._stats_file(paths, options, int(ddof), bool(skip_nan), backend, batch)
    s = Stats(fields)
    return (s, p) if return_partial else s
