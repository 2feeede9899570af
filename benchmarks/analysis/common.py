"""Loading a `dedup run` output folder for the analyses: latents, ids and known pairs per class."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup_assets.core.artifacts import catalog_images, read_catalog, read_latents
from dedup_assets.core.evaluation import ground_truth_edges, positive_pairs
from dedup_assets.core.layout import OutputLayout
from dedup_assets.core.planting import GroundTruthPair


@dataclass
class ClassData:
    key: str
    ids: list[str]
    latents: np.ndarray
    positives: np.ndarray
    in_ground_truth: np.ndarray


def load_classes(output: Path, pairs: list[GroundTruthPair] | None = None) -> list[ClassData]:
    """Every class of an output folder with its latents and (given pairs) known positives."""
    layout = OutputLayout(Path(output))
    catalog = catalog_images(read_catalog(layout))
    key_of = dict(zip(catalog["class"].to_list(), catalog["class_key"].to_list(), strict=True))
    edges = ground_truth_edges(catalog, pairs, key_of)[0] if pairs is not None else {}
    out = []
    for key in sorted(set(key_of.values())):
        table, latents = read_latents(layout.latents(key))
        ids = table["image_id"].to_list()
        index = {i: n for n, i in enumerate(ids)}
        pos, involved = positive_pairs(
            len(ids), [(index[a], index[b]) for a, b in edges.get(key, [])]
        )
        out.append(ClassData(key, ids, latents, pos, involved))
    return out
