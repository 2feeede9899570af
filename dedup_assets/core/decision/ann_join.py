"""The approximate similarity join, for classes too big for the exact blocked one.

An inverted-file index (faiss `IndexIVFFlat`, inner product over the same unit vectors)
splits the space into about sqrt(n) cells by k-means and compares a query only with the
vectors of its `nprobe` nearest cells. Two uses:
- `AnnKeptIndex`: the greedy keep's "most similar kept image so far", the kept set
  growing as the visit goes (`core.decision.keep_policy.greedy_keep(join="ann")`);
- `ann_pairs_above`: every pair above a threshold by range search. Not used by the
  pipeline (the cross-class check asks each image's nearest neighbours instead): its
  recall falls where neighbourhoods are dense (benchmarks/README.md, *Scale*).

Every similarity it reports is the exact inner product of the two vectors: an approximate
join can miss a duplicate (the image is kept), never remove an image for a similarity it
does not have.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

DEFAULT_ANN_MIN_CLASS_SIZE = 200_000
"""Classes up to this size use the exact join (measured in benchmarks/bench_scale.py)."""
DEFAULT_NPROBE = 16
TRAIN_SAMPLE = 100_000


class JoinMethod(StrEnum):
    """auto: exact up to `ann_min_class_size` images, approximate above; or either always."""

    auto = "auto"
    exact = "exact"
    ann = "ann"


def resolve_join(setting: str, n: int, min_size: int = DEFAULT_ANN_MIN_CLASS_SIZE) -> str:
    """The join a class of n images gets: "exact" or "ann"."""
    if setting == JoinMethod.auto:
        return JoinMethod.ann.value if n > min_size else JoinMethod.exact.value
    if setting not in (JoinMethod.exact, JoinMethod.ann):
        raise ValueError(f"unknown join {setting!r}; choose auto, exact or ann")
    return str(setting)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the approximate join needs faiss-cpu: pip install faiss-cpu") from exc
    return faiss


def ivf_index(x: np.ndarray, nprobe: int = DEFAULT_NPROBE, seed: int = 0):
    """An empty IVF index over unit vectors like `x`, its cells trained on (a sample of) x."""
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    nlist = int(max(1, min(np.sqrt(max(n, 1)), n // 39 if n >= 39 else 1)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = x
    if n > TRAIN_SAMPLE:
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, TRAIN_SAMPLE, replace=False))]
    index.train(sample)
    index.nprobe = int(min(max(1, nprobe), nlist))
    return index


def _as_keys(x: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Index vectors whose inner product with `_as_queries` is the margin
    x_q . x_k - o_q - o_k: [x_k, -o_k, -1] (unchanged without offsets)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if offsets is None:
        return x
    o = np.asarray(offsets, dtype=np.float32)[:, None]
    return np.ascontiguousarray(np.hstack([x, -o, -np.ones_like(o)]))


def _as_queries(x: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Query vectors [x_q, 1, o_q] (see `_as_keys`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if offsets is None:
        return x
    o = np.asarray(offsets, dtype=np.float32)[:, None]
    return np.ascontiguousarray(np.hstack([x, np.ones_like(o), o]))


class AnnKeptIndex:
    """The kept set of the greedy keep as an IVF index: add kept vectors, ask each visitor
    for its most similar kept image (its best margin, with offsets: the index then holds
    `_as_keys` vectors, whose inner products with `_as_queries` are margins). With offsets
    and a `cap` on a pair's two offsets (`core.decision.keep_policy`), a second index of the
    plain vectors gives each visitor's best cosine: its score is the higher of the best
    margin and the best cosine less the cap."""

    def __init__(
        self,
        x: np.ndarray,
        nprobe: int = DEFAULT_NPROBE,
        offsets: np.ndarray | None = None,
        cap: float | None = None,
    ):
        self.with_offsets = offsets is not None
        self.index = ivf_index(_as_keys(x, offsets), nprobe)
        self.cap = cap if self.with_offsets else None
        self.plain = ivf_index(_as_keys(x, None), nprobe) if self.cap is not None else None

    def add(
        self, vectors: np.ndarray, positions: np.ndarray, offsets: np.ndarray | None = None
    ) -> None:
        if len(vectors):
            ids = positions.astype(np.int64)
            self.index.add_with_ids(_as_keys(vectors, offsets if self.with_offsets else None), ids)
            if self.plain is not None:
                self.plain.add_with_ids(_as_keys(vectors, None), ids)

    def nearest(
        self, queries: np.ndarray, offsets: np.ndarray | None = None, cap: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(best score, position of that kept image) per query; -inf/-1 if none. `cap`
        must be the index's own (it is given to the exact index the same way)."""
        m = len(queries)
        if self.index.ntotal == 0 or m == 0:
            return np.full(m, -np.inf, np.float32), np.full(m, -1, np.int64)
        if cap != self.cap and self.with_offsets:
            raise ValueError("the offsets' cap differs from the one the index was built for")
        q = _as_queries(queries, offsets if self.with_offsets else None)
        sim, at = self.index.search(q, 1)
        best = np.where(at[:, 0] >= 0, sim[:, 0], -np.inf).astype(np.float32)
        best_at = at[:, 0].astype(np.int64)
        if self.plain is not None and self.cap is not None:
            raw, raw_at = self.plain.search(_as_keys(queries, None), 1)
            capped = np.where(raw_at[:, 0] >= 0, raw[:, 0] - np.float32(self.cap), -np.inf)
            higher = capped > best
            best = np.where(higher, capped, best).astype(np.float32)
            best_at = np.where(higher, raw_at[:, 0], best_at).astype(np.int64)
        return best, best_at


def ann_pairs_above(
    x: np.ndarray, threshold: float, *, nprobe: int = DEFAULT_NPROBE, chunk: int = 16_384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j with cosine > threshold found by range search, as (i, j, similarity);
    memory is the index (n x d) plus the pairs of one chunk of queries."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    index = ivf_index(x, nprobe)
    index.add(x)
    ii, jj, ss = [], [], []
    for start in range(0, n, chunk):
        lims, sims, ids = index.range_search(x[start : start + chunk], float(threshold))
        rows = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = (ids > rows) & (sims > threshold)
        ii.append(rows[keep])
        jj.append(ids[keep].astype(np.int64))
        ss.append(sims[keep].astype(np.float32))
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)
