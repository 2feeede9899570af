"""Which of some identifiers (image ids, pixel hashes, keys: strings) are among others."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def among(values: Iterable[str], members: Iterable[str]) -> np.ndarray:
    """A bool per value of a 1-D sequence of strings (a numpy array, a list, a polars
    Series): whether it is one of `members`, as `np.isin` answers, by a hash
    set instead of numpy's sort of both arrays of strings (measured: 77 ms for a class of
    2,700 image ids against its 2,600 kept ones, and 20 ms for the reference pool's 4,096
    pixel hashes against a class's, against about 1 ms each here)."""
    if isinstance(values, str) or getattr(values, "ndim", 1) != 1:
        raise ValueError("among() takes a 1-D sequence of values, not a single string")
    wanted = set(_strings(members))
    found = [v in wanted for v in _strings(values)]
    return np.array(found, dtype=bool)


def _strings(values: Iterable[str]) -> list[str]:
    """Plain Python strings of an array, a polars Series (`to_list`) or any iterable."""
    if hasattr(values, "tolist"):
        return values.tolist()
    if hasattr(values, "to_list"):
        return values.to_list()
    return list(values)
