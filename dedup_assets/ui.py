"""Small helpers that turn figures and tables into Dagster UI metadata."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import dagster as dg


def md_image(figure: bytes, alt: str = "figure") -> str:
    """Markdown embedding a PNG or SVG figure inline, which the Dagster UI renders (its
    Markdown allows `data:` image sources)."""
    kind = "svg+xml" if figure.lstrip()[:4] == b"<svg" else "png"
    return f"![{alt}](data:image/{kind};base64,{base64.b64encode(figure).decode('ascii')})"


def image_metadata(figure: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(md_image(figure, alt))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
