"""Which images of one class survive: exact copies first, then the greedy similarity keep.

The one function that decides a class, used by the keep-list assets, the evaluation and
the benchmarks alike:

1. **Exact copies.** Images whose decoded pixels are identical (same `pixel_hash`) form a
   group; only its first image in visit order (the representative) goes on. Every other
   member is removed at every threshold and in every space, naming the kept image with
   similarity 1.0. When the representative itself is removed as a near-duplicate of a
   kept image K, its copies name K with the representative's similarity to K. No
   embedding can hide an exact copy this way, not even a zero one.
2. **Near-duplicates.** The representatives are embedded in the chosen space (a small
   registry of vectorisers: the latent spaces, the DCT descriptor and the two hash
   baselines, pHash and PDQ) and kept greedily in the policy's visit order
   (`keep_policy.greedy_keep`).

3. **Corrections** (`Corrections`, from a user's `overrides.csv`: `core.decision.overrides`)
   are rules of the same greedy (`keep_policy.Constraints`), so what follows an override is
   decided as consistently as the rest:
   - `keep` X: X is kept at every threshold, where it is visited: images visited before it
     keep their decision, images after it may be removed naming X. Copies of X follow it.
   - `remove` X: X is never kept, so no image names it: an image that named X is decided
     again (it names another kept image above the threshold, or is kept). X itself names its
     most similar kept image when that pair is above the threshold (else nothing).
   - `not_duplicate` X, Y: the pair is no edge of the similarity graph in either direction,
     exact copies included; X and Y are each decided without it.
   An image an override names is taken out of its exact-copy group's shortcut and decided
   on its own, but a group's members stay duplicates of each other (score +inf), so a group
   still keeps one member unless an override says otherwise (`keep` of a second member, or
   `not_duplicate` between two). With `prior` (stable decisions), an image an override names
   is always decided now, never carried, and so is every image that named it.

A class too small for the fitted spaces (fewer than MIN_FITTED_COMPONENTS principal
components: under 32 images, or a class of copies with little variety) is decided by
pHash instead of `whitened`/`spline_copula`: the cosine of k-dimensional centred vectors
is meaningless for small k (in one dimension every pair on the same side of the mean has
cosine 1, so distinct images would be removed). The decision records the space it used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dedup_assets.core.decision.ann_join import (
    DEFAULT_ANN_MIN_CLASS_SIZE,
    DEFAULT_NPROBE,
    resolve_join,
)
from dedup_assets.core.decision.dct_descriptor import lowfreq_dct
from dedup_assets.core.decision.keep_policy import (
    Constraints,
    KeepDecision,
    greedy_keep,
    visit_order,
)
from dedup_assets.core.decision.pdq import pdq_hashes
from dedup_assets.core.decision.phash import hash_vectors, phash_bits
from dedup_assets.core.decision.similarity import embed, joined, with_origin_axis
from dedup_assets.core.density.class_density import ClassDensityModel


@dataclass(frozen=True)
class ClassData:
    """What deciding one class needs; `pixels` only for the pixel spaces (DCT, pHash,
    PDQ), or in their place `descriptors`: the images' "dct" (`dct_descriptor.lowfreq_dct`),
    "phash" and "pdq" bits, computed once (the reference pool stores them, not pixels)."""

    image_ids: np.ndarray
    pixel_hashes: np.ndarray
    latents: np.ndarray
    model: ClassDensityModel
    pixels: np.ndarray | None = None
    descriptors: Mapping[str, np.ndarray] | None = None
    quality: np.ndarray | None = None  # (n, 3): colour, stored pixels, bytes (`keep_policy`)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if len(self.pixel_hashes) != n or len(self.latents) != n:
            raise ValueError("image_ids, pixel_hashes and latents differ in length")


def _pixels(data: ClassData, space: str) -> np.ndarray:
    if data.pixels is None:
        raise ValueError(f"the {space} space needs the class's pixels")
    return np.asarray(data.pixels)


def _descriptor(data: ClassData, name: str, space: str) -> np.ndarray:
    """The images' pixel descriptor `name` ("dct", "phash" or "pdq" bits): stored, or
    computed."""
    if data.descriptors is not None and name in data.descriptors:
        return np.asarray(data.descriptors[name])
    pixels = _pixels(data, space)
    if name == "phash":
        return phash_bits(pixels)
    if name == "pdq":
        return pdq_hashes(pixels).bits
    return lowfreq_dct(pixels)


def _phash_vectors(data: ClassData) -> np.ndarray:
    return hash_vectors(_descriptor(data, "phash", "phash"))


def _pdq_vectors(data: ClassData) -> np.ndarray:
    """PDQ's 256 bits as unit vectors: dot product 1 - Hamming/256, pHash's scale."""
    return hash_vectors(_descriptor(data, "pdq", "pdq"))


def _dct_vectors(data: ClassData) -> np.ndarray:
    return with_origin_axis(_descriptor(data, "dct", "dct"))


def _joined_vectors(data: ClassData) -> np.ndarray:
    pixels = _descriptor(data, "dct", "spline_copula_dct")
    return joined(embed(data.latents, "spline_copula", data.model), pixels)


# Random directions in 8 dimensions have cosine > 0.9 with probability ~5e-4; in 2, 14%.
MIN_FITTED_COMPONENTS = 8
FITTED_SPACES = frozenset({"whitened", "spline_copula", "spline_copula_dct"})
# What a class too small for a fitted space is decided in: the pixel part of a joined space,
# pHash for the latent-only ones.
SMALL_CLASS_SPACE = {"spline_copula_dct": "dct"}
PIXEL_SPACES = frozenset({"phash", "pdq", "dct", "spline_copula_dct"})
# The pixel spaces whose only pixel part is the DCT descriptor (`_descriptor(..., "dct")`):
# stored descriptors stand in for their pixels (`class_keep.load_class_data`).
DCT_SPACES = frozenset({"dct", "spline_copula_dct"})


def space_for(model: ClassDensityModel | None, space: str) -> str:
    """The space a class is decided in: `space`, or a space without a fit (the DCT
    descriptor or pHash) for a class too small for it."""
    if space in FITTED_SPACES and (model is None or model.n_components < MIN_FITTED_COMPONENTS):
        return SMALL_CLASS_SPACE.get(str(space), "phash")
    return str(space)


def unfitted_space(space: str) -> str:
    """The space without a class fit that `space` falls back to (`space` itself when it
    has no fit): where images of different classes are comparable, so a class can borrow
    the run's other classes as decoys (`core.decision.reference_pool`)."""
    if space in FITTED_SPACES:
        return SMALL_CLASS_SPACE.get(str(space), "phash")
    return str(space)


def needs_pixels(model: ClassDensityModel | None, space: str) -> bool:
    """Whether deciding a class in `space` reads its pixels (a budget that borrows the
    run's pool reads them in the unfitted space too)."""
    return space_for(model, space) in PIXEL_SPACES


VECTORISERS: dict[str, Callable[[ClassData], np.ndarray]] = {
    "raw": lambda d: embed(d.latents, "raw"),
    "whitened": lambda d: embed(d.latents, "whitened", d.model),
    "spline_copula": lambda d: embed(d.latents, "spline_copula", d.model),
    "spline_copula_dct": _joined_vectors,
    "dct": _dct_vectors,
    "phash": _phash_vectors,
    "pdq": _pdq_vectors,
}


def vectorise(data: ClassData, space: str) -> np.ndarray:
    """Unit vectors of every image of the class (dot product = similarity), in `space` or
    in the space `space_for` falls back to for a small class."""
    if space not in VECTORISERS:
        raise ValueError(f"unknown similarity space {space!r}; choose one of {list(VECTORISERS)}")
    return VECTORISERS[space_for(data.model, space)](data)


def vectorise_as(data: ClassData, used: str) -> np.ndarray:
    """Unit vectors of the class in exactly the space `used` (no fallback): a space that
    `space_for` or `unfitted_space` has already chosen."""
    if used not in VECTORISERS:
        raise ValueError(f"unknown similarity space {used!r}; choose one of {list(VECTORISERS)}")
    return VECTORISERS[used](data)


def class_order(data: ClassData, policy: str) -> np.ndarray:
    """Indices in the keep policy's visit order."""
    log_density = data.model.log_density(data.latents) if policy == "density" else None
    return visit_order(data.image_ids, policy, log_density, data.quality)


@dataclass(frozen=True)
class ClassDecision:
    """One threshold's decision for every image of a class (input order).

    threshold: the class's threshold (a cosine, or with levels the margin a pair must
    exceed, `core.decision.local_scaling`);
    duplicate_of: index of the kept image a removed image duplicates (-1 if kept);
    similarity: the cosine of a removed image with the image it names;
    exact: removed as a pixel-identical copy of the kept image it names;
    space: the similarity space the near-duplicates were found in;
    carried: the decision was carried over from an earlier one (not made now);
    cosine: the cosine each row was decided at: `threshold` itself without levels; with
    them, a removed image's pair threshold (threshold + the two offsets) and a kept image's
    threshold against an image of its own level (threshold + twice its offset). None
    means `threshold` for every row.
    forced: per row, 1 kept and -1 removed by a correction, 0 otherwise (None: no
    correction); overridden: the rows a correction names (None: none).
    """

    threshold: float
    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray
    rounds: int = 0
    space: str = ""
    carried: np.ndarray | None = None
    join: str = "exact"
    cosine: np.ndarray | None = None
    forced: np.ndarray | None = None
    overridden: np.ndarray | None = None

    def cosines(self) -> np.ndarray:
        """The cosine of every row (see the class doc)."""
        if self.cosine is not None:
            return self.cosine
        return np.full(len(self.kept), self.threshold, dtype=np.float64)

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())


def exact_groups(pixel_hashes: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(representative of each image's group, representatives in visit order).

    The representative of a group of identical images is its first member in `order`.
    """
    n = len(pixel_hashes)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    _, group = np.unique(np.asarray(pixel_hashes, dtype=str), return_inverse=True)
    by_group_then_rank = np.lexsort((rank, group))
    first = np.ones(n, dtype=bool)
    first[1:] = group[by_group_then_rank][1:] != group[by_group_then_rank][:-1]
    rep_of_group = np.empty(group.max() + 1 if n else 0, dtype=np.int64)
    rep_of_group[group[by_group_then_rank[first]]] = by_group_then_rank[first]
    representative = rep_of_group[group]
    reps = by_group_then_rank[first]
    return representative, reps[np.argsort(rank[reps], kind="stable")]


@dataclass(frozen=True)
class PriorDecision:
    """An earlier decision of one threshold, mapped onto the current images (input order).

    state: 1 kept, 0 removed, -1 new (no earlier decision); duplicate_of indexes the
    current images (-1 when the image it named is gone); cosine: the cosine each row was
    decided at (NaN where unknown), carried with the decision.
    """

    state: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray
    cosine: np.ndarray | None = None

    @classmethod
    def none(cls, n: int) -> PriorDecision:
        return cls(
            np.full(n, -1, np.int8),
            np.full(n, -1, np.int64),
            np.full(n, np.nan, np.float64),  # as the keep list stores it: carried exactly
            np.zeros(n, bool),
            np.full(n, np.nan, np.float64),
        )


@dataclass(frozen=True)
class Corrections:
    """A user's corrections of one class, as indices of its images (input order); see the
    module docstring. keep, remove: image indices; not_duplicate: (k, 2) index pairs."""

    keep: np.ndarray
    remove: np.ndarray
    not_duplicate: np.ndarray

    @classmethod
    def of(
        cls,
        keep: Sequence[int] = (),
        remove: Sequence[int] = (),
        not_duplicate: Sequence[tuple[int, int]] = (),
    ) -> Corrections:
        return cls(
            np.asarray(keep, dtype=np.int64).reshape(-1),
            np.asarray(remove, dtype=np.int64).reshape(-1),
            np.asarray(not_duplicate, dtype=np.int64).reshape(-1, 2),
        )

    def __post_init__(self) -> None:
        if np.intersect1d(self.keep, self.remove).size:
            raise ValueError("an image cannot be both kept and removed by corrections")
        if (self.not_duplicate[:, 0] == self.not_duplicate[:, 1]).any():
            raise ValueError("an image cannot be marked not a duplicate of itself")

    def __bool__(self) -> bool:
        return bool(len(self.keep) or len(self.remove) or len(self.not_duplicate))

    def named(self) -> np.ndarray:
        """Every image a correction names, sorted."""
        return np.unique(np.concatenate([self.keep, self.remove, self.not_duplicate.ravel()]))

    def forced(self, n: int) -> np.ndarray:
        """Per image of n: 1 kept, -1 removed, 0 free."""
        out = np.zeros(n, np.int8)
        out[self.keep] = 1
        out[self.remove] = -1
        return out


def _first_by_hash(
    indices: np.ndarray, hashes: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique hashes, the first index in visit order holding each) of `indices`."""
    if len(indices) == 0:
        return np.zeros(0, dtype=hashes.dtype), np.zeros(0, np.int64)
    ordered = indices[np.argsort(rank[indices], kind="stable")]
    unique, first = np.unique(hashes[ordered], return_index=True)
    return unique, ordered[first]


def _lookup(unique: np.ndarray, holders: np.ndarray, query: np.ndarray) -> np.ndarray:
    """For each query hash, the holder index with that hash, or -1."""
    if len(unique) == 0:
        return np.full(len(query), -1, np.int64)
    at = np.clip(np.searchsorted(unique, query), 0, len(unique) - 1)
    return np.where(unique[at] == query, holders[at], -1)


def _first_kept_copy(
    copies: np.ndarray,
    reps: np.ndarray,
    kept_named: np.ndarray,
    hashes: np.ndarray,
    rank: np.ndarray,
    kept: np.ndarray,
) -> np.ndarray:
    """Per copy, the image it follows: its representative when that is kept, else the first
    image named by a correction, kept and with its pixels, visited before the copy, else
    (none) its representative, whose removal it shares."""
    out = reps.copy()
    for k in kept_named[np.argsort(-rank[kept_named], kind="stable")]:  # last first: first wins
        take = (hashes[copies] == hashes[k]) & (rank[k] < rank[copies])
        out[take & (~kept[out] | (rank[k] < rank[out]))] = k
    return out


def keep_decisions(
    vectors: np.ndarray,
    order: np.ndarray,
    pixel_hashes: np.ndarray,
    thresholds: Sequence[float],
    *,
    block: int = 2048,
    space: str = "",
    prior: Sequence[PriorDecision | None] | None = None,
    join: str = "exact",
    nprobe: int = 16,
    offsets: Sequence[np.ndarray | None] | None = None,
    corrections: Corrections | None = None,
    offset_caps: Sequence[float | None] | None = None,
) -> list[ClassDecision]:
    """Exact copies first, then the greedy keep over `vectors` in `order`, per threshold.

    With `prior` (one per threshold), decisions are stable: an image kept before stays
    kept, an image removed before stays removed while the image it names is kept, and
    only the rest (new images, and those whose kept image is gone) are decided, against
    the kept set: a new exact copy of a kept image is removed naming it. With `offsets`
    (one per threshold, None for a plain cosine), that threshold is a margin
    (`core.decision.local_scaling`), and `offset_caps` (one per threshold, None for none)
    the most a pair's two offsets count together (a budget's ceiling less its margin). With `corrections`, the user's rules hold at every
    threshold (see the module docstring); without, the decision is exactly as before.
    """
    n = len(vectors)
    thresholds = [float(t) for t in thresholds]
    priors = list(prior) if prior is not None else [None] * len(thresholds)
    per_offsets = list(offsets) if offsets is not None else [None] * len(thresholds)
    per_cap = list(offset_caps) if offset_caps is not None else [None] * len(thresholds)
    if len(per_cap) != len(thresholds):
        raise ValueError("offset_caps must give one cap (or None) per threshold")
    if n == 0:
        empty = np.zeros(0)
        return [
            ClassDecision(
                t, empty.astype(bool), empty.astype(np.int64), empty, empty, 0, space, None, join
            )
            for t in thresholds
        ]
    vectors = np.asarray(vectors)
    hashes = np.asarray(pixel_hashes, dtype=str)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(order)] = np.arange(n)
    rules = corrections if corrections is not None and corrections else None
    named = rules.named() if rules is not None else np.zeros(0, np.int64)
    is_named = np.zeros(n, bool)
    is_named[named] = True
    force = rules.forced(n) if rules is not None else None
    decisions = []
    for t, p, off, cap in zip(thresholds, priors, per_offsets, per_cap, strict=True):
        p = p if p is not None else PriorDecision.none(n)
        off = None if off is None else np.asarray(off, dtype=np.float32)
        fixed = (p.state == 1) & ~is_named  # a corrected image is decided now, never carried
        names = np.where(p.duplicate_of >= 0, p.duplicate_of, 0)
        retained = (p.state == 0) & (p.duplicate_of >= 0) & fixed[names] & ~is_named
        kept = fixed.copy()
        duplicate_of = np.where(retained, p.duplicate_of, -1).astype(np.int64)
        similarity = np.where(retained, p.similarity, np.nan).astype(np.float64)
        exact = retained & p.exact
        undecided = np.flatnonzero(~fixed & ~retained & ~is_named)
        # A new image identical to an image decided before follows that image.
        of_kept = _lookup(*_first_by_hash(np.flatnonzero(fixed), hashes, rank), hashes[undecided])
        of_removed = _lookup(
            *_first_by_hash(np.flatnonzero(retained), hashes, rank), hashes[undecided]
        )
        copy_of_kept = of_kept >= 0
        duplicate_of[undecided[copy_of_kept]] = of_kept[copy_of_kept]
        similarity[undecided[copy_of_kept]] = 1.0
        exact[undecided[copy_of_kept]] = True
        copy_of_removed = ~copy_of_kept & (of_removed >= 0)
        source = of_removed[copy_of_removed]
        duplicate_of[undecided[copy_of_removed]] = duplicate_of[source]
        similarity[undecided[copy_of_removed]] = similarity[source]
        fresh = undecided[~copy_of_kept & ~copy_of_removed]
        # The rest: exact copies among themselves, then the greedy keep against the kept set;
        # each corrected image is visited on its own, with its group's copies as duplicates.
        representative, reps = exact_groups(hashes[fresh], np.argsort(rank[fresh], kind="stable"))
        representative, reps = fresh[representative], fresh[reps]
        if rules is not None:
            reps = np.concatenate([reps, named])
            reps = reps[np.argsort(rank[reps], kind="stable")]
        kept_before = np.flatnonzero(fixed)
        pool = np.concatenate([kept_before, reps])
        constraints = None
        if rules is not None and force is not None:
            at = np.full(n, -1, np.int64)
            at[pool] = np.arange(len(pool))
            constraints = Constraints(
                forced=force[pool],
                excluded=at[rules.not_duplicate],
                group=np.unique(hashes[pool], return_inverse=True)[1],
            )
        d: KeepDecision = greedy_keep(
            vectors[pool],
            np.arange(len(pool)),
            t,
            block=block,
            fixed=len(kept_before),
            join=join,
            nprobe=nprobe,
            offsets=None if off is None else off[pool],
            offset_cap=cap,
            constraints=constraints,
        )
        new = slice(len(kept_before), None)
        kept[reps] = d.kept[new]
        has = d.duplicate_of[new] >= 0
        duplicate_of[reps[has]] = pool[d.duplicate_of[new][has]]
        score = d.similarity[new].astype(np.float64)
        if off is not None:  # a margin back to a cosine: plus the pair's two offsets
            pair = _pair_offset(off, reps, np.maximum(duplicate_of[reps], 0), cap)
            score = score + np.where(has, pair, 0.0)
        similarity[reps] = np.where(has, score, np.nan)
        if force is not None:  # named through its exact-copy group (score +inf): a copy
            copy = has & (hashes[reps] == hashes[np.maximum(duplicate_of[reps], 0)])
            similarity[reps[copy]] = 1.0
            exact[reps[copy & (force[reps] != -1)]] = True  # a forced removal stays one
        copies = representative != fresh
        rep = representative[copies]
        if force is not None:  # a copy names the first kept member of its group before it
            rep = _first_kept_copy(fresh[copies], rep, named[kept[named]], hashes, rank, kept)
        rep_kept = kept[rep]
        duplicate_of[fresh[copies]] = np.where(rep_kept, rep, duplicate_of[rep])
        similarity[fresh[copies]] = np.where(rep_kept, 1.0, similarity[rep])
        exact[fresh[copies]] = rep_kept | exact[rep]
        cosine = np.full(n, t, dtype=np.float64)
        if off is not None:  # the pair's threshold: the margin plus both offsets (capped)
            named = np.where(duplicate_of >= 0, duplicate_of, np.arange(n))
            cosine = t + _pair_offset(off, np.arange(n), named, cap)
        carried = fixed | retained
        if p.cosine is not None:  # a carried decision keeps the cosine it was made at
            recorded = carried & np.isfinite(p.cosine)
            cosine = np.where(recorded, p.cosine, cosine)
        # A new copy of a removed image follows it: its name, similarity and the cosine
        # that similarity was judged against (the class's threshold now may be another).
        cosine[undecided[copy_of_removed]] = cosine[source]
        decisions.append(
            ClassDecision(
                t,
                kept,
                duplicate_of,
                similarity,
                exact,
                d.rounds,
                space,
                carried,
                join,
                cosine,
                force,
                is_named if rules is not None else None,
            )
        )
    return decisions


def _pair_offset(off: np.ndarray, a: np.ndarray, b: np.ndarray, cap: float | None) -> np.ndarray:
    """What pairs (a[k], b[k]) lose from their cosine: both offsets, at most `cap`."""
    pair = off[a].astype(np.float64) + off[b].astype(np.float64)
    return pair if cap is None else np.minimum(pair, float(np.float32(cap)))


def decide_class(
    data: ClassData,
    thresholds: Sequence[float],
    *,
    space: str,
    policy: str,
    block: int = 2048,
    prior: Sequence[PriorDecision | None] | None = None,
    join: str = "auto",
    ann_min_class_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
    nprobe: int = DEFAULT_NPROBE,
    offsets: Sequence[np.ndarray | None] | None = None,
    vectors: np.ndarray | None = None,
    spaces: Sequence[str | None] | None = None,
    corrections: Corrections | None = None,
    offset_caps: Sequence[float | None] | None = None,
) -> list[ClassDecision]:
    """Decide every image of a class at each threshold; see the module docstring and
    `keep_decisions` for `prior` (stable incremental decisions), `offsets` (margins),
    `offset_caps` (their ceilings) and `corrections` (a user's overrides);
    `vectors`, the class's `vectorise(data, space)` when already made.
    join: exact, ann, or auto (approximate for classes above ann_min_class_size images,
    `core.decision.ann_join`). spaces: per threshold, the space it is decided in when not the
    class's own (a budget read from the run's pool is decided in `unfitted_space`)."""
    used = space_for(data.model, space)
    n_t = len(thresholds)
    per_space = [used if s is None else str(s) for s in (spaces or [None] * n_t)]
    if len(per_space) != n_t:
        raise ValueError("spaces must give one space (or None) per threshold")
    if len(data.image_ids) == 0:
        return [
            keep_decisions(
                np.zeros((0, 1)), np.zeros(0, np.int64), data.pixel_hashes, [t], space=s
            )[0]
            for t, s in zip(thresholds, per_space, strict=True)
        ]
    order = class_order(data, policy)
    resolved_join = resolve_join(join, len(data.image_ids), ann_min_class_size)
    priors = list(prior) if prior is not None else [None] * n_t
    per_offsets = list(offsets) if offsets is not None else [None] * n_t
    per_cap = list(offset_caps) if offset_caps is not None else [None] * n_t
    out: list[ClassDecision | None] = [None] * n_t
    for s in dict.fromkeys(per_space):  # each space once, in the thresholds' order
        at = [k for k in range(n_t) if per_space[k] == s]
        if s == used:
            vecs = vectorise(data, space) if vectors is None else vectors
        else:
            vecs = vectorise_as(data, s)
        decided = keep_decisions(
            vecs,
            order,
            data.pixel_hashes,
            [thresholds[k] for k in at],
            block=block,
            space=s,
            prior=[priors[k] for k in at],
            join=resolved_join,
            nprobe=nprobe,
            offsets=[per_offsets[k] for k in at],
            corrections=corrections,
            offset_caps=[per_cap[k] for k in at],
        )
        for k, d in zip(at, decided, strict=True):
            out[k] = d
    return [d for d in out if d is not None]
