"""The kurtosis gate as the Dagster UI draws it: its names say what its text says (the
random-removal excess is the 98.3% quantile, not a "_95"), and a WARN verdict (not
reduced, within chance) passes with its verdict in words instead of being drawn "Failed";
only a blocking verdict fails the check."""

import re

import dagster as dg
import numpy as np
import polars as pl
import pytest

from dedup_assets.assets.reports import gate_check_result
from dedup_assets.config import PipelineConfig
from dedup_assets.core.quality.kurtosis_report import build_report
from dedup_assets.core.quality.statistics import CHANCE_DRAWS, CHANCE_QUANTILE
from dedup_assets.definitions import build_definitions


def _classes(kind: str, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Five classes of 300 normal points (PC1-3) and which are kept: "tails" removes 10
    outliers planted at +-5 (kurtosis falls: PASS), "random" 30 images at random (no effect
    beyond chance: WARN), "shoulders" every image with a component in the shoulders
    (0.7 < |z| < 1.6), which leaves the distribution more peaked (ERROR)."""
    rng = np.random.default_rng(seed)
    rows, keep = [], []
    for c in range(5):
        z = rng.standard_normal((300, 3))
        if kind == "tails":
            z[:10] = np.sign(z[:10]) * 5
            kept = np.arange(300) >= 10
        elif kind == "random":
            kept = rng.permutation(np.arange(300) >= 30)
        else:
            a = np.abs(z)
            kept = ~((a > 0.7) & (a < 1.6)).any(axis=1)
        for i, v in enumerate(z):
            rows.append(
                {"class": f"c{c}", "image_id": f"c{c}-{i}", "pc1": v[0], "pc2": v[1], "pc3": v[2]}
            )
            keep.append({"image_id": f"c{c}-{i}", "kept": bool(kept[i])})
    return pl.DataFrame(rows), pl.DataFrame(keep)


def _check(scores, keep, tolerance):
    report = build_report("0.95", scores, keep, tolerance=tolerance, draws=200)
    return report, gate_check_result(report.summary("0.95"), report.table)


def test_check_metadata_names_say_the_quantile_its_text_says(tmp_path):
    scores, keep = _classes("tails")
    report, check = _check(scores, keep, 0.0)
    names = set(check.metadata)
    assert not [n for n in names if n.endswith("_95")], names
    assert {f"pc{c}_random_removal_excess" for c in (1, 2, 3)} <= names
    assert check.metadata["random_removal_quantile"].value == pytest.approx(CHANCE_QUANTILE)
    for c in (1, 2, 3):
        assert check.metadata[f"pc{c}_random_removal_excess"].value == pytest.approx(
            report.chance[c - 1]
        )
    gate = report.summary("0.95")["gate"]
    assert gate["random_removal_quantile"] == pytest.approx(CHANCE_QUANTILE)
    assert "random_removal_excess_95" not in gate
    # the check's description, as the UI shows it beside that metadata
    defs = build_definitions(PipelineConfig.build(output=str(tmp_path / "out")))
    (spec,) = defs.resolve_assets_def("kurtosis_report").check_specs
    quoted = [float(q) / 100 for q in re.findall(r"(\d+(?:\.\d+)?)% quantile", spec.description)]
    assert quoted == [pytest.approx(CHANCE_QUANTILE, abs=5e-4)], spec.description
    assert f"{CHANCE_DRAWS:,} draws" in spec.description
    assert "pcN_random_removal_excess" in spec.description
    # report.md's column head says the same quantile
    assert f"same at random removal ({CHANCE_QUANTILE:.1%})" in report.markdown


def test_a_reduction_passes():
    scores, keep = _classes("tails")
    report, check = _check(scores, keep, 0.0)
    assert report.gate.severity == "pass"
    assert check.passed
    assert check.description.startswith("reduced")
    assert "Gate: **PASS**, kurtosis reduced" in report.markdown


def test_a_warning_passes_with_its_verdict_in_words_not_drawn_failed():
    """Not reduced, within what random removal reaches: a note, which Dagster would draw
    "Failed" (a yellow one) if the check did not pass."""
    scores, keep = _classes("random")
    report, check = _check(scores, keep, 0.0)
    assert report.gate.severity == "warn", report.gate.reasons
    assert check.passed is True
    assert "a note, not a failure" in check.description
    assert check.metadata["verdict"].value.startswith("WARN: not reduced")
    assert "Gate: **WARN**, not reduced: a note, not a failure" in report.markdown


def test_a_blocking_verdict_fails_as_an_error():
    scores, keep = _classes("shoulders")
    report, check = _check(scores, keep, 0.0)
    assert report.gate.severity == "error", report.gate.reasons
    assert check.passed is False
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert "held back" in check.description
