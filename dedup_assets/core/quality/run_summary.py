"""What a run did, per threshold, in counts and words: the last screen of `dedup run` and
`dedup demo`, and the counts of `deduplicate`'s result.

Everything is read from what the threshold's assets stored for its *current* keep list
(`core.data.artifacts.threshold_verdict`: the keep list's summary, the kurtosis report's
summary with the gate, the clean copy's manifest), so an older file never speaks for this
run. The words say what a verdict means for the user's data: a kurtosis gate that found
no reduction within what removing as many images at random does is a note, not a failure
("not reduced, no effect beyond chance"); only a blocking verdict holds a clean copy back,
and it says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    ThresholdVerdict,
    digest,
    is_current,
    threshold_verdict,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.thresholds import budget_of


@dataclass(frozen=True)
class ThresholdCounts:
    """One threshold's keep list in numbers. removed = exact + near + by_override;
    overrides: the images whose decision an override made (kept or removed); for a budget,
    allowed_false: the removals it allows to be false (b x images, summed over classes) and
    beyond_chance: the classes whose near-duplicate removals exceed what chance explains."""

    threshold: str
    images: int
    kept: int
    removed: int
    exact: int
    near: int
    by_override: int
    overrides: int
    budget: float | None = None
    allowed_false: float | None = None
    beyond_chance: int | None = None
    space: str | None = None
    classes: int = 0
    other_spaces: tuple[tuple[str, int, int], ...] = ()
    # A budget's (classes, images) with nothing to read it on, and the near-duplicate
    # removals earlier runs decided there, which stay.
    unread: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def of(
        cls,
        threshold: str,
        keep: pl.DataFrame,
        summary: dict | None,
        space: str | None = None,
    ) -> ThresholdCounts:
        """From the keep list (its columns kept, match, decided_by; split, class and space
        for `space_line`) and its stored summary (`keep_lists/<T>.json`, for the budget's
        numbers; None: none). space: the space the run asked for (None: not compared)."""
        kept = int(keep["kept"].sum())
        overrides = 0
        if "decided_by" in keep.columns:
            overrides = int((keep["decided_by"] == "override").sum())
        budget = budget_of(threshold)
        allowed = beyond = None
        if budget is not None and summary is not None:
            per_class = summary.get("per_class") or []
            allowed = float(sum(c.get("allowed_false") or 0.0 for c in per_class))
            beyond = sum(bool(c.get("beyond_chance")) for c in per_class)
        return cls(
            threshold=threshold,
            images=keep.height,
            kept=kept,
            removed=keep.height - kept,
            exact=int((keep["match"] == "exact").sum()),
            near=int((keep["match"] == "near").sum()),
            by_override=int((keep["match"] == "override").sum()),
            overrides=overrides,
            budget=budget,
            allowed_false=allowed,
            beyond_chance=beyond,
            unread=_unread(keep) if budget is not None else (0, 0, 0),
            **_spaces(keep, space),
        )

    def line(self) -> str:
        """`kept 380 of 416, removed 36: 20 exact copies, 16 near-duplicates, ...`."""
        parts = [
            _n(self.exact, "exact copy", "exact copies"),
            _n(self.near, "near-duplicate", "near-duplicates"),
        ]
        if self.by_override:
            parts.append(f"{self.by_override:,} by your overrides")
        text = f"kept {self.kept:,} of {self.images:,}, removed {self.removed:,}: " + ", ".join(
            parts
        )
        if self.overrides:
            text += f" ({self.overrides:,} decided by overrides.csv)"
        return text

    def space_line(self) -> str:
        """The classes decided in another space than the one asked for (a class too small
        for a fitted space falls back to one without a fit), or "" when none was."""
        if not self.other_spaces:
            return ""
        # Deferred: the decision modules import scipy, and a run with nothing new says its
        # last screen without them.
        from dedup_assets.core.decision.class_decision import MIN_FITTED_COMPONENTS
        from dedup_assets.core.density.class_density import SAMPLES_PER_COMPONENT

        classes = sum(c for _, c, _ in self.other_spaces)
        images = sum(n for _, _, n in self.other_spaces)
        where = ", ".join(
            f"{_n(c, 'class', 'classes')} in {used}" for used, c, _ in self.other_spaces
        )
        whole = "all" if classes == self.classes else f"{classes:,} of"
        return (
            f"space: {whole} {self.classes:,} classes ({_n(images, 'image', 'images')}) were "
            f"decided without a fit, not in {self.space}: {where}. A fitted space needs at "
            f"least {MIN_FITTED_COMPONENTS} principal components (a class of "
            f"{MIN_FITTED_COMPONENTS * SAMPLES_PER_COMPONENT} or more varied images and "
            f"--components {MIN_FITTED_COMPONENTS} or more)"
            + (
                f" and, at a budget of {self.threshold}, {own_images(self.budget):,} or more "
                "images of its own (a smaller class is decided against the run's other "
                "classes, in the space without a fit)"
                if self.budget is not None
                else ""
            )
            + "; the rows say so in `space`"
        )

    def unread_line(self) -> str:
        """For a budget: the classes it could not be read on, in the class or the run's other
        classes (the keep list's `calibrated_on` "none"), which lost exact copies only."""
        classes, images, carried = self.unread
        if self.budget is None or not classes:
            return ""
        what = (
            "nothing but exact copies was removed by it now; the "
            f"{_n(carried, 'near-duplicate removal', 'near-duplicate removals')} there follow "
            "earlier runs' decisions and stay"
            if carried
            else "only their exact copies were removed"
        )
        own = own_images(self.budget)
        return (
            f"budget {self.threshold}: {_n(classes, 'class', 'classes')} "
            f"({_n(images, 'image', 'images')}) could not read it: a class needs {own:,} images "
            f"of its own, or, of n images, ceil({own:,} / n) x (n - 1) in the run's other "
            f"classes (their disjoint draws of its size); {what}; a larger budget or a cosine "
            "threshold removes near copies there"
        )

    def budget_line(self) -> str:
        """For a budget: the near-duplicate removals beside those it allows to be false."""
        if self.budget is None or self.allowed_false is None:
            return ""
        if self.allowed_false < self.near:
            text = (
                f"budget {self.threshold}: about {self.allowed_false:,.1f} of the "
                f"{self.near:,} near-duplicate removals are expected to be false (the budget x "
                "the images)"
            )
        else:  # "about 270 of the 203" is no sentence: the budget allows more than was removed
            text = (
                f"budget {self.threshold}: it allows about {self.allowed_false:,.1f} false "
                f"removals (the budget x the images), no fewer than the {self.near:,} "
                "near-duplicates removed: any of them may be an unrelated image unless its "
                "class removed more than chance explains"
            )
        if self.beyond_chance:
            text += (
                f"; {_n(self.beyond_chance, 'class', 'classes')} removed more than chance "
                "explains: "
                "real duplicates, worth a look on the review page"
            )
        return text


@dataclass(frozen=True)
class ThresholdSummary:
    """One threshold after a run: its counts (None without a current keep list), its
    stored verdicts, and its cross-class pairs (None without a current table)."""

    threshold: str
    counts: ThresholdCounts | None
    verdict: ThresholdVerdict
    cross_class_pairs: int | None
    clean_mode: str

    @property
    def blocked(self) -> bool:
        """A blocking gate holds this keep list's clean copy back."""
        problems = self.verdict.problems
        return self.counts is not None and (self.verdict.gate == "error" or bool(problems))

    def lines(self, layout: OutputLayout) -> list[str]:
        """The threshold's lines of the last screen: counts, gates in words, clean copy."""
        t = self.threshold
        if self.counts is None:
            return [f"T={t}: no current keep list (a stage before it failed or was skipped)"]
        out = [f"T={t}: {self.counts.line()}"]
        for extra in (
            self.counts.budget_line(),
            self.counts.space_line(),
            self.counts.unread_line(),
        ):
            if extra:
                out.append(f"  {extra}")
        problems = self.verdict.problems
        if problems is None:
            out.append("  keep list: no integrity verdict recorded")
        elif problems:
            out.append(
                f"  keep list: fails its integrity check, the clean copy is held back: "
                f"{'; '.join(problems)}"
            )
        out.append(f"  kurtosis: {kurtosis_words(self.verdict.report)}")
        if self.cross_class_pairs is not None:
            out.append(f"  cross-class: {cross_class_words(self.cross_class_pairs, layout, t)}")
        out.append(f"  clean copy: {self._clean_words(layout)}")
        return out

    def _clean_words(self, layout: OutputLayout) -> str:
        t = self.threshold
        if self.verdict.clean_copy_current(self.clean_mode):
            if not self.counts:
                return ""
            manifest = self.verdict.clean_manifest or {}
            leakage = manifest.get("leakage")
            if not leakage:
                return f"{layout.clean_dir(t)} ({self.counts.kept:,} images)"
            left = int(manifest.get("left_out_for_leakage") or 0)
            images = manifest.get("images", self.counts.kept - left)
            return (
                f"{layout.clean_dir(t)} ({images:,} images; {left:,} left out for train/test "
                f"leakage, --leakage {leakage.get('policy')})"
            )
        held = "held back by the gate above"
        if layout.clean_stale_note(t).exists():
            return f"{held}; clean/{t} is an older copy (see {layout.clean_stale_note(t)})"
        if self.blocked:
            return f"{held}; none written"
        return "not made from this keep list (a stage failed or was skipped)"


def _spaces(keep: pl.DataFrame, space: str | None) -> dict:
    """The keep list's classes, and those decided in another space than `space`, by the
    space used: (space, classes, images), most classes first."""
    if space is None or not {"class", "space"} <= set(keep.columns):
        return {}
    by = [c for c in ("split", "class") if c in keep.columns]
    per_class = keep.group_by(by).agg(pl.col("space").first(), pl.len().alias("images"))
    other = (
        per_class.filter(pl.col("space") != space)
        .group_by("space")
        .agg(pl.len().alias("classes"), pl.col("images").sum())
        .sort(["classes", "space"], descending=[True, False])
    )
    return {
        "space": space,
        "classes": per_class.height,
        "other_spaces": tuple(
            (str(s), int(c), int(n))
            for s, c, n in other.select("space", "classes", "images").iter_rows()
        ),
    }


def _unread(keep: pl.DataFrame) -> tuple[int, int, int]:
    """(classes, images, near-duplicate removals) of the classes whose budget had nothing to
    be read on (`calibrated_on` "none"): those removals were decided by earlier runs, when
    the class could read it (a class that grew can fall back to none: the pool's null is
    read in sets of n - 1). A class of one image is not among them: it has nothing to
    remove, and no pair to read a budget for (`calibration.class_budgets` records it "none"
    too)."""
    if not {"class", "calibrated_on"} <= set(keep.columns):
        return (0, 0, 0)
    by = [c for c in ("split", "class") if c in keep.columns]
    near = (pl.col("match") == "near").sum() if "match" in keep.columns else pl.lit(0)
    none = (
        keep.group_by(by)
        .agg(pl.col("calibrated_on").first(), pl.len().alias("images"), near.alias("near"))
        .filter((pl.col("calibrated_on") == "none") & (pl.col("images") >= 2))
    )
    return (none.height, int(none["images"].sum()), int(none["near"].sum()))


def own_images(budget: float) -> int:
    """The fewest images a class reads `budget` on by itself: n with floor(b (n + 1)) >= 1
    (`core.decision.calibration.resolvable`), 99 for 1%."""
    return max(1, math.ceil(1.0 / budget - 1e-9) - 1)


def _n(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def kurtosis_words(report: dict | None) -> str:
    """The kurtosis gate's verdict as a user reads it, from a current report's summary
    (`reports/<T>/summary.json`): reduced (pass); not reduced within what removing as many
    images at random does (warn: a note, not a failure); raised beyond that and the
    tolerance (error: the clean copy is held back)."""
    if report is None:
        return "no current report (the threshold did not finish)"
    gate = report.get("gate") or {}
    severity = gate.get("severity", "")
    # `random_removal_excess_95` in reports written before 2026-12-03 (the same numbers,
    # at the 98.3% quantile: the name said 95, the family-wise level over three components)
    chance = gate.get("random_removal_excess") or gate.get("random_removal_excess_95") or []
    tolerance = gate.get("tolerance")
    regressions = report.get("regressions") or []
    # (component, excess at the median, what random removal reaches at the gate's quantile)
    reduced, flat, tolerated, raised = [], [], [], []
    for r in regressions:
        c, excess = int(r["component"]), r.get("excess_at_median")
        if excess is None or excess != excess:  # NaN: no class large enough
            continue
        limit = chance[c - 1] if c - 1 < len(chance) else float("nan")
        # compared as printed (three decimals): "+0.000 beyond the -0.000" said nothing
        shown, shown_limit = round(excess, 3), round(limit, 3)
        if shown < 0:
            reduced.append((c, excess, limit))
        elif severity == "error" and tolerance is not None and excess > max(tolerance, limit):
            raised.append((c, excess, limit))
        elif shown_limit == shown_limit and shown > shown_limit:  # beyond chance, tolerated
            tolerated.append((c, excess, limit))
        else:
            flat.append((c, excess, limit))
    removed = (report.get("images_before") or 0) - (report.get("images_after") or 0)
    if report.get("images_before") and removed == 0 and severity != "error":
        # (it read "not reduced ... +0.000 beyond the -0.000 that random removal reaches")
        return "unchanged: nothing was removed (a note, not a failure)"
    if not (reduced or flat or tolerated or raised):
        note = "not measured: no class has 12 images before and after removal"
        return note + ("; the clean copy is held back" if severity == "error" else "")
    said = []
    if raised:
        said.append(
            f"{_pcs(raised)} {_excess(raised)} at the median, beyond the tolerance {tolerance} "
            f"and the {_chance(raised)} that removing as many images at random stays under"
        )
    if tolerated:
        said.append(
            f"{_pcs(tolerated)} {_excess(tolerated)} at the median, beyond the "
            f"{_chance(tolerated)} that removing as many images at random reaches but within "
            f"the tolerance {tolerance}"
        )
    if flat:
        said.append(
            f"{_pcs(flat)} {_excess(flat)} at the median, within the {_chance(flat)} that "
            "removing as many images at random reaches"
        )
    if reduced:
        said.append(f"{_pcs(reduced)} reduced by {', '.join(f'{-e:.3f}' for _, e, _ in reduced)}")
    details = "; ".join(said)
    if severity == "error":
        if not raised:  # a summary without the numbers: the gate's own reasons
            details += "; " + "; ".join(gate.get("reasons") or ["beyond the tolerance"])
        return (
            "raised beyond chance, the clean copy is held back (kurtosis_reduction blocks): "
            + details
        )
    if severity == "warn":
        why = "" if tolerated else ", no effect beyond chance"
        return f"not reduced{why}: a note, not a failure ({details})"
    return f"reduced, as the paper expects ({details})"


def _pcs(items: list[tuple[int, float, float]]) -> str:
    return ", ".join(f"PC{c}" for c, _, _ in items)


def _excess(items: list[tuple[int, float, float]]) -> str:
    return ", ".join(f"{e:+.3f}" for _, e, _ in items)


def _chance(items: list[tuple[int, float, float]]) -> str:
    return ", ".join(f"{v:+.3f}" if v == v else "n/a" for _, _, v in items)


def cross_class_words(pairs: int, layout: OutputLayout, threshold: str) -> str:
    if not pairs:
        return "no near-identical images in different classes"
    return (
        f"{_n(pairs, 'pair', 'pairs')} of near-identical images in different classes, likely label "
        f"errors (no_cross_class_duplicates warns; {layout.cross_class(threshold)})"
    )


def threshold_summaries(
    layout: OutputLayout, current: CurrentInputs | None, thresholds: list[str]
) -> list[ThresholdSummary]:
    """Every threshold's summary against the current inputs (None: nothing is current)."""
    out = []
    mode = str(current.settings.clean_copy_mode) if current is not None else ""
    for t in thresholds:
        expected = current.keep_list(t) if current is not None else None
        keep_digest = digest(expected) if expected is not None else ""
        verdict = threshold_verdict(layout, t, keep_digest)
        counts = pairs = None
        if expected is not None and is_current(layout.keep_list(t), expected):
            keep = pl.read_parquet(
                layout.keep_list(t), columns=_present(layout.keep_list(t), _COUNTED), glob=False
            )
            summary = verdict.keep_summary
            if summary is not None and summary.get("keep_list") != keep_digest:
                summary = None
            counts = ThresholdCounts.of(t, keep, summary, str(current.settings.similarity_space))
            if is_current(layout.cross_class(t), current.cross_class(t)):
                pairs = (
                    pl.scan_parquet(layout.cross_class(t), glob=False)
                    .select(pl.len())
                    .collect()
                    .item()
                )
        out.append(ThresholdSummary(t, counts, verdict, pairs, mode))
    return out


_COUNTED = ("kept", "match", "decided_by", "split", "class", "space", "calibrated_on")


def _present(path: Path, columns: tuple[str, ...]) -> list[str]:
    """The columns of `columns` a parquet file has (a keep list of an earlier version may
    lack decided_by)."""
    names = pl.scan_parquet(path, glob=False).collect_schema()
    return [c for c in columns if c in names]


def leakage_words(
    split: str,
    flagged: int,
    exact: int,
    tolerance: int,
    layout: OutputLayout,
    budget_note: str = "",
) -> str:
    """One evaluation split's leakage verdict as the last screen says it: how many of its
    images have a copy in train (exact and near apart), the tolerance, and where to look
    (`leakage.csv`, the review page's leakage section); then `budget_note`
    (`leakage.budget_note`: the split too small to read the budget, only exact copies
    looked for), so a clean verdict is never read as "no near copy either"."""
    tail = f" ({budget_note})" if budget_note else ""
    if not flagged:
        return f"no {split} image has a copy in train{tail}"
    images = "image has" if flagged == 1 else "images have"
    return (
        f"{flagged:,} {split} {images} a copy in train ({exact:,} exact, {flagged - exact:,} "
        f"near; tolerance {tolerance}): see {layout.leakage} and the leakage section of "
        f"{layout.review_index}{tail}"
    )
