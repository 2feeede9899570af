"""What the outputs across thresholds (the summary, the evaluation, the review page) are made
from, recorded by each as it is written.

A rerun decides that nothing is left to do when every class, threshold, leakage table and
clean copy is current (`runner._nothing_to_do`). These three outputs read all of those
and also files of their own (the ground truth, the corrections file), and they are written
last: a run stopped among them (Ctrl-C, a kill) left them behind the keep lists, and a new
ground truth was never scored, while the rerun said every output was up to date. Each now
records `summary_inputs` when written; a run that goes on forgets the three records first,
so only those its own stage finishes come back; and a rerun is "nothing to do" only when
all three record the inputs of now.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from dedup_assets.core.data.artifacts import CurrentInputs, digest, file_digest
from dedup_assets.core.data.atomic_io import write_json
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.leakage import read_record

SUMMARY_OUTPUTS = ("dedup_summary", "dedup_evaluation", "review_page")
"""The assets across thresholds, each with its own record."""


def summary_inputs(
    layout: OutputLayout,
    current: CurrentInputs,
    thresholds: Sequence[str],
    ground_truth: Path | None,
    overrides: Path | None,
) -> dict:
    """The inputs of the outputs across thresholds: every threshold's keep list and
    cross-class pairs (as `CurrentInputs` expects them: classes, model, settings and the
    corrections they honour), the ground truth and corrections files by content, and what
    the stored leakage table was made from."""

    def content(path: Path | None) -> str:
        return file_digest(path) if path is not None and path.is_file() else ""

    return {
        "kind": "summary",
        "thresholds": list(thresholds),
        "keep_lists": {t: digest(current.keep_list(t)) for t in thresholds},
        "cross_class": {t: digest(current.cross_class(t)) for t in thresholds},
        "ground_truth": content(ground_truth),
        "overrides": content(overrides),
        "leakage": str((read_record(layout) or {}).get("made_from") or ""),
    }


def record_summary_inputs(layout: OutputLayout, asset: str, inputs: dict) -> None:
    """`asset` (one of SUMMARY_OUTPUTS) was written from `inputs`."""
    write_json({"made_from": digest(inputs)}, layout.summary_record(asset))


def summary_outputs_current(layout: OutputLayout, inputs: dict) -> bool:
    """Every output across thresholds records `inputs` (an unreadable record: not current)."""
    expected = digest(inputs)
    for asset in SUMMARY_OUTPUTS:
        try:
            record = json.loads(layout.summary_record(asset).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("made_from") != expected:
            return False
    return True


def forget_summary_inputs(layout: OutputLayout) -> None:
    """Drop the three records: the run about to write the outputs again makes them anew."""
    for asset in SUMMARY_OUTPUTS:
        layout.summary_record(asset).unlink(missing_ok=True)
