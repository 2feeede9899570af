"""Reading and writing the pipeline's stored tables, in one place for every asset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from dedup_assets.core.atomic_io import write_parquet
from dedup_assets.core.layout import OutputLayout

KEEP_LIST_COLUMNS = ("image_id", "class", "path", "kept", "duplicate_of", "similarity")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: materialize it first")
    return path


def read_catalog(layout: OutputLayout) -> pl.DataFrame:
    """The image catalog: every scanned file, decoded or quarantined."""
    return pl.read_parquet(_require(layout.catalog, "image catalog"))


def catalog_images(catalog: pl.DataFrame, class_key: str | None = None) -> pl.DataFrame:
    """Decoded (status ok) images, optionally of one class, in pixel-store row order."""
    ok = catalog.filter(pl.col("status") == "ok")
    if class_key is not None:
        ok = ok.filter(pl.col("class_key") == class_key)
    return ok.sort("row")


def catalog_class_keys(layout: OutputLayout) -> list[str]:
    """Partition keys of the classes that have decoded images, sorted."""
    return sorted(catalog_images(read_catalog(layout))["class_key"].unique().to_list())


def open_pixels(layout: OutputLayout) -> np.ndarray:
    """The uint8 pixel store (N, 64, 64, 3), memory-mapped read-only."""
    return np.load(_require(layout.pixels, "pixel store"), mmap_mode="r")


def write_latents(path: Path, image_ids: list[str], paths: list[str], latents: np.ndarray) -> Path:
    df = pl.DataFrame(
        {
            "image_id": image_ids,
            "path": paths,
            "latent": pl.Series(
                "latent", latents.astype(np.float32), dtype=pl.Array(pl.Float32, latents.shape[1])
            ),
        }
    )
    return write_parquet(df, path)


def read_latents(path: Path) -> tuple[pl.DataFrame, np.ndarray]:
    """(image_id, path) table and the (n, 1024) float32 latent matrix of one class."""
    df = pl.read_parquet(_require(path, "class latents"))
    latents = df["latent"].to_numpy().astype(np.float32, copy=False).reshape(len(df), -1)
    return df.drop("latent"), latents


def read_keep_list(path: Path) -> pl.DataFrame:
    return pl.read_parquet(_require(path, "keep list"))


def read_scores(layout: OutputLayout, class_keys: list[str]) -> pl.DataFrame:
    """Per-image leading component scores and log-density of the given classes, with class."""
    from dedup_assets.core.image_folder import class_name_from_key

    frames = [
        pl.read_parquet(_require(layout.spline_scores(k), "spline fit scores")).with_columns(
            pl.lit(class_name_from_key(k)).alias("class")
        )
        for k in class_keys
    ]
    return pl.concat(frames) if frames else pl.DataFrame()


def read_class_keep_lists(
    layout: OutputLayout, threshold: str, class_keys: list[str]
) -> pl.DataFrame:
    """The per-class keep lists of one threshold, concatenated in class order."""
    return pl.concat([read_keep_list(layout.class_keep_list(threshold, k)) for k in class_keys])
