"""The Dagster code location: assets, checks and resources of latent-dedup.

Resources take their defaults from the environment, so `dagster dev` and the `dedup`
command see the same data: DEDUP_SOURCE (an ImageFolder; unset = the built-in demo),
DEDUP_OUTPUT (default ./dedup_output), DEDUP_GROUND_TRUTH, DEDUP_DEVICE (auto),
DEDUP_PRECISION (auto), DEDUP_THRESHOLDS (0.93,0.95,0.97). Where the environment is
silent, `<output>/pipeline.json` (written by `dedup run`) supplies the values of the last
command-line run, so the UI opened on that folder continues the same pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.clean_dataset import clean_dataset
from dedup_assets.assets.evaluation import dedup_evaluation
from dedup_assets.assets.keep_lists import class_keep_list, keep_list
from dedup_assets.assets.latents import class_latents
from dedup_assets.assets.reports import dedup_summary, kurtosis_report
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.checks import keep_list_integrity, kurtosis_reduction, latents_valid
from resources import ComputeDevice, DedupSettings, DedupStorage, ImageSource

ASSETS = [
    image_catalog,
    autoencoder,
    class_latents,
    spline_fits,
    class_keep_list,
    keep_list,
    kurtosis_report,
    dedup_summary,
    clean_dataset,
    dedup_evaluation,
]
CHECKS = [latents_valid, keep_list_integrity, kurtosis_reduction]


def build_resources(
    source: str | None = None,
    output: str | None = None,
    ground_truth: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    settings: DedupSettings | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """The pipeline's resources; arguments left None fall back to the environment, then to
    the output folder's pipeline.json, then to the defaults."""
    out = Path(output or os.environ.get("DEDUP_OUTPUT") or "dedup_output")
    saved = read_pipeline_file(out)

    def pick(arg: str | None, env_name: str, key: str, default: str) -> str:
        if arg is not None:
            return arg
        return os.environ.get(env_name) or saved.get(key) or default

    return {
        "image_source": ImageSource(
            root=pick(source, "DEDUP_SOURCE", "source", ""),
            ground_truth=pick(ground_truth, "DEDUP_GROUND_TRUTH", "ground_truth", ""),
            demo_dir=str(out / "demo_dataset"),
        ),
        "storage": DedupStorage(base_dir=str(out)),
        "compute": ComputeDevice(
            device=pick(device, "DEDUP_DEVICE", "device", "auto"),
            precision=pick(precision, "DEDUP_PRECISION", "precision", "auto"),
        ),
        "settings": settings or DedupSettings(**saved.get("settings", {})),
    }


PIPELINE_FILE = "pipeline.json"


def read_pipeline_file(output: Path) -> dict:
    """The configuration `dedup run` saved in an output folder, or {}."""
    path = Path(output) / PIPELINE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, resources=build_resources())
