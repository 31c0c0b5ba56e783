"""microbatch on Dask: every statistic of a Dask array or data frame in one pass over it.

Each chunk (partition) is reduced to a :class:`microbatch.Partial` where it lives, the partials
are merged in a tree (``split_every`` at a time), and the statistics come from the last merge:
one task per chunk, no data moved but the partials (a few hundred bytes each). It runs on any
Dask scheduler: threads, processes, or ``distributed`` on a cluster (workers need microbatch
installed).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from . import Partial, Stats, partial


def _chunk_partial(block: Any, ddof: int, skip_nan: bool) -> Partial:
    return partial(block, ddof=ddof, skip_nan=skip_nan)


def _merge(*parts: Partial) -> Partial:
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def _frame_partials(frame: Any, columns: Sequence[str], ddof: int, skip_nan: bool) -> Dict[str, Partial]:
    return {c: partial(frame[c].to_numpy(), ddof=ddof, skip_nan=skip_nan) for c in columns}


def _merge_frames(*parts: Dict[str, Partial]) -> Dict[str, Partial]:
    return {c: _merge(*(p[c] for p in parts)) for c in parts[0]}


def _tree(parts: List[Any], merge: Any, split_every: int) -> Any:
    import dask

    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, not {split_every}")
    while len(parts) > 1:
        parts = [
            dask.delayed(merge, pure=True)(*parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def partial_of(x: Any, *, ddof: int = 0, skip_nan: bool = False, split_every: int = 8) -> Any:
    """A ``dask.delayed`` :class:`microbatch.Partial` of every value of the Dask array ``x``
    (computing it gives the partial; it merges with others from anywhere)."""
    import dask

    blocks = list(x.to_delayed().ravel())
    if not blocks:
        import numpy as np

        return dask.delayed(partial)(np.empty(0, dtype=x.dtype), ddof=ddof, skip_nan=skip_nan)
    parts = [dask.delayed(_chunk_partial, pure=True)(b, ddof, skip_nan) for b in blocks]
    return _tree(parts, _merge, split_every)


def stats(
    x: Any,
    *,
    ddof: int = 0,
    skip_nan: bool = False,
    split_every: int = 8,
    compute: bool = True,
    **compute_kwargs: Any,
) -> Any:
    """Count, sum, mean, min, max, var, std and nan_count of the Dask array ``x`` in one pass.

    Chunks are reduced where they are (float32, float64 and integer chunks, any shape) and
    merged in a tree of ``split_every``; ``compute=False`` returns a ``dask.delayed``
    :class:`microbatch.Stats` instead. ``compute_kwargs`` go to ``compute`` (e.g.
    ``scheduler="processes"``); with a ``distributed`` client active, its cluster runs it.
    """
    import dask

    p = partial_of(x, ddof=ddof, skip_nan=skip_nan, split_every=split_every)
    result = dask.delayed(lambda q: q.finish(), pure=True)(p)
    return result.compute(**compute_kwargs) if compute else result


def stats_frame(
    df: Any,
    columns: Optional[Sequence[str]] = None,
    *,
    ddof: int = 0,
    skip_nan: bool = False,
    split_every: int = 8,
    compute: bool = True,
    **compute_kwargs: Any,
) -> Any:
    """The statistics of columns of a Dask DataFrame, each column's in one pass over its
    partitions: a dict column → :class:`microbatch.Stats` (``columns`` default: every numeric
    column)."""
    import dask

    if columns is None:
        columns = [c for c, t in df.dtypes.items() if t.kind in "fiu"]
    else:
        columns = list(columns)
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise KeyError(f"no column(s) {missing} in the frame (it has {list(df.columns)})")
    parts = [
        dask.delayed(_frame_partials, pure=True)(part, columns, ddof, skip_nan)
        for part in df.to_delayed()
    ]
    merged = _tree(parts, _merge_frames, split_every)
    result = dask.delayed(lambda d: {c: p.finish() for c, p in d.items()}, pure=True)(merged)
    return result.compute(**compute_kwargs) if compute else result
