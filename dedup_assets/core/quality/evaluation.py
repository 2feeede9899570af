"""Scoring a similarity against known duplicate pairs (ground truth).

Known pairs are grouped within their class (A~B and A~C make {A, B, C} one group), and
every pair inside a group counts as a positive. Every other within-class pair is a
negative. Average precision ranks all within-class pairs of all classes together, by
cosine and, where local levels are known (`core.decision.local_scaling`), by margin as well: the
score a budget threshold with local scaling decides on.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    MissingArtifact,
    StaleArtifact,
    catalog_class_keys,
    catalog_images,
    class_names,
    column_by_class,
    open_pixels,
    read_catalog,
)
from dedup_assets.core.data.progress import Throttle
from dedup_assets.core.data.thresholds import budget_of
from dedup_assets.core.decision.calibration import (
    class_budgets,
    encode_mirrors,
    mirror_latents,
    mirror_rows,
)
from dedup_assets.core.decision.class_decision import (
    PIXEL_SPACES,
    class_order,
    keep_decisions,
    space_for,
    vectorise,
    vectorise_as,
)
from dedup_assets.core.decision.class_keep import load_class_data
from dedup_assets.core.decision.reference_pool import build_reference_pool, read_reference_pool
from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    count_pairs_above,
    iter_similarity_blocks,
)
from dedup_assets.core.quality.planting import GroundTruthPair, read_ground_truth, transform_of


@dataclass(frozen=True)
class ClassPairs:
    """One class's unit vectors, its known positive pairs (i < j) and visit order.

    pixel_hashes: decoded-pixel hashes, so exact copies are removed as the pipeline does;
    None treats every image as distinct. known/known_transforms: the (original, copy)
    rows and their transforms, for recall per transform. offsets: each image's offset
    (half its local level), for the thresholds that are margins.
    """

    name: str
    vectors: np.ndarray
    positives: np.ndarray  # (p, 2) int indices, i < j
    order: np.ndarray
    in_ground_truth: np.ndarray  # (n,) bool: image takes part in a known pair
    pixel_hashes: np.ndarray | None = None
    known: np.ndarray | None = None  # (k, 2) the ground-truth rows themselves, i < j
    known_transforms: tuple[str, ...] = ()  # the planted transform of each known row
    offsets: np.ndarray | None = None
    # Per threshold, (vectors, offsets, offset cap) to judge it by instead: where the class
    # resolved a budget in another space (read from the run's reference pool: one cosine,
    # no offsets), or with the budget's ceiling (`calibration.BudgetThreshold.offset_cap`).
    views: tuple[tuple[np.ndarray, np.ndarray | None, float | None] | None, ...] = ()

    def view(self, k: int, margin: bool) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """The vectors, offsets and offset cap threshold k is judged by in this class."""
        if k < len(self.views) and self.views[k] is not None:
            return self.views[k]
        if margin and self.offsets is None:
            raise ValueError(f"a margin threshold needs class {self.name}'s offsets")
        return self.vectors, self.offsets if margin else None, None

    def hashes(self) -> np.ndarray:
        if self.pixel_hashes is not None:
            return np.asarray(self.pixel_hashes, dtype=str)
        return np.arange(len(self.vectors)).astype(str)


def positive_pairs(n: int, edges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """All pairs inside the connected groups of `edges`, and which images are in any group."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    involved = np.zeros(n, dtype=bool)
    for a, b in edges:
        involved[a] = involved[b] = True
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(involved):
        groups.setdefault(find(int(i)), []).append(int(i))
    pairs = [
        (g[x], g[y]) for g in groups.values() for x in range(len(g)) for y in range(x + 1, len(g))
    ]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2), involved


@dataclass
class MethodEvaluation:
    """How one similarity ranks and removes known duplicates."""

    name: str
    average_precision: float
    n_positive_pairs: int
    n_pairs: int
    recall_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    precision_curve: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    per_threshold: list[dict] = field(default_factory=list)
    transforms: dict[str, int] = field(default_factory=dict)  # known rows per transform
    average_precision_local: float = float("nan")  # ranked by margin (local levels)
    recall_curve_local: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    precision_curve_local: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def _pair_scores(
    x: np.ndarray,
    pairs: np.ndarray,
    block: int,
    offsets: np.ndarray | None = None,
    offset_cap: float | None = None,
) -> np.ndarray:
    """Similarities (margins, with offsets, capped by `offset_cap`) of given pairs (i < j),
    taken from the same blocked products as the counts, so a pair's score compares with
    itself exactly."""
    i, j = pairs[:, 0], pairs[:, 1]
    out = np.empty(len(pairs), dtype=np.float32)
    for row0, col0, s in iter_similarity_blocks(x, block, offsets, offset_cap):
        sel = (i >= row0) & (i < row0 + len(s))
        out[sel] = s[i[sel] - row0, j[sel] - col0]
    return out


def _average_precision(
    classes: Sequence[ClassPairs], block: int, by_margin: bool
) -> tuple[float, np.ndarray, np.ndarray, int, int]:
    """(AP, recall curve, precision curve, positive pairs, all pairs) over every
    within-class pair of every class, ranked by cosine or by margin."""
    class_pos = [
        _pair_scores(c.vectors, c.positives, block, c.offsets if by_margin else None)
        for c in classes
    ]
    nonempty = [p for p in class_pos if len(p)]
    pos = np.sort(np.concatenate(nonempty))[::-1] if nonempty else np.zeros(0, np.float32)
    n_pairs = sum(len(c.vectors) * (len(c.vectors) - 1) // 2 for c in classes)
    counts = np.zeros(len(pos), dtype=np.int64)
    for c in classes:
        if len(c.vectors) > 1 and len(pos):
            counts += count_pairs_above(
                c.vectors, pos, block, inclusive=True, offsets=c.offsets if by_margin else None
            )
    # Positives scoring >= each positive: tied scores share one operating point, as in
    # scikit-learn's average_precision_score.
    ascending = pos[::-1]
    tp_at = len(pos) - np.searchsorted(ascending, pos, side="left")
    precision = tp_at / np.maximum(counts, 1)
    recall = tp_at / max(len(pos), 1)
    ap = float(precision.mean()) if len(pos) else float("nan")
    return ap, recall, precision, len(pos), n_pairs


def evaluate_method(
    name: str,
    classes: Sequence[ClassPairs],
    thresholds: Sequence[float | Mapping[str, float]],
    *,
    block: int = DEFAULT_BLOCK,
    labels: Sequence[str] | None = None,
    local: Sequence[bool] | None = None,
) -> MethodEvaluation:
    """Average precision over all within-class pairs, and recall/precision/removals per T.

    A threshold is one cosine for every class, or a mapping class name -> threshold (a
    false-removal budget resolved per class). local: per threshold, whether it is a
    margin over the classes' offsets (a budget with local scaling) rather than a cosine.
    labels: what each threshold is called in the rows (default: the value). With every
    class's offsets, the margin AP is reported too (`average_precision_local`).
    """
    ap, recall, precision, n_positive, n_pairs = _average_precision(classes, block, False)
    evaluation = MethodEvaluation(name, ap, n_positive, n_pairs, recall, precision)
    margins = [bool(m) for m in local] if local is not None else [False] * len(thresholds)
    if len(margins) != len(thresholds):
        raise ValueError("local must say, for every threshold, whether it is a margin")
    if classes and all(c.offsets is not None for c in classes):
        ap_local, r_local, p_local, _, _ = _average_precision(classes, block, True)
        evaluation.average_precision_local = ap_local
        evaluation.recall_curve_local, evaluation.precision_curve_local = r_local, p_local

    def cosine(t, c: ClassPairs) -> float:
        return float(t[c.name]) if isinstance(t, Mapping) else float(t)

    # Per class: its threshold at every T and the view each T is judged by; pairs above,
    # known rows' scores and decisions computed once per distinct view.
    per_class_t = [np.array([cosine(t, c) for t in thresholds], dtype=np.float64) for c in classes]
    n_t = len(thresholds)
    flagged = np.zeros(n_t, dtype=np.int64)
    pos_scores = [[np.zeros(0, np.float32)] * n_t for _ in classes]
    known_scores = [[np.zeros(0, np.float32)] * n_t for _ in classes]
    decided = [[None] * n_t for _ in classes]
    for ci, (c, ts) in enumerate(zip(classes, per_class_t, strict=True)):
        groups: dict[tuple[int, int, float | None], list[int]] = {}
        for k in range(n_t):
            vecs, off, cap = c.view(k, margins[k])
            groups.setdefault((id(vecs), id(off), cap), []).append(k)
        known = np.sort(c.known, axis=1) if c.known is not None else np.zeros((0, 2), np.int64)
        for ks in groups.values():
            vecs, off, cap = c.view(ks[0], margins[ks[0]])
            if len(vecs) > 1:
                probe = np.nextafter(ts[ks].astype(np.float32), np.float32(2))
                flagged[ks] += count_pairs_above(
                    vecs, probe, block, inclusive=True, offsets=off, offset_cap=cap
                )
            pos = _pair_scores(vecs, c.positives, block, off, cap) if len(c.positives) else None
            kno = _pair_scores(vecs, known, block, off, cap) if len(known) else None
            decisions = keep_decisions(
                vecs,
                c.order,
                c.hashes(),
                ts[ks].tolist(),
                block=min(block, 2048),
                offsets=[off] * len(ks),
                offset_caps=[cap] * len(ks),
            )
            for k, d in zip(ks, decisions, strict=True):
                if pos is not None:
                    pos_scores[ci][k] = pos
                if kno is not None:
                    known_scores[ci][k] = kno
                decided[ci][k] = d
    transforms = sorted({t for c in classes for t in c.known_transforms})
    evaluation.transforms = {
        t: sum(int((np.asarray(c.known_transforms) == t).sum()) for c in classes)
        for t in transforms
    }
    for k, t in enumerate(thresholds):
        tp = sum(int((pos_scores[ci][k] > ts[k]).sum()) for ci, ts in enumerate(per_class_t))
        hits = dict.fromkeys(transforms, 0)
        removed = removed_known = kept_clean = n_clean = 0
        for ci, (c, ts) in enumerate(zip(classes, per_class_t, strict=True)):
            for name_t, hit in zip(c.known_transforms, known_scores[ci][k] > ts[k], strict=True):
                hits[name_t] += int(hit)
            decision = decided[ci][k]
            gone = ~decision.kept
            removed += int(gone.sum())
            removed_known += int((gone & c.in_ground_truth).sum())
            kept_clean += int((decision.kept & ~c.in_ground_truth).sum())
            n_clean += int((~c.in_ground_truth).sum())
        n_flagged = int(flagged[k])
        evaluation.per_threshold.append(
            {
                "threshold": labels[k]
                if labels is not None
                else (f"per class #{k}" if isinstance(t, Mapping) else float(t)),
                "recall": tp / max(n_positive, 1),
                "precision": tp / n_flagged if n_flagged else float("nan"),
                "pairs_flagged": n_flagged,
                "images_removed": removed,
                "removed_in_ground_truth": removed_known,
                "unrelated_kept_fraction": kept_clean / n_clean if n_clean else float("nan"),
                "false_removal_rate": 1 - kept_clean / n_clean if n_clean else float("nan"),
            }
            | {f"recall_{n}": hits[n] / evaluation.transforms[n] for n in transforms}
        )
    return evaluation


METHODS = ("raw", "whitened", "spline_copula", "spline_copula_dct", "dct", "phash", "pdq")


def _reference_pool(layout, model, current):
    """The run's reference pool: the stored one where it is current (what the keep lists
    used), else drawn now from the class stores the same way (`core.decision.reference_pool`)."""
    from dedup_assets.core.model.autoencoder import encode_images  # deferred: torch

    if current is not None:
        try:
            return read_reference_pool(layout, current)
        except (MissingArtifact, StaleArtifact):
            pass
    keys = catalog_class_keys(layout)
    catalog = catalog_images(read_catalog(layout, keys))
    return build_reference_pool(
        keys,
        [open_pixels(layout, k) for k in keys],
        column_by_class(catalog, "pixel_hash", keys),
        lambda pixels: encode_images(model, pixels),
    )


def ground_truth_edges(
    catalog_ok, pairs: Sequence, class_key_of: dict[str, str], *, with_transforms: bool = False
) -> tuple[dict[str, list[tuple[str, ...]]], int]:
    """Known pairs as image-id edges per class key; also how many rows matched no image.

    catalog_ok: decoded images (class, path, image_id); pairs: GroundTruthPair rows whose
    file names are relative to their class folder. with_transforms: each edge gets a third
    element, the planted transform named in the copy's file name.
    """
    paths = catalog_ok["path"].to_list()
    by_path = dict(zip(paths, catalog_ok["image_id"].to_list(), strict=True))
    key_of_path = (
        dict(zip(paths, catalog_ok["class_key"].to_list(), strict=True))
        if "class_key" in catalog_ok.columns
        else {}
    )
    edges: dict[str, list[tuple[str, str]]] = {}
    unmatched = 0
    for row in pairs:
        pa, pb = source_path_of(row, row.original, by_path), source_path_of(row, row.copy, by_path)
        a, b = by_path.get(pa), by_path.get(pb)
        # The partition of the images themselves: a class name is not a key once splits
        # share it (train/cats and test/cats); the name decides only without keys.
        key = key_of_path.get(pa) if key_of_path else class_key_of.get(row.class_name)
        if a is None or b is None or key is None or key_of_path.get(pb, key) != key:
            unmatched += 1
            continue
        edge = (a, b, transform_of(row.copy)) if with_transforms else (a, b)
        edges.setdefault(key, []).append(edge)
    return edges, unmatched


def source_path_of(pair: GroundTruthPair, name: str, known: Container[str] = ()) -> str:
    """A ground-truth file's path relative to the source: `<class>/<file>`, where the class
    column is the class folder relative to the source (`cats`, or `train/cats` in a split
    source, as the catalog and keep lists name images). A name already written from the
    source (`cats/x.png`, or `train/cats/x.png` for class `cats` of a split source, as keep
    lists and overrides.csv spell paths) is taken as it is where `<class>/<name>` is not
    among the `known` paths and it is, with the class folder among its folders."""
    folder = pair.class_name.strip("/")
    path = f"{folder}/{name}"
    if path not in known and name in known and f"/{folder}/" in f"/{name}":
        return name
    return path


def evaluate_against_ground_truth(
    layout,
    ground_truth_path,
    thresholds: Sequence[str | float],
    *,
    methods: Sequence[str] = METHODS,
    keep_policy: str = "density",
    budget_scaling: str = "local",
    block: int = DEFAULT_BLOCK,
    current=None,
    log=None,
) -> tuple[list[MethodEvaluation], dict]:
    """Score every similarity space and the pHash and PDQ baselines on the same images.

    thresholds: keys, cosines ("0.95") or false-removal budgets ("1%"); a budget is
    resolved per class and per method (each space has its own scale), with the stored
    model encoding the class's mirrored images (`core.decision.calibration`), as a margin over
    local levels or one cosine (`budget_scaling`, as the keep lists resolve it).
    current: a CurrentInputs; when given, latents and fits must be current (not stale).
    """
    full_catalog = read_catalog(layout)
    catalog = catalog_images(full_catalog)
    class_key_of = {name: key for key, name in class_names(layout).items()}
    edges, unmatched = ground_truth_edges(
        catalog, read_ground_truth(ground_truth_path), class_key_of, with_transforms=True
    )
    keys = [str(t) for t in thresholds]
    budgets = [budget_of(k) for k in keys]
    wanted = sorted({b for b in budgets if b is not None})
    model = None
    if wanted:
        from dedup_assets.core.model.autoencoder import load_state  # deferred: torch

        model = load_state(layout.model)
    local = budget_scaling == "local"
    # method -> threshold index -> class key -> threshold (budget keys only)
    resolved: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
    per_method: dict[str, list[ClassPairs]] = {m: [] for m in methods}
    pool = _reference_pool(layout, model, current) if wanted else None
    class_keys = sorted(set(catalog["class_key"].to_list()))
    progress = Throttle(log) if log is not None else None
    for at, key in enumerate(class_keys, 1):
        _, data = load_class_data(
            layout,
            key,
            current,
            with_pixels=bool(set(methods) & PIXEL_SPACES) or bool(wanted),
            catalog=full_catalog,
        )
        # method -> (own offsets, per threshold the view of a budget: vectors and offsets)
        views: dict[str, tuple[np.ndarray | None, list]] = {}
        method_vectors = {m: vectorise(data, m) for m in methods}
        if wanted:

            def encode(rows: np.ndarray, data=data) -> np.ndarray:
                return encode_mirrors(model, data.pixels, rows)

            # The mirrors the class's calibration stored when the latents are current.
            n = len(data.image_ids)
            mirrored_rows, mirrors = (
                mirror_latents(layout, key, current.latents(key), n, encode)
                if current is not None
                else (mirror_rows(n), encode(mirror_rows(n)))
            )
            for method in methods:
                by_budget = {
                    r.budget: r
                    for r in class_budgets(
                        data,
                        model,
                        method,
                        wanted,
                        scaling=budget_scaling,
                        decoy_latents=mirrors,
                        decoy_rows=mirrored_rows,
                        pool=pool,
                        class_key=key,
                    )
                }
                own = next((r.offsets for r in by_budget.values() if r.offsets is not None), None)
                # Each budget judged as the keep list judges it: in the space it resolved to,
                # with its offsets (a margin) or without (a cosine).
                vectors_in = {space_for(data.model, method): method_vectors[method]}
                per_t = []
                for k, b in enumerate(budgets):
                    r = by_budget.get(b) if b is not None else None
                    if r is None:
                        per_t.append(None)
                        continue
                    resolved[method].setdefault(k, {})[key] = r.threshold
                    if r.space not in vectors_in:
                        vectors_in[r.space] = vectorise_as(data, r.space)
                    per_t.append((vectors_in[r.space], r.offsets, r.offset_cap))
                views[method] = (own, per_t)
        ids = data.image_ids.tolist()
        index = {i: k for k, i in enumerate(ids)}
        rows = [
            (index[a], index[b], t) for a, b, t in edges.get(key, []) if a in index and b in index
        ]
        known = np.array([(a, b) for a, b, _ in rows], dtype=np.int64).reshape(-1, 2)
        pairs, involved = positive_pairs(len(ids), [(a, b) for a, b, _ in rows])
        order = class_order(data, keep_policy)
        for method in methods:
            own, per_t = views.get(method, (None, []))
            per_method[method].append(
                ClassPairs(
                    key,
                    method_vectors[method],
                    pairs,
                    order,
                    involved,
                    data.pixel_hashes,
                    known,
                    tuple(t for _, _, t in rows),
                    own,
                    tuple(per_t),
                )
            )
        if progress is not None:  # a line every PROGRESS_EVERY_S, not one per class
            progress(
                f"evaluation: prepared {at:,} of {len(class_keys):,} classes (the latest, "
                f"{key}: {len(ids):,} images, {len(pairs):,} known pairs)",
                final=at == len(class_keys),
            )
    results = [
        evaluate_method(
            m,
            per_method[m],
            [
                float(k) if b is None else resolved[m][i]
                for i, (k, b) in enumerate(zip(keys, budgets, strict=True))
            ],
            block=block,
            labels=keys,
            local=[b is not None and local for b in budgets],
        )
        for m in methods
    ]
    info = {
        "ground_truth_rows_unmatched": unmatched,
        "known_pairs": results[0].n_positive_pairs if results else 0,
        "within_class_pairs": results[0].n_pairs if results else 0,
    }
    return results, info


def score_keep_lists(
    keep_lists: Mapping[str, pl.DataFrame], pairs: Sequence[GroundTruthPair]
) -> pl.DataFrame:
    """The keep lists as finally decided (overrides applied) against the ground truth.

    The method rows of `evaluate_against_ground_truth` decide each space again on its own;
    these read the stored keep lists, so a user's correction (`decided_by` `override`)
    moves them as it moves the clean copy. Per threshold: images removed, those of them in
    a known group, the false-removal rate among images in no known group, and the recall:
    the share of known pairs (every pair inside a group, as `positive_pairs` forms them)
    left with at most one image kept, overall and per planted transform of the ground-truth
    rows; `decided_by_override`: the rows an override decided.

    keep_lists: threshold -> keep list (path, kept, decided_by); pairs: the ground truth,
    file names relative to their class folder.
    """
    rows = []
    for threshold, keep in keep_lists.items():
        paths = keep["path"].to_list()
        index = {p: i for i, p in enumerate(paths)}
        kept = keep["kept"].to_numpy().astype(bool)
        known, transforms, unmatched = [], [], 0
        for pair in pairs:
            a = index.get(source_path_of(pair, pair.original, index))
            b = index.get(source_path_of(pair, pair.copy, index))
            if a is None or b is None or a == b:
                unmatched += 1
                continue
            known.append((a, b))
            transforms.append(transform_of(pair.copy))
        positives, involved = positive_pairs(len(paths), known)
        resolved = ~(kept[positives[:, 0]] & kept[positives[:, 1]])
        removed = ~kept
        clean = ~involved
        row = {
            "threshold": threshold,
            "images": len(paths),
            "images_removed": int(removed.sum()),
            "removed_in_ground_truth": int((removed & involved).sum()),
            "false_removal_rate": float((removed & clean).sum() / clean.sum())
            if clean.any()
            else float("nan"),
            "known_pairs": len(positives),
            "recall": float(resolved.mean()) if len(positives) else float("nan"),
            "decided_by_override": int((keep["decided_by"] == "override").sum())
            if "decided_by" in keep.columns
            else 0,
            "ground_truth_rows_unmatched": unmatched,
        }
        known_arr = np.array(known, dtype=np.int64).reshape(-1, 2)
        known_resolved = ~(kept[known_arr[:, 0]] & kept[known_arr[:, 1]])
        names = np.array(transforms, dtype=object)
        for name in sorted(set(transforms)):
            row[f"recall_{name}"] = float(known_resolved[names == name].mean())
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema=KEEP_LIST_SCORES)
    return pl.DataFrame(rows, infer_schema_length=None)


KEEP_LIST_SCORES = {
    "threshold": pl.String,
    "images": pl.Int64,
    "images_removed": pl.Int64,
    "removed_in_ground_truth": pl.Int64,
    "false_removal_rate": pl.Float64,
    "known_pairs": pl.Int64,
    "recall": pl.Float64,
    "decided_by_override": pl.Int64,
    "ground_truth_rows_unmatched": pl.Int64,
}
"""`score_keep_lists`'s columns before the recall per planted transform (`recall_<name>`)."""
