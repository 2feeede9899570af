"""Loading a `dedup run` output folder for the analyses: each class's decision data and
its known pairs.

A class is loaded with `class_keep.load_class_data`, the reader the pipeline's keep lists
use, so an analysis embeds, orders and decides exactly what the pipeline would
(`class_decision`); only the ground truth is added here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup_assets.core.data.artifacts import (
    catalog_class_keys,
    catalog_images,
    class_names,
    read_catalog,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.class_decision import ClassData
from dedup_assets.core.decision.class_keep import load_class_data
from dedup_assets.core.density.class_density import fit_class_density
from dedup_assets.core.quality.evaluation import ground_truth_edges, positive_pairs
from dedup_assets.core.quality.planting import GroundTruthPair


@dataclass(frozen=True)
class ClassTruth:
    """One class: what deciding it needs (`data`) and its known positive pairs.

    positives: (p, 2) indices i < j into `data`'s images; in_ground_truth: (n,) bool, the
    image takes part in a known pair. Both empty/False without ground truth.
    """

    key: str
    name: str
    data: ClassData
    positives: np.ndarray
    in_ground_truth: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        return self.data.image_ids

    def __len__(self) -> int:
        return len(self.data.image_ids)

    def refit(self, n_components: int) -> ClassTruth:
        """The same class with its density model refitted to `n_components`."""
        model = fit_class_density(self.data.latents, n_components, self.data.model.bin_rule)
        return dataclasses.replace(self, data=dataclasses.replace(self.data, model=model))


def load_classes(
    output: Path,
    pairs: Sequence[GroundTruthPair] | None = None,
    *,
    with_pixels: bool = False,
) -> list[ClassTruth]:
    """Every class of an output folder (sorted by key), with known positives given pairs.

    with_pixels: load each class's pixels too (the `phash` vectoriser needs them).
    """
    layout = OutputLayout(Path(output))
    catalog = read_catalog(layout)
    names = class_names(layout)
    classes = []
    for key in catalog_class_keys(layout):
        _, data = load_class_data(layout, key, with_pixels=with_pixels, catalog=catalog)
        n = len(data.image_ids)
        classes.append(
            ClassTruth(key, names[key], data, np.zeros((0, 2), np.int64), np.zeros(n, bool))
        )
    return classes if pairs is None else with_ground_truth(output, classes, pairs)


def with_ground_truth(
    output: Path, classes: Sequence[ClassTruth], pairs: Sequence[GroundTruthPair]
) -> list[ClassTruth]:
    """The same classes with the known positives of `pairs` (e.g. a subset of them)."""
    layout = OutputLayout(Path(output))
    key_of = {name: key for key, name in class_names(layout).items()}
    edges = ground_truth_edges(catalog_images(read_catalog(layout)), pairs, key_of)[0]
    out = []
    for c in classes:
        index = {image_id: n for n, image_id in enumerate(c.ids.tolist())}
        positives, involved = positive_pairs(
            len(c),
            [(index[a], index[b]) for a, b in edges.get(c.key, []) if a in index and b in index],
        )
        out.append(dataclasses.replace(c, positives=positives, in_ground_truth=involved))
    return out
