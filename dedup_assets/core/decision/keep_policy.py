"""Which image of a group of duplicates is kept: a deterministic greedy policy.

Images are visited in a fixed order; an image is kept unless its similarity to an image
already kept exceeds T, in which case it is removed and names the most similar kept
image. The kept set is the lexicographically-first maximal independent set of the
"similarity > T" graph, so chains (A~B, B~C, A!~C) resolve as: A kept, B removed, C kept.

Orders (the paper leaves the choice open):
- `first`: ascending image id (a content hash), independent of file names and order;
- `density`: ascending spline log-density, ties by id, so dense regions thin out first;
- `quality`: the best version first, so it is the one kept: colour before greyscale,
  then more pixels (as stored, before decoding to the model's size), then the larger
  file, ties by id. A photo's downscaled, cropped or greyscale copy is removed, not the
  original (with `density` the original went in about half of such pairs of photos).

With per-image `offsets` (`core.decision.local_scaling`), the score of a pair is its margin,
cos(i, j) - offsets[i] - offsets[j], instead of its cosine; with an `offset_cap` as well
(a budget's ceiling less its margin), the two offsets take at most the cap together, so a
pair above the ceiling is removed whatever its levels. Everything else is the same.

The join is blocked: a block of images in visit order is compared with the kept set so
far, then resolved inside the block in a few vectorised rounds (greedy MIS needs few
rounds on average, Blelloch, Fineman and Shun 2012), so memory is O(block x N).

With `Constraints` (a user's corrections, `core.decision.overrides`) the same greedy honours
rules on a few rows: a row forced kept is kept where it is visited (later images may name
it), a row forced removed is never kept (so no image names it) and afterwards names its most
similar kept image if that pair is above the threshold, an excluded pair is never an edge of
the graph in either direction, and rows of one exact-copy group are duplicates of each other
whatever their vectors (score +inf, so they name each other first). Only the constrained
rows are compared again, exactly, against the kept set (a few matrix-vector products a
block), so a class with no constraint runs exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from dedup_assets.core.decision.ann_join import AnnKeptIndex
from dedup_assets.core.decision.local_scaling import best_with_cap
from dedup_assets.core.decision.similarity import MAX_SLAB_BYTES, SlabOutputs, pair_offsets


class KeepPolicy(StrEnum):
    """The order in which the greedy policy visits a class (see the module docstring)."""

    first = "first"
    density = "density"
    quality = "quality"


KEEP_POLICIES: tuple[str, ...] = tuple(p.value for p in KeepPolicy)


@dataclass(frozen=True)
class Constraints:
    """Rules on rows of the greedy's input (see the module docstring); all optional.

    forced: per row, 1 kept, -1 removed, 0 decided by the greedy;
    excluded: (k, 2) row pairs that are never a duplicate edge;
    group: per row, an exact-copy label (-1 none): rows of one label are duplicates.
    """

    forced: np.ndarray | None = None
    excluded: np.ndarray | None = None
    group: np.ndarray | None = None


class _Rules:
    """`Constraints` in visit positions, applied to scores of the constrained rows."""

    def __init__(self, c: Constraints, order: np.ndarray, n: int):
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        self.forced = np.zeros(n, np.int8)
        if c.forced is not None:
            self.forced = np.asarray(c.forced, dtype=np.int8)[order]
        pairs = np.asarray(c.excluded if c.excluded is not None else [], dtype=np.int64)
        pairs = position[pairs.reshape(-1, 2)]
        self.partners: dict[int, set[int]] = {}
        for a, b in pairs.tolist():
            self.partners.setdefault(a, set()).add(b)
            self.partners.setdefault(b, set()).add(a)
        self.group = np.full(n, -1, np.int64)
        if c.group is not None:
            group = np.asarray(c.group, dtype=np.int64)[order]
            labels, counts = np.unique(group[group >= 0], return_counts=True)
            shared = np.isin(group, labels[counts > 1])
            self.group[shared] = group[shared]
        self.constrained = (self.forced != 0) | (self.group >= 0)
        self.constrained[list(self.partners)] = True

    def adjust(self, scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Scores (rows x cols, visit positions) with exact copies at +inf and excluded
        pairs at -inf."""
        same = (self.group[rows][:, None] == self.group[cols][None, :]) & (
            self.group[rows][:, None] >= 0
        )
        scores = np.where(same, np.float32(np.inf), scores)
        for r, row in enumerate(rows.tolist()):
            partners = self.partners.get(row)
            if partners:
                scores[r, np.isin(cols, list(partners))] = -np.inf
        return scores

    def nearest(
        self,
        xo: np.ndarray,
        oo: np.ndarray | None,
        rows: np.ndarray,
        kept: np.ndarray,
        cap: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(best score, its kept position) of each constrained row, against the kept
        positions `kept` (exact products; -inf/-1 when none)."""
        if len(kept) == 0 or len(rows) == 0:
            return np.full(len(rows), -np.inf, np.float32), np.full(len(rows), -1, np.int64)
        s = xo[rows] @ xo[kept].T
        if oo is not None:
            s -= pair_offsets(oo[rows], oo[kept], cap)
        s = self.adjust(s, rows, kept)
        at = s.argmax(axis=1)
        return s[np.arange(len(rows)), at], kept[at]


@dataclass(frozen=True)
class KeepDecision:
    """Per image (input order): kept?, index of the kept image it duplicates, similarity."""

    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    rounds: int = 0

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def visit_order(
    image_ids: np.ndarray | list[str],
    policy: KeepPolicy,
    log_density: np.ndarray | None = None,
    quality: np.ndarray | None = None,
) -> np.ndarray:
    """Indices in the order the greedy policy visits them. `quality`: (n, 3) per image,
    colour (1, else 0), stored pixels and file bytes, for the `quality` policy."""
    ids = np.asarray(image_ids, dtype=object).astype(str)
    if policy == "first":
        return np.argsort(ids, kind="stable")
    if policy == "quality":
        if quality is None:
            raise ValueError("the 'quality' keep policy needs each image's colour, size and bytes")
        q = np.asarray(quality, dtype=np.float64).reshape(len(ids), 3)
        return np.lexsort((ids, -q[:, 2], -q[:, 1], -q[:, 0]))
    if policy == "density":
        if log_density is None:
            raise ValueError("the 'density' keep policy needs each image's log-density")
        dens = np.asarray(log_density, dtype=np.float64)
        if len(dens) != len(ids):
            raise ValueError("log_density and image_ids differ in length")
        return np.lexsort((ids, dens))
    raise ValueError(f"unknown keep policy {policy!r}; choose one of {KEEP_POLICIES}")


class ExactKeptIndex:
    """The kept set as a growing matrix: every visitor compared with every kept image, in
    products of at most MAX_SLAB_BYTES (the exact join)."""

    def __init__(self, n: int, d: int, block: int):
        self.vecs = np.empty((n, d), dtype=np.float32)
        self.pos = np.empty(n, dtype=np.int64)
        self.offsets = np.zeros(n, dtype=np.float32)
        self.size = 0
        self.chunk = max(block, MAX_SLAB_BYTES // (4 * block))
        # Each product into the same memory (see its doc), as large as the last will be.
        self.outputs = SlabOutputs(min(block, n) * min(self.chunk, n))

    def add(
        self, vectors: np.ndarray, positions: np.ndarray, offsets: np.ndarray | None = None
    ) -> None:
        at = slice(self.size, self.size + len(vectors))
        self.vecs[at] = vectors
        self.pos[at] = positions
        if offsets is not None:
            self.offsets[at] = offsets
        self.size += len(vectors)

    def nearest(
        self, queries: np.ndarray, offsets: np.ndarray | None = None, cap: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(best score, position of that kept image) per query; -inf/-1 if none. The score
        is the similarity, or with query `offsets` the margin (kept offsets as added; the
        two at most `cap` together)."""
        best = np.full(len(queries), -np.inf, dtype=np.float32)
        best_at = np.full(len(queries), -1, dtype=np.int64)
        for k0 in range(0, self.size, self.chunk):
            k1 = min(k0 + self.chunk, self.size)
            s = self.outputs.product(queries, self.vecs[k0:k1].T)
            if offsets is not None:
                val, arg = best_with_cap(s, offsets, self.offsets[k0:k1], cap)
            else:
                arg = s.argmax(axis=1)
                val = s[np.arange(len(s)), arg]
            better = val > best
            best[better] = val[better]
            best_at[better] = self.pos[k0 + arg[better]]
        return best, best_at


def greedy_keep(
    x: np.ndarray,
    order: np.ndarray,
    threshold: float,
    *,
    block: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    fixed: int = 0,
    join: str = "exact",
    nprobe: int = 16,
    offsets: np.ndarray | None = None,
    offset_cap: float | None = None,
    constraints: Constraints | None = None,
) -> KeepDecision:
    """Greedy keep over unit vectors `x` (n, d) visited in `order`; see the module doc.

    Every removed image names a kept image (same input array) with similarity > threshold
    (margin > threshold with `offsets`, one per row of x: then `similarity` holds margins;
    with `offset_cap`, a pair's two offsets count at most that much together).
    The first `fixed` images of `order` are kept unconditionally: images kept by an earlier
    decision, against which new images are decided (stable incremental decisions).
    join: "exact" compares each block with every kept image; "ann" asks an IVF index of
    the kept images (`core.decision.ann_join`, `nprobe` cells per query) for the most similar one.
    Inside a block the comparison is always exact.
    constraints: rows forced kept or removed, excluded pairs and exact-copy groups (see the
    module docstring); a forced-removed row names its best kept image above the threshold
    (-1 when none), and a row matched through its exact-copy group has score +inf. The
    first `fixed` rows of `order` must not be forced removed.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    order = np.asarray(order, dtype=np.int64)
    if len(order) != n or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError("order must be a permutation of range(len(x))")
    xo = x[order]
    oo = None if offsets is None else np.asarray(offsets, dtype=np.float32)[order]
    if oo is not None and len(oo) != n:
        raise ValueError("offsets must have one value per row of x")
    cap = None if oo is None or offset_cap is None else float(offset_cap)
    if join == "ann" and n:
        kept_index = AnnKeptIndex(xo, nprobe, oo, cap)
    elif join in ("exact", "ann"):
        kept_index = ExactKeptIndex(n, x.shape[1] if x.ndim == 2 else 1, block)
    else:
        raise ValueError(f"unknown join {join!r}: exact or ann")
    kept_o = np.zeros(n, dtype=bool)
    dup_o = np.full(n, -1, dtype=np.int64)  # visit position of the kept image
    sim_o = np.full(n, np.nan, dtype=np.float32)
    max_rounds = 0
    fixed = int(min(max(fixed, 0), n))

    def part(a: int, b: int) -> np.ndarray | None:
        return None if oo is None else oo[a:b]

    rules = None if constraints is None else _Rules(constraints, order, n)
    if rules is not None and (rules.forced[:fixed] == -1).any():
        raise ValueError("a row kept by an earlier decision (fixed) cannot be forced removed")
    kept_index.add(xo[:fixed], np.arange(fixed), part(0, fixed))
    kept_o[:fixed] = True
    for start in range(fixed, n, block):
        stop = min(start + block, n)
        xb = xo[start:stop]
        ob = part(start, stop)
        best, best_at = kept_index.nearest(xb, ob, cap)
        # A copy of the block as the other factor: `xb @ xb.T` is BLAS's symmetric product
        # (syrk), twice as slow here as the general one (19 against 10 ms, 2048 x 128).
        s_block = xb @ np.ascontiguousarray(xb.T)
        if ob is not None:
            s_block -= pair_offsets(ob, ob, cap)
        forced = np.zeros(stop - start, np.int8)
        if rules is not None:
            forced = rules.forced[start:stop]
            ruled = np.flatnonzero(rules.constrained[start:stop])
            if len(ruled):  # compared again, exactly, with their rules applied
                pos = start + ruled
                best[ruled], best_at[ruled] = rules.nearest(
                    xo, oo, pos, np.flatnonzero(kept_o[:start]), cap
                )
                s_block[np.ix_(ruled, ruled)] = rules.adjust(
                    s_block[np.ix_(ruled, ruled)], pos, pos
                )
        # Not removed by an earlier block (and not forced removed), or forced kept.
        cand = np.flatnonzero(((best <= threshold) & (forced != -1)) | (forced == 1))
        kept_block = np.zeros(stop - start, dtype=bool)
        if len(cand):
            kept_cand, rounds = _resolve_block(
                s_block[np.ix_(cand, cand)], threshold, forced[cand] == 1
            )
            kept_block[cand[kept_cand]] = True
            max_rounds = max(max_rounds, rounds)
        # A removed image names the most similar image kept before it, in this block or earlier.
        local = np.where(np.tri(len(xb), k=-1, dtype=bool) & kept_block[None, :], s_block, -np.inf)
        local_at = local.argmax(axis=1)
        local_best = local[np.arange(len(xb)), local_at]
        use_local = local_best > best
        gone = ~kept_block
        pos = np.arange(start, stop)
        kept_o[pos[kept_block]] = True
        dup_o[pos[gone]] = np.where(use_local, start + local_at, best_at)[gone]
        sim_o[pos[gone]] = np.where(use_local, local_best, best)[gone]
        new = pos[kept_block]
        kept_index.add(xo[new], new, None if oo is None else oo[new])
        if progress is not None:
            progress(stop, n)
    if rules is not None:  # a forced removal names its best kept image above the threshold
        gone = np.flatnonzero(rules.forced == -1)
        best, best_at = rules.nearest(xo, oo, gone, np.flatnonzero(kept_o), cap)
        above = best > threshold
        dup_o[gone] = np.where(above, best_at, -1)
        sim_o[gone] = np.where(above, best, np.nan)
    kept = np.zeros(n, dtype=bool)
    kept[order] = kept_o
    duplicate_of = np.full(n, -1, dtype=np.int64)
    has = dup_o >= 0
    duplicate_of[order[has]] = order[dup_o[has]]
    similarity = np.full(n, np.nan, dtype=np.float32)
    similarity[order] = sim_o
    return KeepDecision(kept, duplicate_of, similarity, max_rounds)


def _resolve_block(
    s: np.ndarray, threshold: float, forced: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Greedy MIS inside one block, in vectorised rounds; s: similarities in visit order.

    A row is kept once every earlier neighbour is removed; it is removed as soon as one
    earlier neighbour is kept. Each round decides at least the first undecided row. Rows
    `forced` are kept from the start (their earlier neighbours do not depend on them).
    """
    m = len(s)
    adj = ((s > threshold) & np.tri(m, k=-1, dtype=bool)).astype(np.float32)  # j earlier than i
    kept = np.zeros(m, dtype=bool) if forced is None else np.asarray(forced, dtype=bool).copy()
    undecided = ~kept
    rounds = 0
    while undecided.any():
        rounds += 1
        has_kept = (adj @ kept.astype(np.float32)) > 0
        open_earlier = (adj @ undecided.astype(np.float32)) > 0
        newly_removed = undecided & has_kept
        newly_kept = undecided & ~has_kept & ~open_earlier
        kept |= newly_kept
        undecided &= ~(newly_removed | newly_kept)
    return kept, rounds
