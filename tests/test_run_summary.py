"""The last screen's counts and words (`core.quality.run_summary`): a kurtosis gate that
found no reduction within chance reads as a note, never as a failure; only a blocking one
says the clean copy is held back; counts keep exact copies, near-duplicates and overrides
apart, and a budget says how many removals it allows to be false."""

import dataclasses

import polars as pl
import pytest

from dedup_assets.core.quality.run_summary import ThresholdCounts, kurtosis_words


def _report(severity, excess, chance, tolerance=0.1):
    return {
        "gate": {
            "severity": severity,
            "tolerance": tolerance,
            "random_removal_excess": chance,
            "reasons": ["(the gate's own reason)"],
        },
        "regressions": [{"component": c + 1, "excess_at_median": e} for c, e in enumerate(excess)],
    }


def test_a_pass_says_reduced():
    said = kurtosis_words(_report("pass", [-0.1, -0.02, -0.3], [0.1, 0.1, 0.1]))
    assert said.startswith("reduced, as the paper expects")
    assert "PC1, PC2, PC3 reduced by 0.100, 0.020, 0.300" in said


def test_a_warning_within_chance_is_a_note_not_a_failure():
    said = kurtosis_words(_report("warn", [0.124, 0.049, -0.01], [0.173, 0.1, 0.1]))
    assert said.startswith("not reduced, no effect beyond chance: a note, not a failure")
    assert "PC1, PC2 +0.124, +0.049 at the median, within the +0.173, +0.100" in said
    assert "PC3 reduced by 0.010" in said
    assert "held back" not in said and "fail" not in said.replace("not a failure", "")


def test_a_warning_beyond_chance_but_within_the_tolerance_says_so():
    said = kurtosis_words(_report("warn", [0.09, 0.0, -0.01], [0.05, 0.1, 0.1]))
    assert said.startswith("not reduced: a note, not a failure")
    assert "beyond the +0.050 that removing as many images at random reaches but within" in said


def test_nothing_removed_says_so_not_a_change_within_chance():
    """It read "not reduced ... +0.000 beyond the -0.000 that random removal reaches"."""
    report = _report("warn", [1e-6, 0.0, 2e-5], [-1e-6, -0.0, -3e-5])
    said = kurtosis_words(report | {"images_before": 40, "images_after": 40})
    assert said == "unchanged: nothing was removed (a note, not a failure)"
    one_gone = kurtosis_words(report | {"images_before": 40, "images_after": 39})
    assert one_gone.startswith("not reduced, no effect beyond chance"), one_gone
    assert "beyond the -0.000" not in one_gone


def test_a_blocking_verdict_says_the_clean_copy_is_held_back():
    said = kurtosis_words(_report("error", [0.33, 0.05, -0.01], [0.15, 0.1, 0.1]))
    assert said.startswith("raised beyond chance, the clean copy is held back")
    assert "PC1 +0.330 at the median, beyond the tolerance 0.1 and the +0.150" in said


@pytest.mark.parametrize("report", [None, _report("warn", [float("nan")] * 3, [0.1] * 3)])
def test_no_report_or_no_measured_class_is_said(report):
    said = kurtosis_words(report)
    assert said.startswith("no current report" if report is None else "not measured")


def test_counts_keep_exact_near_and_overrides_apart_and_a_budget_says_what_it_allows():
    keep = pl.DataFrame(
        {
            "kept": [True, True, False, False, False, True],
            "match": [None, None, "exact", "near", "override", None],
            "decided_by": ["model", "override", "exact", "model", "override", "model"],
        }
    )
    summary = {
        "per_class": [
            {"allowed_false": 0.5, "beyond_chance": True},
            {"allowed_false": 0.25, "beyond_chance": False},
        ]
    }
    counts = ThresholdCounts.of("1%", keep, summary)
    assert (counts.images, counts.kept, counts.removed) == (6, 3, 3)
    assert (counts.exact, counts.near, counts.by_override, counts.overrides) == (1, 1, 1, 2)
    assert counts.allowed_false == 0.75 and counts.beyond_chance == 1
    assert counts.line() == (
        "kept 3 of 6, removed 3: 1 exact copy, 1 near-duplicate, 1 by your overrides "
        "(2 decided by overrides.csv)"
    )
    assert "about 0.8 of the 1 near-duplicate removals are expected to be false" in (
        counts.budget_line()
    )
    assert "1 class removed more than chance explains" in counts.budget_line()
    # EuroSAT at 1%: the budget allows 270 false removals and 203 were made.
    many = dataclasses.replace(counts, allowed_false=270.0, near=203)
    assert (
        "allows about 270.0 false removals (the budget x the images), no fewer than the "
        "203 near-duplicates removed" in many.budget_line()
    )
    assert "of the 203 near-duplicate removals" not in many.budget_line()
    cosine = ThresholdCounts.of("0.95", keep.drop("decided_by"), None)
    assert cosine.allowed_false is None and cosine.budget_line() == "" and cosine.overrides == 0


def test_a_report_written_before_the_rename_reads_the_same():
    """Reports written before the key said its quantile (`random_removal_excess_95`, the
    98.3% quantile) are worded from the same numbers."""
    new = _report("warn", [0.124, 0.049, -0.01], [0.173, 0.1, 0.1])
    old = {**new, "gate": dict(new["gate"])}
    old["gate"]["random_removal_excess_95"] = old["gate"].pop("random_removal_excess")
    assert kurtosis_words(old) == kurtosis_words(new)
    assert "within the +0.173, +0.100" in kurtosis_words(old)


def _classes(*sizes_spaces: tuple[str, str, int, str]) -> pl.DataFrame:
    rows = [(split, name, space) for split, name, n, space in sizes_spaces for _ in range(n)]
    return pl.DataFrame(
        {
            "kept": [True] * len(rows),
            "match": [None] * len(rows),
            "split": [r[0] for r in rows],
            "class": [r[1] for r in rows],
            "space": [r[2] for r in rows],
        },
        schema={
            "kept": pl.Boolean,
            "match": pl.String,
            "split": pl.String,
            "class": pl.String,
            "space": pl.String,
        },
    )


def test_classes_decided_without_a_fit_are_counted_by_the_space_they_used():
    asked = "spline_copula_dct"
    keep = _classes(
        ("train", "cats", 40, asked),
        ("test", "cats", 5, "dct"),  # the same name in another split: another class
        ("train", "dogs", 3, "dct"),
        ("train", "owls", 1, "phash"),
    )
    counts = ThresholdCounts.of("0.95", keep, None, asked)
    assert counts.classes == 4
    assert counts.other_spaces == (("dct", 2, 8), ("phash", 1, 1))
    line = counts.space_line()
    assert line.startswith(
        "space: 3 of 4 classes (9 images) were decided without a fit, not in "
        "spline_copula_dct: 2 classes in dct, 1 class in phash."
    )
    assert "at least 8 principal components" in line and "--components 8" in line


def test_every_class_without_a_fit_says_all_and_none_says_nothing():
    every = ThresholdCounts.of(
        "1%", _classes(("", "a", 3, "dct"), ("", "b", 2, "dct")), None, "whitened"
    )
    assert every.space_line().startswith("space: all 2 classes (5 images) were decided")
    fitted = ThresholdCounts.of("1%", _classes(("", "a", 40, "whitened")), None, "whitened")
    assert fitted.other_spaces == () and fitted.space_line() == ""
    # Not compared: no space given, or a keep list without the columns.
    assert ThresholdCounts.of("1%", _classes(("", "a", 3, "dct")), None).space_line() == ""
    bare = _classes(("", "a", 3, "dct")).drop("space")
    assert ThresholdCounts.of("1%", bare, None, "whitened").space_line() == ""
    assert ThresholdCounts.of("1%", _classes(), None, "whitened").space_line() == ""


@pytest.mark.parametrize("budget", [0.5, 0.1, 0.03, 0.02, 0.01, 0.005, 0.001, 0.0001])
def test_own_images_is_the_fewest_a_class_reads_its_budget_on(budget):
    from dedup_assets.core.decision.calibration import resolvable
    from dedup_assets.core.quality.run_summary import own_images

    n = own_images(budget)
    assert resolvable(n, budget) and (n == 1 or not resolvable(n - 1, budget))


def test_a_budget_says_which_classes_it_could_not_be_read_on():
    """Classes whose budget had nothing to be read on (`calibrated_on` "none": too few images
    of their own and in the run's other classes) lost exact copies only: the last screen
    counts them, and says a budget's own condition for its space beside the fit's."""
    keep = _classes(
        ("", "a", 30, "phash"),
        ("", "b", 20, "phash"),
        ("", "c", 150, "whitened"),
        ("", "d", 1, "phash"),
    )
    keep = keep.with_columns(
        pl.Series("calibrated_on", ["none"] * 30 + ["none"] * 20 + ["class"] * 150 + ["none"])
    )
    counts = ThresholdCounts.of("1%", keep, None, "whitened")
    # d, a class of one image, has nothing to remove and no pair to read a budget for: not
    # among the classes the budget could not be read on (the run's others had 200 images).
    assert counts.unread == (2, 50, 0)
    assert counts.unread_line() == (
        "budget 1%: 2 classes (50 images) could not read it: a class needs 99 images of its "
        "own, or, of n images, ceil(99 / n) x (n - 1) in the run's other classes (their "
        "disjoint draws of its size); only their exact copies were removed; a larger budget "
        "or a cosine threshold removes near copies there"
    )
    # A class that grew out of reading it keeps the near-duplicate removals made when it
    # could: the line no longer says only exact copies went.
    carried = keep.with_columns(
        pl.when(pl.int_range(pl.len()) < 3)
        .then(pl.lit("near"))
        .otherwise(pl.col("match"))
        .alias("match")
    )
    grown = ThresholdCounts.of("1%", carried, None, "whitened")
    assert grown.unread == (2, 50, 3)
    assert grown.unread_line().endswith(
        "draws of its size); nothing but exact copies was removed by it now; the 3 "
        "near-duplicate removals there follow earlier runs' decisions and stay; a larger "
        "budget or a cosine threshold removes near copies there"
    )
    assert "at a budget of 1%, 99 or more images of its own" in counts.space_line()
    cosine = ThresholdCounts.of("0.95", keep, None, "whitened")
    assert cosine.unread == (0, 0, 0) and cosine.unread_line() == ""
    assert "budget" not in cosine.space_line()
    read = keep.with_columns(pl.lit("pool").alias("calibrated_on"))
    assert ThresholdCounts.of("1%", read, None, "whitened").unread_line() == ""
    assert ThresholdCounts.of("1%", keep.drop("calibrated_on"), None).unread == (0, 0, 0)
