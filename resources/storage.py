"""Where the pipeline writes its artefacts."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dedup_assets.core.data.layout import DEFAULT_OUTPUT, OutputLayout


class DedupStorage(dg.ConfigurableResource):
    """The output folder; every asset's files live under it (see OutputLayout)."""

    base_dir: str = DEFAULT_OUTPUT

    def layout(self) -> OutputLayout:
        return OutputLayout(Path(self.base_dir).expanduser().resolve())
