"""The paper's evaluation of a removal: kurtosis and entropy of the leading principal
components per class, before and after, with Theil-Sen lines (Tables 2-3, figures 1-3)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from dedup_assets.core.data.thresholds import budget_of, cosine_of
from dedup_assets.core.density.spline import SplineDensity1D
from dedup_assets.core.quality import plots
from dedup_assets.core.quality.statistics import (
    CHANCE_DRAWS,
    CHANCE_QUANTILE,
    MIN_IMAGES_FOR_KURTOSIS,
    MIN_IMAGES_MEASURED,
    ComponentRegression,
    KurtosisGate,
    excess_kurtosis,
    excess_kurtosis_of_groups,
    kurtosis_gate,
    random_removal_excess,
    theil_sen,
)

COMPONENTS = ("pc1", "pc2", "pc3")

# What each verdict of the kurtosis gate means for the clean copy, beside it in report.md.
GATE_MEANING = {
    "pass": "kurtosis reduced",
    "warn": "not reduced: a note, not a failure (the clean copy is made)",
    "error": "raised beyond chance and the tolerance: the clean copy is held back",
}

# The paper's results on its 33-class, 128,401-image aerial dataset.
PAPER_TABLE_2 = {"no removal": 128_401, "0.97": 81_018, "0.95": 64_953, "0.93": 48_607}
PAPER_TABLE_3 = {
    "0.97": ("0.82x + 0.05", "0.78x + 0.08", "0.74x + 0.22"),
    "0.95": ("0.51x + 0.10", "0.52x + 0.18", "0.61x + 0.43"),
    "0.93": ("0.30x + 0.14", "0.30x + 0.26", "0.42x + 0.80"),
}


def class_scores(
    scores: pl.DataFrame, keep: pl.DataFrame, classes: Sequence[str] | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per class, in class order: its name, its (n, 3) PC1-3 scores (float64) and its kept
    flags, from one sort of the joined table (`classes`: only those).

    One slice per class of one array, not a table per class: a thousand classes cost 2,000
    polars selects and casts a report (about 0.8 s) where the statistics took less."""
    joined = scores.join(keep.select("image_id", "kept"), on="image_id", how="left")
    if classes is not None:
        joined = joined.filter(pl.col("class").is_in(list(classes)))
    joined = joined.sort("class", maintain_order=True)
    z = joined.select(COMPONENTS).cast(pl.Float64).to_numpy()
    kept = joined["kept"].to_numpy()
    runs = joined["class"].rle()
    names = runs.struct.field("value").to_list()
    ends = np.cumsum(runs.struct.field("len").to_numpy())
    starts = ends - runs.struct.field("len").to_numpy()
    return [(n, z[a:b], kept[a:b]) for n, a, b in zip(names, starts, ends, strict=True)]


def kurtosis_by_class(
    scores: pl.DataFrame,
    keep: pl.DataFrame,
    min_images: int = MIN_IMAGES_MEASURED,
    groups: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
) -> pl.DataFrame:
    """Per class: images, excess kurtosis of PC1-3 before and after removal, and whether
    the class is large enough to measure (`measured`; `note` says why not).

    scores: class, image_id, pc1..pc3 (on the class's original axes); keep: image_id, kept;
    groups: their `class_scores`, when the caller has them already.
    """
    kept_of = scores.select("image_id").join(keep, on="image_id", how="left")["kept"]
    if kept_of.null_count():
        raise ValueError(f"{kept_of.null_count()} scored images are absent from the keep list")
    rows = []
    groups = class_scores(scores, keep) if groups is None else groups
    # Before for every class at once (by size); after only where something was removed.
    befores = excess_kurtosis_of_groups([z for _, z, _ in groups])
    for (name, z, kept), before in zip(groups, befores, strict=True):
        n_before, n_after = len(z), int(kept.sum())
        after = before if n_after == n_before else excess_kurtosis(z[kept])
        finite = bool(np.isfinite(before).all() and np.isfinite(after).all())
        if n_before < min_images or n_after < min_images:
            note = (
                f"{n_before} images, {n_after} kept: statistics need at least {min_images} "
                "before and after removal (3 principal components at 4 images each)"
            )
        elif not finite:
            note = "a leading component is constant: kurtosis undefined"
        else:
            note = ""
        rows.append(
            {"class": name, "n_before": n_before, "n_after": n_after, "measured": not note}
            | {f"k{c + 1}_before": float(before[c]) for c in range(3)}
            | {f"k{c + 1}_after": float(after[c]) for c in range(3)}
            | {"note": note}
        )
    schema = {"class": pl.String, "n_before": pl.Int64, "n_after": pl.Int64, "measured": pl.Boolean}
    schema |= {f"k{c}_{w}": pl.Float64 for w in ("before", "after") for c in (1, 2, 3)}
    return pl.DataFrame(rows, schema=schema | {"note": pl.String})


def random_removal_baseline(
    scores: pl.DataFrame,
    keep: pl.DataFrame,
    measured: list[str],
    draws: int = CHANCE_DRAWS,
    groups: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """The gate's excess at the median that removing the same number of images from each
    measured class at random stays under (quantile CHANCE_QUANTILE): chance alone. groups:
    every class's `class_scores`, when the caller has them already."""
    if groups is None:
        groups = class_scores(scores, keep, measured)
    else:
        wanted = set(measured)
        groups = [g for g in groups if g[0] in wanted]
    return random_removal_excess(
        [z for _, z, _ in groups], [int(kept.sum()) for _, _, kept in groups], draws=draws
    )


@functools.lru_cache(maxsize=16)
def _test_matrix(d: int, width: int, dtype: str, seed: int) -> np.ndarray:
    """The seeded Gaussian (d, width) the range finder starts from, drawn once a process:
    the same for every class of a run (0.14 ms a draw, a fifth of a small class's refit)."""
    g = np.random.default_rng(seed).standard_normal((d, width)).astype(np.dtype(dtype))
    g.setflags(write=False)
    return g


def leading_directions(centred: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The k leading principal directions (k, d) of centred rows, by a seeded randomized
    range finder with power iterations (Halko, Martinsson and Tropp 2011): a few products
    with the data instead of a d x d covariance and its eigendecomposition."""
    n, d = centred.shape
    width = min(k + 8, n, d)
    y = centred @ _test_matrix(d, width, np.dtype(centred.dtype).str, seed)
    for _ in range(4):
        y, _ = np.linalg.qr(centred @ (centred.T @ y))
    _, _, vt = np.linalg.svd(y.T @ centred, full_matrices=False)
    return vt[: min(k, width)]


def _chunked_leading_scores(
    latents: np.ndarray, rows: np.ndarray, k: int, chunk: int, seed: int = 0
) -> np.ndarray:
    """`leading_directions` of the centred `rows` of `latents` and their scores on them, a
    chunk of rows at a time (the same products, summed over chunks): memory is a chunk, not
    a centred copy of the class (400 MB for 100,000 latents, beside what deciding holds)."""
    n, d = len(rows), latents.shape[1]

    def centred_chunks():
        for at in range(0, n, chunk):
            x = np.asarray(latents[rows[at : at + chunk]], dtype=np.float32)
            yield at, x - mean

    mean = np.zeros(d, np.float64)
    for at in range(0, n, chunk):
        mean += np.asarray(latents[rows[at : at + chunk]], dtype=np.float64).sum(axis=0)
    mean = (mean / n).astype(np.float32)
    width = min(k + 8, n, d)
    g = np.random.default_rng(seed).standard_normal((d, width)).astype(np.float32)
    y = np.empty((n, width), np.float32)
    for at, c in centred_chunks():
        y[at : at + len(c)] = c @ g
    for _ in range(4):
        z = np.zeros((d, width), np.float32)
        for at, c in centred_chunks():
            z += c.T @ y[at : at + len(c)]
        for at, c in centred_chunks():
            y[at : at + len(c)] = c @ z
        y, _ = np.linalg.qr(y)
    b = np.zeros((width, d), np.float32)
    for at, c in centred_chunks():
        b += y[at : at + len(c)].T @ c
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    v = vt[: min(k, width)]
    scores = np.empty((n, len(v)), np.float32)
    for at, c in centred_chunks():
        scores[at : at + len(c)] = c @ v.T
    return scores


REFIT_SCHEMA = {"class": pl.String} | {f"r{c}_after": pl.Float64 for c in (1, 2, 3)}
REFIT_VERSION = 3
"""The version of `refit_row`'s computation: a stored refit of another version is redone
(2: classes of more than 8,192 kept images refitted a chunk at a time; 3: classes whose
kept latents take more than REFIT_CHUNK_BYTES)."""
REFIT_CHUNK_BYTES = 64 * 2**20
"""Kept latents (float32) above which a class is refitted a chunk of rows of this size at
a time: 16,384 latents of 1,024. Below it the one-piece refit, whose 11 passes over the
rows are one centred copy instead of 11 gathers (a class of 13,500 on EuroSAT x 5: three
refits of 0.3 s each at a chunk of 8,192 rows)."""
REFIT_KEY = "latent_dedup_refit"
"""Where a class's keep list at one threshold keeps its `refit_row` (parquet metadata)."""


def refit_metadata(values: np.ndarray) -> dict[str, str]:
    """A class keep list's metadata entry for its refit (NaN kept as NaN)."""
    return {
        REFIT_KEY: json.dumps({"version": REFIT_VERSION, "kurtosis": [float(v) for v in values]})
    }


def stored_refit(metadata: Mapping[str, str]) -> np.ndarray | None:
    """The refit a class keep list's metadata holds, or None (none, or of another version)."""
    text = metadata.get(REFIT_KEY)
    if not text:
        return None
    record = json.loads(text)
    if record.get("version") != REFIT_VERSION or len(record.get("kurtosis", ())) != 3:
        return None
    return np.array(record["kurtosis"], dtype=np.float64)


def refit_row(latents: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Excess kurtosis of PC1-3 of one class's kept latents on principal axes refitted to
    them (3 values; NaN for a component there is none of, or under
    MIN_IMAGES_FOR_KURTOSIS images kept)."""
    latents = np.asarray(latents)
    kept = np.asarray(kept)
    rows = np.flatnonzero(kept) if kept.dtype == bool else kept.astype(np.int64)
    k = np.full(3, np.nan)
    if len(rows) < MIN_IMAGES_FOR_KURTOSIS:
        return k
    row_bytes = 4 * max(1, latents.shape[1])
    if len(rows) * row_bytes > REFIT_CHUNK_BYTES:
        scores = _chunked_leading_scores(latents, rows, 3, max(1, REFIT_CHUNK_BYTES // row_bytes))
    else:
        x = latents[rows].astype(np.float32)
        centred = x - x.mean(axis=0)
        scores = centred @ leading_directions(centred, 3).T
    k[: scores.shape[1]] = excess_kurtosis(scores)
    return k


def refit_kurtosis(
    latents: Mapping[str, np.ndarray], kept: Mapping[str, np.ndarray]
) -> pl.DataFrame:
    """Per class: excess kurtosis of PC1-3 of the kept images on principal axes refitted
    to them (the paper's likely reading: the cleaned set's own leading components).

    latents: class -> (n, d) latents; kept: class -> (n,) bool.
    """
    return refit_kurtosis_by_threshold(latents, {"": kept})[""]


def refit_kurtosis_by_threshold(
    latents: Mapping[str, np.ndarray], kept: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, pl.DataFrame]:
    """`refit_kurtosis` for several keep lists at once (threshold -> class -> kept mask;
    a threshold may name only some of the classes), each class's latents fetched once for
    all of them (reading them costs about twice a refit)."""
    rows: dict[str, list[dict]] = {t: [] for t in kept}
    for name in sorted(latents):
        if not any(name in masks for masks in kept.values()):
            continue
        x_all = latents[name]
        for t, masks in kept.items():
            if name not in masks:
                continue
            k = refit_row(x_all, masks[name])
            rows[t].append({"class": name} | {f"r{c + 1}_after": float(k[c]) for c in range(3)})
        del x_all
    return {t: pl.DataFrame(r, schema=REFIT_SCHEMA) for t, r in rows.items()}


def gate_arrays(table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(classes, 3) arrays of kurtosis before and after of the measured classes."""
    measured = table.filter(pl.col("measured"))
    before = measured.select([f"k{c}_before" for c in (1, 2, 3)]).to_numpy()
    after = measured.select([f"k{c}_after" for c in (1, 2, 3)]).to_numpy()
    return before.reshape(-1, 3), after.reshape(-1, 3)


def entropy_by_class(
    scores: pl.DataFrame,
    keep: pl.DataFrame,
    bin_rule: str,
    before: Mapping[str, Sequence[float]] | None = None,
    groups: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
) -> pl.DataFrame:
    """Differential entropy (nats) of each spline marginal of PC1-3, before and after.

    before: class -> its three before-removal entropies as its spline fit stored them
    (`scores_summary`, the same function of the same scores), for the classes that have
    them; a class that kept every image has them after too. groups: the `class_scores`."""
    rows = []
    before = before or {}
    for name, z, kept in class_scores(scores, keep) if groups is None else groups:
        row = {"class": name}
        known = before.get(name)
        whole = known is not None and bool(kept.all())
        for c in range(3):
            h = known[c] if known is not None else _entropy(z[:, c], bin_rule)
            row[f"h{c + 1}_before"] = h
            row[f"h{c + 1}_after"] = h if whole else _entropy(z[kept, c], bin_rule)
        rows.append(row)
    schema = {"class": pl.String} | {
        f"h{c}_{w}": pl.Float64 for c in (1, 2, 3) for w in ("before", "after")
    }
    return pl.DataFrame(rows, schema=schema)


SCORES_SUMMARY_KEY = "latent_dedup_scores"
"""Where a class's spline scores table keeps `scores_summary` (parquet metadata)."""
SCORES_SUMMARY_VERSION = 1


def marginal_entropies(z: np.ndarray, bin_rule: str) -> list[float]:
    """The entropies of the spline marginals of a class's PC1-3 scores (n, 3) that a report
    reads before removal (NaN where a component is absent or constant)."""
    z = np.asarray(z, dtype=np.float64)
    return [_entropy(z[:, c], bin_rule) for c in range(3)]


def scores_summary(z: np.ndarray, components: int, bin_rule: str) -> dict[str, str]:
    """A class's spline scores table's metadata entry: the fit's component count and the
    entropies of its PC1-3 marginals (`marginal_entropies` of the scores as written), so
    each threshold's report reads them with the table's provenance instead of opening the
    fit (0.3 ms a class) and fitting 3 marginals again (0.15 ms each): 0.6 s of CPU a
    1,000-class report, twice (2026-12-07)."""
    entropies = [None if not np.isfinite(h) else h for h in marginal_entropies(z, bin_rule)]
    record = {
        "version": SCORES_SUMMARY_VERSION,
        "components": int(components),
        "bin_rule": str(bin_rule),
        "entropy": entropies,
    }
    return {SCORES_SUMMARY_KEY: json.dumps(record)}


def stored_scores_summary(
    metadata: Mapping[str, str], bin_rule: str
) -> tuple[int, list[float]] | None:
    """(components, before-removal entropies) a scores table's metadata holds for `bin_rule`,
    or None (none, another version or another rule)."""
    text = metadata.get(SCORES_SUMMARY_KEY)
    if not text:
        return None
    record = json.loads(text)
    if record.get("version") != SCORES_SUMMARY_VERSION or record.get("bin_rule") != bin_rule:
        return None
    entropy = record.get("entropy") or []
    if len(entropy) != 3:
        return None
    return int(record["components"]), [float("nan") if h is None else float(h) for h in entropy]


ENTROPIES_KEPT = 65_536
_ENTROPIES: dict[tuple[bytes, str], float] = {}


def _entropy(x: np.ndarray, bin_rule: str) -> float:
    """The spline marginal's entropy of these scores, kept by their bytes: a class that
    loses nothing has the same scores after as before, and the before-removal scores are
    the same at every threshold (a 1,000-class report of two thresholds fitted 12,000
    marginals, three quarters of them again)."""
    x = np.ascontiguousarray(x[np.isfinite(x)])
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    key = (hashlib.blake2b(x.tobytes(), digest_size=16).digest() + str(x.dtype).encode(), bin_rule)
    found = _ENTROPIES.get(key)
    if found is None:
        found = SplineDensity1D.fit(x, rule=bin_rule).entropy()
        if len(_ENTROPIES) >= ENTROPIES_KEPT:
            _ENTROPIES.clear()
        _ENTROPIES[key] = found
    return found


RIDGE_FITS_KEPT = 4_096
_RIDGE_FITS: dict[tuple[bytes, str], SplineDensity1D] = {}


def _ridge_fit(x: np.ndarray, bin_rule: str) -> SplineDensity1D:
    """The spline marginal a density ridge draws, kept by the scores' bytes as `_entropy`
    keeps entropies: a class that loses nothing draws the same fit before and after, and a
    class no update changed the same fit as the last report (0.02 s of a EuroSAT update's
    report in `dedup watch`)."""
    x = np.ascontiguousarray(x)
    key = (hashlib.blake2b(x.tobytes(), digest_size=16).digest() + str(x.dtype).encode(), bin_rule)
    found = _RIDGE_FITS.get(key)
    if found is None:
        found = SplineDensity1D.fit(x, rule=bin_rule)
        if len(_RIDGE_FITS) >= RIDGE_FITS_KEPT:
            _RIDGE_FITS.clear()
        _RIDGE_FITS[key] = found
    return found


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    return float(values[ok].mean()) if ok.any() else float("nan")


@dataclass(frozen=True)
class KurtosisReport:
    """One threshold's evaluation: markdown, figures, tables and the gate, computed once."""

    markdown: str
    figures: dict[str, bytes]
    gate: KurtosisGate
    chance: np.ndarray
    tolerance: float
    table: pl.DataFrame
    entropy: pl.DataFrame
    refit: tuple[ComponentRegression, ...] = ()

    @property
    def regressions(self) -> tuple[ComponentRegression, ...]:
        return self.gate.regressions

    def summary(self, threshold: str) -> dict:
        """The numbers behind Tables 2 and 3 and the gate for this threshold, JSON-ready."""
        return {
            "threshold": threshold,
            "images_before": int(self.table["n_before"].sum()),
            "images_after": int(self.table["n_after"].sum()),
            "classes_measured": int(self.table["measured"].sum()),
            "classes_not_measured": self.table.filter(~pl.col("measured"))["class"].to_list(),
            "gate": {
                "severity": self.gate.severity,
                "reasons": list(self.gate.reasons),
                "tolerance": self.tolerance,
                # what removing as many images per class at random stays under, at the
                # quantile below (per component; 1 - 0.05/3: 95% over the three at once)
                "random_removal_excess": [float(v) for v in self.chance],
                "random_removal_quantile": CHANCE_QUANTILE,
            },
            "regressions": [
                {
                    "component": r.component,
                    "slope": r.slope,
                    "intercept": r.intercept,
                    "equation": r.equation(),
                    "fraction_reduced": r.fraction_reduced,
                    "excess_at_median": r.excess_at_median,
                    "classes": r.n_classes,
                }
                for r in self.regressions
            ],
            "regressions_refit": [
                {
                    "component": r.component,
                    "slope": r.slope,
                    "intercept": r.intercept,
                    "equation": r.equation(),
                    "excess_at_median": r.excess_at_median,
                }
                for r in self.refit
            ],
            "entropy_change": [
                _mean(self.entropy[f"h{c}_after"] - self.entropy[f"h{c}_before"]) for c in (1, 2, 3)
            ],
        }


def build_report(
    threshold: str,
    scores: pl.DataFrame,
    keep: pl.DataFrame,
    *,
    bin_rule: str = "fd",
    tolerance: float = 0.0,
    method: str = "",
    empty_classes: Sequence[str] = (),
    draws: int = CHANCE_DRAWS,
    components: dict[str, int] | None = None,
    refit: pl.DataFrame | None = None,
    entropy_before: Mapping[str, Sequence[float]] | None = None,
) -> KurtosisReport:
    """Markdown, figures and the kurtosis gate of one threshold's removal (section 5).

    empty_classes: class folders with no readable image, listed with their reason;
    components: principal components each class used; refit: `refit_kurtosis` output,
    the after-kurtosis on axes refitted to the kept images (reported beside the gate's);
    entropy_before: the classes' stored before-removal entropies (`entropy_by_class`).
    """
    groups = class_scores(scores, keep)  # once for the table and the chance baseline
    table = kurtosis_by_class(scores, keep, groups=groups)
    if components is not None:
        table = table.with_columns(
            pl.col("class")
            .replace_strict(components, default=None, return_dtype=pl.Int64)
            .alias("components")
        )
    entropy = entropy_by_class(scores, keep, bin_rule, before=entropy_before, groups=groups)
    measured = table.filter(pl.col("measured"))
    before, after = gate_arrays(table)
    chance = random_removal_baseline(
        scores, keep, measured["class"].to_list(), draws=draws, groups=groups
    )
    gate = kurtosis_gate(before, after, tolerance, chance)
    refit_regs: tuple[ComponentRegression, ...] = ()
    if refit is not None:
        joined_refit = measured.join(refit, on="class", how="left", maintain_order="left")
        refit_after = joined_refit.select([f"r{c}_after" for c in (1, 2, 3)]).to_numpy()
        refit_regs = tuple(
            theil_sen(before[:, c], refit_after.reshape(-1, 3)[:, c], c + 1) for c in range(3)
        )
    labels = measured["class"].to_list()
    figures = {}
    for c, reg in enumerate(gate.regressions):
        figures[f"kurtosis_pc{c + 1}.svg"] = plots.kurtosis_scatter(
            before[:, c], after[:, c], labels, reg, threshold
        )
    joined = scores.join(keep.select("image_id", "kept"), on="image_id")
    for c in range(3):
        shown = _ridge_classes(entropy, c + 1)
        figures[f"density_pc{c + 1}.svg"] = _density_ridges(
            joined.filter(pl.col("class").is_in(shown)), c, threshold, bin_rule, entropy.height
        )

    n_before, n_after = int(table["n_before"].sum()), int(table["n_after"].sum())
    lines = [
        f"# Kurtosis report, T = {threshold}",
        "",
        f"Method: {method}" if method else "",
        "",
        f"Gate: **{gate.severity.upper()}**, {GATE_MEANING[gate.severity]} (tolerance "
        f"{tolerance}). " + "; ".join(gate.reasons),
        "",
        f"Measured: {measured.height} of {table.height} classes "
        f"(a class needs {MIN_IMAGES_MEASURED} images before and after removal).",
        "",
        "## Images left (the paper's Table 2)",
        "",
        "| T | images | fraction | paper | paper fraction |",
        "|---|---|---|---|---|",
        f"| no removal | {n_before:,} | 1.000 | {PAPER_TABLE_2['no removal']:,} | 1.000 |",
        f"| {threshold} | {n_after:,} | {n_after / max(n_before, 1):.3f} | "
        + (
            f"{PAPER_TABLE_2[threshold]:,} | {PAPER_TABLE_2[threshold] / PAPER_TABLE_2['no removal']:.3f} |"
            if threshold in PAPER_TABLE_2
            else "n/a | n/a |"
        ),
        "",
        "## Theil-Sen lines, kurtosis after on before (the paper's Table 3)",
        "",
        "| component | this dataset | slope 95% CI | classes reduced | line - median at median "
        f"| same at random removal ({CHANCE_QUANTILE:.1%}) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, reg in enumerate(gate.regressions):
        paper = PAPER_TABLE_3.get(threshold, ("n/a",) * 3)[c]
        reduced = f"{reg.fraction_reduced:.0%}" if np.isfinite(reg.fraction_reduced) else "n/a"
        lines.append(
            f"| PC{c + 1} | {reg.equation()} | [{reg.slope_low:.2f}, {reg.slope_high:.2f}] | "
            f"{reduced} | {reg.excess_at_median:+.3f} | {chance[c]:+.3f} | {paper} |"
        )
    if refit_regs:
        lines += [
            "",
            "Two readings of 'after' (the paper does not say which it used):",
            "",
            "| component | original axes (the gate's reading) | axes refitted to the kept "
            "images | paper |",
            "|---|---|---|---|",
        ]
        for c, (reg, ref) in enumerate(zip(gate.regressions, refit_regs, strict=True)):
            paper = PAPER_TABLE_3.get(threshold, ("n/a",) * 3)[c]
            lines.append(f"| PC{c + 1} | {reg.equation()} | {ref.equation()} | {paper} |")
        lines += [
            "",
            "The gate reads the original axes: before and after then measure the same "
            "variable, so a change is the removal's effect. Refitting the axes to the kept "
            "images (what the paper most likely did) measures the cleaned set's own leading "
            "directions, which rotate when images are removed, so part of its change is the "
            "rotation.",
        ]
    lines += [
        "",
        "## Differential entropy of the spline marginals (nats, mean over classes)",
        "",
        "| component | before | after | change | classes where entropy rose |",
        "|---|---|---|---|---|",
    ]
    for c in range(1, 4):
        b, a = entropy[f"h{c}_before"].to_numpy(), entropy[f"h{c}_after"].to_numpy()
        ok = np.isfinite(a) & np.isfinite(b)
        rose = f"{np.mean(a[ok] > b[ok]):.0%}" if ok.any() else "n/a"
        lines.append(f"| PC{c} | {_mean(b):.4f} | {_mean(a):.4f} | {_mean(a - b):+.4f} | {rose} |")
    lines += ["", "## Per class", "", _class_table(table, entropy), ""]
    not_measured = table.filter(~pl.col("measured"))
    if not_measured.height or empty_classes:
        lines += ["## Classes without statistics", ""]
        lines += [f"- {row['class']}: {row['note']}" for row in not_measured.iter_rows(named=True)]
        lines += [
            f"- {name}: no readable image (see catalog/quarantine.csv)" for name in empty_classes
        ]
        lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return KurtosisReport(
        "\n".join(lines) + "\n", figures, gate, chance, tolerance, table, entropy, refit_regs
    )


def _num(value: float) -> str:
    return f"{value:.3f}" if value is not None and np.isfinite(value) else "n/a"


def _class_table(table: pl.DataFrame, entropy: pl.DataFrame) -> str:
    head = (
        "| class | images | kept | components | measured | PC1 kurt. before -> after | PC2 | PC3 "
        "| PC1 entropy before -> after |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for row, ent in zip(table.iter_rows(named=True), entropy.iter_rows(named=True), strict=True):
        cells = [f"{_num(row[f'k{c}_before'])} -> {_num(row[f'k{c}_after'])}" for c in (1, 2, 3)]
        lines.append(
            f"| {row['class']} | {row['n_before']:,} | {row['n_after']:,} | "
            + f"{row.get('components') if row.get('components') is not None else 'n/a'} | "
            + ("yes" if row["measured"] else "no")
            + " | "
            + " | ".join(cells)
            + f" | {_num(ent['h1_before'])} -> {_num(ent['h1_after'])} |"
        )
    return "\n".join(lines)


MAX_RIDGES = 12


def _ridge_classes(entropy: pl.DataFrame, component: int, most: int = MAX_RIDGES) -> list[str]:
    """The classes a density figure shows: every class up to `most`, else the `most` whose
    entropy of this component changed most (a reader looks for what moved; one ridge per
    class made the figure grow with the classes, 0.55 inch and a fit each)."""
    if entropy.height <= most:
        return entropy["class"].to_list()
    change = (pl.col(f"h{component}_after") - pl.col(f"h{component}_before")).abs()
    ranked = entropy.with_columns(change.fill_nan(None).alias("_change")).sort(
        "_change", "class", descending=[True, False], nulls_last=True
    )
    return ranked.head(most)["class"].to_list()


def _density_ridges(
    joined: pl.DataFrame, component: int, threshold: str, bin_rule: str, classes: int = 0
) -> bytes:
    """One ridge per class: the spline density of one component before and after removal
    (`classes`: how many the report has, when `joined` holds only some of them)."""
    panels = []
    for (name,), group in joined.sort("class").group_by("class", maintain_order=True):
        x = group[COMPONENTS[component]].to_numpy()
        kept = group["kept"].to_numpy()
        x_after = x[kept]
        if not np.isfinite(x).all() or len(x_after) < 2 or np.ptp(x) == 0 or np.ptp(x_after) == 0:
            continue
        panels.append((name, _ridge_fit(x, bin_rule), _ridge_fit(x_after, bin_rule)))
    shown = joined["class"].n_unique()
    note = (
        f"{shown} of {classes} classes: those whose entropy changed most (every class: "
        "per_class.csv)"
        if classes > shown
        else ""
    )
    return plots.density_panels(panels, component + 1, threshold, note)


def summary_markdown(summaries: list[dict]) -> str:
    """Tables 2 and 3 across thresholds (highest T first, then budgets, smallest first),
    beside the paper's values."""
    summaries = sorted(
        summaries,
        key=lambda s: (
            (0, -cosine_of(s["threshold"]))
            if budget_of(s["threshold"]) is None
            else (1, budget_of(s["threshold"]))
        ),
    )
    n0 = summaries[0]["images_before"]
    p0 = PAPER_TABLE_2["no removal"]
    out = [
        "# Deduplication summary",
        "",
        "## Images left (the paper's Table 2)",
        "",
        "| T | images | fraction | paper fraction |",
        "|---|---|---|---|",
        f"| no removal | {n0:,} | 1.000 | 1.000 |",
    ]
    for s in summaries:
        paper = PAPER_TABLE_2.get(s["threshold"])
        pf = f"{paper / p0:.3f}" if paper else "n/a"
        out.append(
            f"| {s['threshold']} | {s['images_after']:,} | {s['images_after'] / max(n0, 1):.3f} | {pf} |"
        )
    refitted = any(s.get("regressions_refit") for s in summaries)
    out += [
        "",
        "## Theil-Sen lines of kurtosis after on before (the paper's Table 3)",
        "",
        "On the class's original principal axes (the gate's reading: the same variable before "
        + (
            "and after) and on axes refitted to the kept images (the paper's likely reading):"
            if refitted
            else "and after):"
        ),
        "",
        "| T | reading | PC1 | PC2 | PC3 | paper PC1 | paper PC2 | paper PC3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        paper = PAPER_TABLE_3.get(s["threshold"], ("n/a",) * 3)
        readings = [("original axes", s["regressions"])]
        if s.get("regressions_refit"):
            readings.append(("refit after removal", s["regressions_refit"]))
        for label, regs in readings:
            eqs = [r["equation"] for r in regs]
            out.append(
                f"| {s['threshold']} | {label} | "
                + " | ".join(eqs)
                + " | "
                + " | ".join(paper)
                + " |"
            )
    out += [
        "",
        "## Entropy change of the spline marginals (nats, mean over classes)",
        "",
        "| T | PC1 | PC2 | PC3 |",
        "|---|---|---|---|",
    ]
    for s in summaries:
        out.append(
            f"| {s['threshold']} | " + " | ".join(f"{v:+.4f}" for v in s["entropy_change"]) + " |"
        )
    return "\n".join(out) + "\n"
