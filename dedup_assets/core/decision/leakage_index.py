"""One evaluation split's leakage judgement kept between runs (`LeakageIndex`): new training
images are checked against the split, and new evaluation images against train, without
comparing again what did not change.

What `core.decision.leakage` computes (its module doc) is a set of top lists: each eval
image's best-scoring training images (over its crop views), each decoy's, each decoy
source's nearest training images, and each training image's nearest training images (its
density). A score is cos(query, t) - HUB_PENALTY x density(t). The index keeps those lists
with the vectors they were computed from, and on an update:

- new training images B: every training image's density list merges B (adding candidates
  to a top list is exact); the densities that rose (the images near B) lower every list
  entry naming them by exactly HUB_PENALTY x the rise, in place; every list merges its best
  scores against B alone. Decoys that the plan now wants (`plan_decoys` samples by a hash
  of the image id, so a sample grows by the new images only) are encoded and compared with
  the whole training split.
- new or removed evaluation images: their rows (and their decoys) are computed against the
  whole training split, or dropped.
- a removed or changed training image, another model, budget, join or rule, or a training
  split grown past REFIT_GROWTH x the one the space was fitted on: the index is built again
  (`can_update`).

Exactness. Each list carries a floor: no training image outside it scores above it (its
k-th score when full; scores only fall as densities rise; B's own lists have theirs). A
list is trusted where what is read from it lies at or above its floor (a decoy's first
allowed entry, an eval image's nearest and every entry above the threshold); the rows that
are not are compared again with the whole training split. So an updated index judges as a
fresh build on the same space does, up to float rounding (tests/test_leakage_index.py).

The space (`LeakageSpace`, the training latents' shared axes) is fitted when the index is
built and kept while the training split grows, as the model is kept for new images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dedup_assets.core.data.atomic_io import save_npz
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.membership import among
from dedup_assets.core.decision.ann_join import (
    DEFAULT_ANN_MIN_CLASS_SIZE,
    DEFAULT_NPROBE,
    resolve_join,
)
from dedup_assets.core.decision.cross_class import SharedSpace
from dedup_assets.core.decision.leakage import (
    DECOYS,
    DEFAULT_LEAKAGE_BUDGET,
    DENSITY_NEIGHBOURS,
    HUB_PENALTY,
    K_NEIGHBOURS,
    LEAKAGE_RULE,
    LEAKAGE_SCHEMA,
    LEAKAGE_WEIGHT,
    PAIR_SCHEMA,
    DecoyDraws,
    LeakageResult,
    LeakageSpace,
    SplitImages,
    budget_threshold,
    cache_dir,
    crop_views,
    decoy_pixels,
    exact_matches,
    in_order,
    leakage_rows,
    leakage_threshold,
    leaks_from_lists,
    load_images,
    plan_decoys,
    views_top_k,
)

COPIES = 16
"""Training images listed per eval image (the near copies `find_leaks` reports at most)."""
EXACT_LEFT_OUT = 4
"""A decoy source's exact copies in train left out of its draw, at most."""
DECOY_WIDTH = 1 + EXACT_LEFT_OUT + (K_NEIGHBOURS + 1) + 1
"""A decoy's list: room for its source, the source's exact copies and nearest images (all
of which its draw may skip) and one more."""
REFIT_GROWTH = 1.25
"""The training split may grow to this many times the images the space was fitted on
before the index is built again (a new space)."""
FORMAT = 1


@dataclass
class TopLists:
    """Per query, its k best training rows by score (`vals` descending, -inf / -1 where
    empty) and a `floor`: no training row outside the list scores above it."""

    vals: np.ndarray
    idx: np.ndarray
    floor: np.ndarray

    @classmethod
    def fresh(cls, vals: np.ndarray, idx: np.ndarray) -> TopLists:
        """Lists computed against every training row: the floor is the k-th score."""
        floor = np.where(idx[:, -1] >= 0, vals[:, -1], -np.inf)
        return cls(vals.astype(np.float32), idx.astype(np.int64), floor.astype(np.float32))

    @classmethod
    def empty(cls, k: int) -> TopLists:
        return cls(
            np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), np.zeros(0, np.float32)
        )

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, rows: np.ndarray) -> TopLists:
        return TopLists(self.vals[rows], self.idx[rows], self.floor[rows])

    def put(self, rows: np.ndarray, other: TopLists) -> None:
        self.vals[rows], self.idx[rows], self.floor[rows] = other.vals, other.idx, other.floor

    @staticmethod
    def concat(parts: Sequence[TopLists], k: int) -> TopLists:
        parts = [p for p in parts if len(p)]
        if not parts:
            return TopLists.empty(k)
        return TopLists(
            np.concatenate([p.vals for p in parts]),
            np.concatenate([p.idx for p in parts]),
            np.concatenate([p.floor for p in parts]),
        )

    def lower(self, drop: np.ndarray) -> None:
        """Each entry's score less `drop` of its training row (a density that rose), the
        lists sorted again; the floor stands (scores outside only fell too)."""
        ok = self.idx >= 0
        if not ok.any() or not drop.any():
            return
        vals = self.vals.copy()
        vals[ok] -= drop[self.idx[ok]].astype(np.float32)
        order = np.argsort(-vals, axis=1, kind="stable")
        self.vals = np.take_along_axis(vals, order, axis=1)
        self.idx = np.take_along_axis(self.idx, order, axis=1)

    def merge(self, other: TopLists) -> None:
        """Merge the lists of the same queries against other training rows (`other`'s
        indices already global): the k best of both; the floor the highest score left out
        of either."""
        k = self.vals.shape[1]
        vals = np.concatenate([self.vals, other.vals], axis=1)
        idx = np.concatenate([self.idx, other.idx], axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        vals, idx = np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)
        dropped = vals[:, k] if vals.shape[1] > k else np.full(len(vals), -np.inf, np.float32)
        self.floor = np.maximum.reduce([self.floor, other.floor, dropped]).astype(np.float32)
        self.vals, self.idx = vals[:, :k], idx[:, :k]

    def first_allowed(self, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the best score whose row is not in that row of `banned`, and whether
        it can be trusted (at or above the floor; or no floor: the list holds every row)."""
        ok = ~(self.idx[:, :, None] == banned[:, None, :]).any(axis=2) & (self.idx >= 0)
        first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
        rows = np.arange(len(self.vals))
        value = np.where(first >= 0, self.vals[rows, np.maximum(first, 0)], -np.inf)
        trusted = (value >= self.floor) | ~np.isfinite(self.floor)
        return value.astype(np.float32), trusted

    def trusted_above(self, cut: float | np.ndarray) -> np.ndarray:
        """Rows whose entries above `cut` are all listed (every row scoring above it is in
        the list), and whose first entry is the true best."""
        open_floor = ~np.isfinite(self.floor)
        best = (self.vals[:, 0] >= self.floor) | open_floor if self.vals.shape[1] else open_floor
        complete = (self.vals[:, -1] >= self.floor) if self.vals.shape[1] else open_floor
        return best & ((np.asarray(cut) >= self.floor) | complete | open_floor)


@dataclass
class UpdateCounts:
    """What one `LeakageIndex.update` did: images and decoys added or dropped, images
    encoded (with their crop views), rows compared again with the whole training split."""

    train_added: int = 0
    eval_added: int = 0
    eval_removed: int = 0
    decoys_added: int = 0
    decoys_removed: int = 0
    encoded: int = 0
    recompared: int = 0


@dataclass
class LeakageIndex:
    """The state of one evaluation split's judgement (module doc). Train rows are in the
    order they were added; `eval_views` and `decoy_views` are (views, n, d) unit vectors
    (view 0 the image itself); a decoy is keyed `source<TAB>kind<TAB>image id` and keeps
    its source's training row (-1 for an eval source), pixel hash and vector."""

    space: LeakageSpace
    settings: dict
    fitted_on: int
    train_ids: np.ndarray
    train_hashes: np.ndarray
    train_vec: np.ndarray
    dens: TopLists
    eval_ids: np.ndarray
    eval_hashes: np.ndarray
    eval_views: np.ndarray
    eval_top: TopLists
    decoy_keys: np.ndarray
    decoy_self: np.ndarray
    decoy_hash: np.ndarray
    decoy_src: np.ndarray
    decoy_views: np.ndarray
    decoy_top: TopLists
    near: TopLists

    # -------------------------------------------------------------------- construction

    @classmethod
    def empty(cls, space: LeakageSpace, settings: dict, fitted_on: int) -> LeakageIndex:
        d = cls._dim(space)
        v = settings["views"]
        return cls(
            space,
            dict(settings),
            int(fitted_on),
            np.zeros(0, str),
            np.zeros(0, str),
            np.zeros((0, d), np.float32),
            TopLists.empty(DENSITY_NEIGHBOURS + 1),
            np.zeros(0, str),
            np.zeros(0, str),
            np.zeros((v, 0, d), np.float32),
            TopLists.empty(COPIES),
            np.zeros(0, str),
            np.zeros(0, np.int64),
            np.zeros(0, str),
            np.zeros((0, d), np.float32),
            np.zeros((v, 0, d), np.float32),
            TopLists.empty(DECOY_WIDTH),
            TopLists.empty(K_NEIGHBOURS + 1),
        )

    @staticmethod
    def _dim(space: LeakageSpace) -> int:
        latent = (
            space.shared.mean.shape[0] if space.shared.axes is None else space.shared.axes.shape[1]
        )
        if space.weight >= 1.0:
            return int(latent)
        from dedup_assets.core.decision.dct_descriptor import DIMENSIONS

        return int(latent + DIMENSIONS + 1)  # `similarity.joined`'s origin axis

    @classmethod
    def build(
        cls,
        train: SplitImages,
        ev: SplitImages,
        encode: Callable[[np.ndarray], np.ndarray],
        *,
        budget: float = DEFAULT_LEAKAGE_BUDGET,
        weight: float = LEAKAGE_WEIGHT,
        views: bool = True,
        hub_penalty: float = HUB_PENALTY,
        join: str = "auto",
        ann_min_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
        nprobe: int = DEFAULT_NPROBE,
        space: LeakageSpace | None = None,
        extra: dict | None = None,
    ) -> LeakageIndex:
        """An index of `ev` against `train` from nothing: the space fitted on train (unless
        given), everything compared. `extra` joins the settings (what else an index must
        match to be updated: the model's digest)."""
        if not 0.0 < budget < 1.0:
            raise ValueError(f"a leakage budget must lie in (0, 1), got {budget}")
        space = space or LeakageSpace.fit(train.latents, weight)
        settings = {
            "budget": float(budget),
            "views": 1 + 9 * bool(views),
            "hub_penalty": float(hub_penalty),
            "join": str(join),
            "ann_min_size": int(ann_min_size),
            "nprobe": int(nprobe),
            "rule": LEAKAGE_RULE,
            **(extra or {}),
        }
        index = cls.empty(space, settings, len(train))
        index.update(train, ev, (), encode, _pixels_from(train, ev))
        return index

    def can_update(self, settings: dict, train_ids: Sequence[str]) -> bool:
        """Whether an update reaches what a build would (module doc): the same settings,
        every indexed training image still there, and growth within REFIT_GROWTH."""
        if {k: self.settings.get(k) for k in settings} != dict(settings):
            return False
        if not among(self.train_ids, train_ids).all():
            return False
        return len(train_ids) <= REFIT_GROWTH * max(self.fitted_on, 1)

    # -------------------------------------------------------------------- scores

    @property
    def density(self) -> np.ndarray:
        """Each training image's mean cosine with its DENSITY_NEIGHBOURS nearest others."""
        near = self.dens.vals[:, 1:]
        ok = np.isfinite(near)
        count = ok.sum(axis=1)
        total = np.where(ok, near, 0.0).sum(axis=1, dtype=np.float64)
        return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)

    def _refs(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Training vectors with their penalty coordinate: [t, -penalty x density]."""
        dens = self.density if rows is None else self.density[rows]
        vec = self.train_vec if rows is None else self.train_vec[rows]
        pen = (-self.settings["hub_penalty"] * dens).astype(np.float32)[:, None]
        return np.hstack([vec, pen]).astype(np.float32)

    @staticmethod
    def _queries(views: np.ndarray) -> list[np.ndarray]:
        """Query vectors [q, 1] of each view."""
        ones = np.ones((*views.shape[:-1], 1), np.float32)
        return list(np.concatenate([views, ones], axis=-1).astype(np.float32))

    def _method(self, n_refs: int) -> str:
        return resolve_join(self.settings["join"], n_refs, self.settings["ann_min_size"])

    def _against(self, views: np.ndarray, rows: np.ndarray | None, k: int) -> TopLists:
        """Lists of queries (views, n, d) against training rows `rows` (None: all) with
        global indices; fresh lists (floor the k-th) when `rows` is None."""
        refs = self._refs(rows)
        n = views.shape[1]
        if n == 0 or len(refs) == 0:
            return TopLists.fresh(np.full((n, k), -np.inf, np.float32), np.full((n, k), -1))
        vals, idx = views_top_k(
            self._queries(views),
            refs,
            k,
            join=self._method(len(refs)),
            nprobe=self.settings["nprobe"],
        )
        lists = TopLists.fresh(vals, idx)
        if rows is not None:
            lists.idx = np.where(lists.idx >= 0, np.asarray(rows)[np.maximum(lists.idx, 0)], -1)
        return lists

    def _vectors(self, images: SplitImages) -> np.ndarray:
        return self.space.vectors(images.latents, np.asarray(images.pixels))

    def _views(
        self, vectors: np.ndarray, pixels: np.ndarray, encode, counts: UpdateCounts
    ) -> np.ndarray:
        """(views, n, d): the images' vectors, then their crop views' (encoded now)."""
        out = [vectors]
        if self.settings["views"] > 1 and len(pixels):
            for view in crop_views(pixels):
                out.append(self.space.vectors(np.asarray(encode(view), np.float32), view))
            counts.encoded += len(pixels) * (self.settings["views"] - 1)
        elif self.settings["views"] > 1:
            out += [vectors] * (self.settings["views"] - 1)
        return np.stack(out).astype(np.float32)

    # -------------------------------------------------------------------- updates

    def update(
        self,
        new_train: SplitImages | None,
        new_eval: SplitImages | None,
        removed_eval: Sequence[str],
        encode: Callable[[np.ndarray], np.ndarray],
        pixels_of: Callable[[str, np.ndarray], np.ndarray],
    ) -> UpdateCounts:
        """Add training images, add and remove evaluation images (module doc). `encode`
        maps uint8 pixels to latents (the model the latents came from); `pixels_of(split,
        ids)` gives the pixels of stored images ("train" or "eval") a new decoy needs."""
        counts = UpdateCounts()
        removed = among(self.eval_ids, removed_eval)
        if removed.any():
            keep = np.flatnonzero(~removed)
            self.eval_ids, self.eval_hashes = self.eval_ids[keep], self.eval_hashes[keep]
            self.eval_views, self.eval_top = self.eval_views[:, keep], self.eval_top.take(keep)
            counts.eval_removed = int(removed.sum())
        if new_train is not None and len(new_train):
            self._add_train(new_train)
            counts.train_added = len(new_train)
        if new_eval is not None and len(new_eval):
            vec = self._vectors(new_eval)
            views = self._views(vec, np.asarray(new_eval.pixels), encode, counts)
            self.eval_ids = _cat(self.eval_ids, new_eval.ids.astype(str))
            self.eval_hashes = _cat(self.eval_hashes, new_eval.hashes.astype(str))
            self.eval_views = _cat(self.eval_views, views, axis=1)
            self.eval_top = TopLists.concat(
                [self.eval_top, self._against(views, None, COPIES)], COPIES
            )
            counts.eval_added = len(new_eval)
        self._replan(encode, pixels_of, counts)
        return counts

    def _add_train(self, new: SplitImages) -> None:
        old = len(self.train_ids)
        vec = self._vectors(new)
        before = self.density
        k = DENSITY_NEIGHBOURS + 1
        new_rows = np.arange(old, old + len(new))
        self.train_vec = _cat(self.train_vec, vec.astype(np.float32))
        self.train_ids = _cat(self.train_ids, new.ids.astype(str))
        self.train_hashes = _cat(self.train_hashes, new.hashes.astype(str))
        # densities: the old images' lists merge the new images; the new ones' against all
        plain = self.train_vec
        method = self._method(len(plain))
        if old:
            part_vals, part_idx = views_top_k(plain[:old], vec, k, join=self._method(len(vec)))
            part = TopLists.fresh(part_vals, part_idx)
            part.idx = np.where(part.idx >= 0, part.idx + old, -1)
            self.dens.merge(part)
        vals, idx = views_top_k(vec, plain, k, join=method, nprobe=self.settings["nprobe"])
        self.dens = TopLists.concat([self.dens, TopLists.fresh(vals, idx)], k)
        rise = np.zeros(len(self.train_ids), np.float32)
        rise[:old] = self.density[:old] - before
        # A density over fewer than DENSITY_NEIGHBOURS others can fall when one joins (a
        # mean of more values): scores then rise past the floors, so compare all again.
        fell = bool((rise < -1e-6).any())
        drop = np.maximum(rise, 0.0) * self.settings["hub_penalty"]
        for name, views in (
            ("eval_top", self.eval_views),
            ("decoy_top", self.decoy_views),
            ("near", self.decoy_src[None]),
        ):
            lists = getattr(self, name)
            if not len(lists):
                continue
            if fell:
                setattr(self, name, self._against(views, None, lists.vals.shape[1]))
                continue
            lists.lower(drop)
            lists.merge(self._against(views, new_rows, lists.vals.shape[1]))

    def _plan(self):
        return plan_decoys(
            len(self.eval_ids),
            len(self.train_ids),
            self.settings["budget"],
            eval_keys=self.eval_ids,
            train_keys=self.train_ids,
        )

    def _replan(self, encode, pixels_of, counts: UpdateCounts) -> None:
        """Decoys the plan wants now: the ones it no longer wants dropped, new ones made."""
        wanted = [
            (source, kind, ids)
            for source, kind, rows in self._plan().parts
            for ids in [(self.eval_ids if source == "eval" else self.train_ids)[rows]]
        ]
        keys = np.array(
            [f"{s}\t{k}\t{i}" for s, k, ids in wanted for i in ids.tolist()], dtype=str
        ).reshape(-1)
        keep = np.flatnonzero(among(self.decoy_keys, keys))
        counts.decoys_removed = len(self.decoy_keys) - len(keep)
        if counts.decoys_removed:
            self._take_decoys(keep)
        have = set(self.decoy_keys.tolist())
        eval_row = {i: r for r, i in enumerate(self.eval_ids.tolist())}
        train_row = {i: r for r, i in enumerate(self.train_ids.tolist())}
        for source, kind, ids in wanted:
            todo = np.array(
                [i for i in ids.tolist() if f"{source}\t{kind}\t{i}" not in have], dtype=str
            )
            if not len(todo):
                continue
            pixels = np.asarray(pixels_of(source, todo))
            flipped = decoy_pixels(pixels, kind)
            vec = self.space.vectors(np.asarray(encode(flipped), np.float32), flipped)
            counts.encoded += len(flipped)
            views = self._views(vec, flipped, encode, counts)
            if source == "eval":
                rows = np.array([eval_row[i] for i in todo.tolist()], np.int64)
                src, own, hashes = (
                    self.eval_views[0, rows],
                    np.full(len(rows), -1),
                    self.eval_hashes[rows],
                )
            else:
                rows = np.array([train_row[i] for i in todo.tolist()], np.int64)
                src, own, hashes = self.train_vec[rows], rows, self.train_hashes[rows]
            self.decoy_keys = _cat(
                self.decoy_keys, np.array([f"{source}\t{kind}\t{i}" for i in todo], dtype=str)
            )
            self.decoy_self = _cat(self.decoy_self, own.astype(np.int64))
            self.decoy_hash = _cat(self.decoy_hash, hashes.astype(str))
            self.decoy_src = _cat(self.decoy_src, src.astype(np.float32))
            self.decoy_views = _cat(self.decoy_views, views, axis=1)
            self.decoy_top = TopLists.concat(
                [self.decoy_top, self._against(views, None, DECOY_WIDTH)], DECOY_WIDTH
            )
            self.near = TopLists.concat(
                [self.near, self._against(src[None], None, K_NEIGHBOURS + 1)], K_NEIGHBOURS + 1
            )
            counts.decoys_added += len(todo)

    def _take_decoys(self, rows: np.ndarray) -> None:
        self.decoy_keys, self.decoy_src = self.decoy_keys[rows], self.decoy_src[rows]
        self.decoy_self, self.decoy_hash = self.decoy_self[rows], self.decoy_hash[rows]
        self.decoy_views = self.decoy_views[:, rows]
        self.decoy_top, self.near = self.decoy_top.take(rows), self.near.take(rows)

    # -------------------------------------------------------------------- the judgement

    def _draws(self) -> DecoyDraws:
        self_rows = self.decoy_self
        copies = np.full((len(self_rows), EXACT_LEFT_OUT), -1, np.int64)
        rows, cols = exact_matches(self.decoy_hash, self.train_hashes)
        for e, t in zip(rows.tolist(), cols.tolist(), strict=True):
            free = np.flatnonzero(copies[e] < 0)
            if len(free):
                copies[e, free[0]] = t
        always = np.concatenate([self_rows[:, None], copies], axis=1)
        near_sim = np.where(self.near.idx == self_rows[:, None], -np.inf, self.near.vals)
        return DecoyDraws(self.decoy_top.vals, self.decoy_top.idx, always, self.near.idx, near_sim)

    def _untrusted(self, draws: DecoyDraws, t0: float, threshold: float):
        """Decoy rows and eval rows whose reading is not certain (module doc)."""
        copies = np.where(draws.near_sim > t0, draws.near_idx, -1)
        _, first = self.decoy_top.first_allowed(draws.always)
        _, second = self.decoy_top.first_allowed(np.concatenate([draws.always, copies], axis=1))
        near_ok = self.near.trusted_above(t0)
        decoys = np.flatnonzero(~(first & second & near_ok))
        evals = np.flatnonzero(~self.eval_top.trusted_above(threshold))
        return decoys, evals

    def judge(self) -> tuple[LeakageResult, int]:
        """The split's leaks at the budget's threshold (`core.decision.leakage`), and how
        many rows had to be compared again with the whole training split to be certain."""
        budget = self.settings["budget"]
        recompared = 0
        done_decoys = np.zeros(len(self.decoy_keys), bool)
        done_evals = np.zeros(len(self.eval_ids), bool)
        while True:
            draws = self._draws()
            t0 = leakage_threshold(draws.null(), budget)
            threshold, null = (
                budget_threshold([draws], budget) if len(draws.vals) else (1.0, draws.null())
            )
            decoys, evals = self._untrusted(draws, t0, threshold)
            decoys, evals = decoys[~done_decoys[decoys]], evals[~done_evals[evals]]
            if not len(decoys) and not len(evals):
                break
            if len(decoys):
                self.decoy_top.put(
                    decoys, self._against(self.decoy_views[:, decoys], None, DECOY_WIDTH)
                )
                self.near.put(
                    decoys, self._against(self.decoy_src[None, decoys], None, K_NEIGHBOURS + 1)
                )
                done_decoys[decoys] = True
            if len(evals):
                self.eval_top.put(evals, self._against(self.eval_views[:, evals], None, COPIES))
                done_evals[evals] = True
            recompared += len(decoys) + len(evals)
        leaks = leaks_from_lists(
            self.eval_top.vals,
            self.eval_top.idx,
            threshold,
            eval_hashes=self.eval_hashes,
            train_hashes=self.train_hashes,
        )
        summary = self._decoy_summary()
        result = LeakageResult(
            leaks,
            float(threshold),
            float(budget),
            int(np.isfinite(null).sum()),
            summary,
            self._method(len(self.train_ids)),
        )
        return result, recompared

    def _decoy_summary(self) -> tuple[tuple[str, str, int], ...]:
        """(source split, decoy kind, decoys) in the plan's order, from the decoys held
        (after an update they are the plan's: no second ranking of every image id)."""
        parts = [key.split("\t", 2)[:2] for key in self.decoy_keys.tolist()]
        counts = {(s, k): 0 for k in DECOYS for s in ("eval", "train")}
        for source, kind in parts:
            counts[(source, kind)] += 1
        return tuple((s, k, n) for (s, k), n in counts.items() if n)

    # -------------------------------------------------------------------- storage

    def save(self, path: Path) -> Path:
        """Write the index atomically (one .npz; no pickled objects)."""
        shared = self.space.shared
        meta = {
            "format": FORMAT,
            "settings": self.settings,
            "fitted_on": self.fitted_on,
            "weight": self.space.weight,
            "has_axes": shared.axes is not None,
        }
        arrays = {
            "meta": np.array(json.dumps(meta, sort_keys=True)),
            "mean": shared.mean,
            "axes": shared.axes if shared.axes is not None else np.zeros((0, 0), np.float32),
            **{
                name: getattr(self, name)
                for name in (
                    "train_ids",
                    "train_hashes",
                    "train_vec",
                    "eval_ids",
                    "eval_hashes",
                    "eval_views",
                    "decoy_keys",
                    "decoy_self",
                    "decoy_hash",
                    "decoy_src",
                    "decoy_views",
                )
            },
        }
        for name in ("dens", "eval_top", "decoy_top", "near"):
            lists = getattr(self, name)
            arrays |= {
                f"{name}_vals": lists.vals,
                f"{name}_idx": lists.idx,
                f"{name}_floor": lists.floor,
            }
        return save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> LeakageIndex | None:
        """The index stored at `path`, or None when it is missing, unreadable or of another
        format (it is then built again)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT:
                    return None
                a = {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError):
            return None
        space = LeakageSpace(
            SharedSpace(a["mean"], a["axes"] if meta["has_axes"] else None), float(meta["weight"])
        )
        lists = {
            name: TopLists(a[f"{name}_vals"], a[f"{name}_idx"], a[f"{name}_floor"])
            for name in ("dens", "eval_top", "decoy_top", "near")
        }
        return cls(
            space,
            meta["settings"],
            int(meta["fitted_on"]),
            a["train_ids"],
            a["train_hashes"],
            a["train_vec"],
            lists["dens"],
            a["eval_ids"],
            a["eval_hashes"],
            a["eval_views"],
            lists["eval_top"],
            a["decoy_keys"],
            a["decoy_self"],
            a["decoy_hash"],
            a["decoy_src"],
            a["decoy_views"],
            lists["decoy_top"],
            lists["near"],
        )


def _cat(a: np.ndarray, b: np.ndarray, axis: int = 0) -> np.ndarray:
    """a and b joined along `axis`; b alone when a holds nothing (an empty index's arrays
    have a placeholder width)."""
    return b if a.shape[axis] == 0 else np.concatenate([a, b], axis=axis)


def _pixels_from(*sets: SplitImages) -> Callable[[str, np.ndarray], np.ndarray]:
    """`pixels_of` over images in memory: train is the first set, eval the second."""
    rows = [{i: r for r, i in enumerate(s.ids.astype(str).tolist())} for s in sets]

    def pixels_of(split: str, ids: np.ndarray) -> np.ndarray:
        which = 0 if split == "train" else 1
        return np.asarray(sets[which].pixels)[[rows[which][i] for i in np.asarray(ids).tolist()]]

    return pixels_of


def detect_leakage(
    eval_latents: np.ndarray,
    eval_pixels: np.ndarray,
    train_latents: np.ndarray,
    train_pixels: np.ndarray,
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    eval_hashes: np.ndarray | None = None,
    train_hashes: np.ndarray | None = None,
    budget: float = DEFAULT_LEAKAGE_BUDGET,
    weight: float = LEAKAGE_WEIGHT,
    views: bool = True,
    hub_penalty: float = HUB_PENALTY,
    join: str = "auto",
    ann_min_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
    nprobe: int = DEFAULT_NPROBE,
    space: LeakageSpace | None = None,
) -> LeakageResult:
    """The whole check of one evaluation split against train from arrays
    (`core.decision.leakage`'s module doc): a `LeakageIndex` built and judged. Rows of the
    result index the given arrays; images without hashes get none (no exact copies)."""
    ev = images_of(eval_latents, eval_pixels, eval_hashes, "e")
    train = images_of(train_latents, train_pixels, train_hashes, "t")
    index = LeakageIndex.build(
        train,
        ev,
        encode,
        budget=budget,
        weight=weight,
        views=views,
        hub_penalty=hub_penalty,
        join=join,
        ann_min_size=ann_min_size,
        nprobe=nprobe,
        space=space,
    )
    return index.judge()[0]


def images_of(
    latents: np.ndarray, pixels: np.ndarray, hashes: np.ndarray | None, prefix: str
) -> SplitImages:
    """Arrays as `SplitImages` with ids `<prefix><row>` (no classes or paths)."""
    n = len(latents)
    ids = np.array([f"{prefix}{i}" for i in range(n)], dtype=str).reshape(n)
    return SplitImages(
        ids,
        ids,
        ids,
        np.asarray(latents, np.float32),
        pixels,
        np.full(n, "", dtype=str) if hashes is None else np.asarray(hashes).astype(str),
    )


# ------------------------------------------------------------------------- the pipeline's part


def index_path(layout: OutputLayout, split: str) -> Path:
    """Where one evaluation split's index is kept, beside its cached pairs."""
    return cache_dir(layout) / f"{split}.index.npz"


@dataclass(frozen=True)
class SplitJudgement:
    """One split's flagged pairs (PAIR_SCHEMA), the result (None: nothing to compare) and
    how the index got there: "built", "updated" (with its counts) or "nothing to compare"."""

    table: pl.DataFrame
    result: LeakageResult | None
    how: str
    counts: UpdateCounts | None = None
    recompared: int = 0


def judge_split(
    layout: OutputLayout,
    split: str,
    train: pl.DataFrame,
    ev: pl.DataFrame,
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    model: str,
    budget: float = DEFAULT_LEAKAGE_BUDGET,
    join: str = "auto",
    ann_min_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
    nprobe: int = DEFAULT_NPROBE,
) -> SplitJudgement:
    """One evaluation split (`ev`, a `split_table`) against the training split (`train`):
    its stored index updated where it can be (`LeakageIndex.can_update`), else built; judged,
    stored again. `model` (the model's digest) and the settings decide whether the stored
    index is of this space."""
    path = index_path(layout, split)
    if ev.height == 0 or train.height == 0:
        path.unlink(missing_ok=True)
        return SplitJudgement(pl.DataFrame(schema=PAIR_SCHEMA), None, "nothing to compare")
    settings = {
        "budget": float(budget),
        "join": str(join),
        "ann_min_size": int(ann_min_size),
        "nprobe": int(nprobe),
        "rule": LEAKAGE_RULE,
        "model": str(model),
        "views": 10,
        "hub_penalty": float(HUB_PENALTY),
    }
    index = LeakageIndex.load(path)
    counts = None
    if index is not None and index.can_update(settings, train["image_id"].to_list()):
        tables = {"train": train, "eval": ev}
        new_train = train.filter(~pl.col("image_id").is_in(index.train_ids.tolist()))
        new_eval = ev.filter(~pl.col("image_id").is_in(index.eval_ids.tolist()))
        removed = np.setdiff1d(index.eval_ids, ev["image_id"].to_numpy().astype(str))
        counts = index.update(
            load_images(layout, new_train),
            load_images(layout, new_eval),
            removed.tolist(),
            encode,
            lambda source, ids: load_images(layout, in_order(tables[source], ids)).pixels,
        )
        how = "updated"
    else:
        index = LeakageIndex.build(
            load_images(layout, train),
            load_images(layout, ev),
            encode,
            budget=budget,
            join=join,
            ann_min_size=ann_min_size,
            nprobe=nprobe,
            extra={"model": str(model)},
        )
        how = "built"
    result, recompared = index.judge()
    index.save(path)
    leaks = result.leaks
    ev_rows = in_order(ev, index.eval_ids.tolist())
    train_rows = in_order(train, index.train_ids.tolist())
    rows = leakage_rows(
        leaks,
        split,
        ev_rows["class"].to_list(),
        ev_rows["path"].to_list(),
        train_rows["class"].to_list(),
        train_rows["path"].to_list(),
    )
    table = pl.DataFrame(rows, schema=LEAKAGE_SCHEMA).with_columns(
        pl.Series("image_id", index.eval_ids[leaks.eval_row], dtype=pl.String),
        pl.Series("train_image_id", index.train_ids[leaks.train_row], dtype=pl.String),
    )
    return SplitJudgement(table, result, how, counts, recompared)
