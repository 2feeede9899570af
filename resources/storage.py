"""Where the pipeline writes its artefacts, and the user's corrections it honours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from dedup_assets.core.data.artifacts import CurrentInputs, MethodSettings
from dedup_assets.core.data.layout import DEFAULT_OUTPUT, OutputLayout
from dedup_assets.core.decision.overrides import Overrides, load_known_overrides, overrides_path
from dedup_assets.core.quality.summary_inputs import summary_inputs


class DedupStorage(dg.ConfigurableResource):
    """The output folder; every asset's files live under it (see OutputLayout).

    overrides: the user's corrections file (`--overrides`); empty means
    `<base_dir>/overrides.csv` when that file exists (`core.decision.overrides`).
    """

    base_dir: str = DEFAULT_OUTPUT
    overrides: str = ""

    def layout(self) -> OutputLayout:
        return OutputLayout(Path(self.base_dir).expanduser().resolve())

    def overrides_file(self) -> Path | None:
        """The corrections file the run honours, or None."""
        return overrides_path(self.layout().root, self.overrides)

    def read_overrides(self, source_root: Path | None = None) -> Overrides | None:
        """The corrections, read, checked and given their classes by the output's catalog
        (OverridesError names the file and line of a problem); None without a file. With
        `source_root`, a path that leaves the source through a link is refused too: give it
        where the overrides are applied (`class_keep_lists`)."""
        return load_known_overrides(self.layout().root, source_root, self.overrides)

    def summary_inputs(
        self, current: CurrentInputs, thresholds: Sequence[str], ground_truth: Path | None
    ) -> dict:
        """What the summary, the evaluation and the review page are made from now
        (`core.quality.summary_inputs`), with the corrections file this output reads."""
        return summary_inputs(
            self.layout(), current, thresholds, ground_truth, self.overrides_file()
        )

    def current_inputs(
        self, settings: MethodSettings, overrides: Overrides | None = None
    ) -> CurrentInputs:
        """`CurrentInputs.of` the output with the digests of the overrides the run honours
        and their pairs of two classes marked not a duplicate: those given (already read),
        else read now."""
        if overrides is None:
            overrides = self.read_overrides()
        if overrides is None:
            return CurrentInputs.of(self.layout(), settings)
        return CurrentInputs.of(
            self.layout(), settings, overrides.digests(), overrides.cross_class_pairs()
        )
