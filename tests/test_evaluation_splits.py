"""The evaluation on a split source (issue 25): ground-truth classes are class folders
relative to the source (`train/cats`), so a class name shared by splits (train/cats and
test/cats) no longer collides; the split demo writes the within-train planted pairs as its
ground_truth.csv, and every row names two images of one training class."""

import json

import polars as pl

from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.core.quality.evaluation import ground_truth_edges, score_keep_lists
from dedup_assets.core.quality.planting import GroundTruthPair, read_ground_truth


def test_shared_class_names_map_to_their_own_partition():
    catalog = pl.DataFrame(
        {
            "path": [
                "train/cats/a.png",
                "train/cats/a__dup_noise.png",
                "test/cats/a.png",
                "test/cats/b.png",
            ],
            "image_id": ["1", "2", "3", "4"],
            "class_key": ["train__cats", "train__cats", "test__cats", "test__cats"],
        }
    )
    pairs = [
        GroundTruthPair("train/cats", "a.png", "a__dup_noise.png"),
        GroundTruthPair("test/cats", "a.png", "b.png"),
        GroundTruthPair("cats", "a.png", "b.png"),  # no such folder: unmatched, not guessed
    ]
    names = {"train__cats": "cats", "test__cats": "cats"}  # the name collides
    edges, unmatched = ground_truth_edges(catalog, pairs, {v: k for k, v in names.items()})
    assert edges == {"train__cats": [("1", "2")], "test__cats": [("3", "4")]}
    assert unmatched == 1
    keep = pl.DataFrame({"path": catalog["path"], "kept": [True, False, True, True]})
    row = score_keep_lists({"0.95": keep}, pairs).row(0, named=True)
    assert (row["known_pairs"], row["recall"], row["ground_truth_rows_unmatched"]) == (2, 0.5, 1)


def test_the_split_demo_writes_its_within_train_ground_truth(tmp_path):
    root = tmp_path / "demo"
    summary = generate_demo_dataset(root, seed=3, per_class=10, splits=True)
    pairs = read_ground_truth(root / "ground_truth.csv")
    manifest = json.loads((root / ".demo_manifest.json").read_text())
    assert len(pairs) == len(manifest["train_pairs"]) > 0
    for pair in pairs:
        assert pair.class_name.startswith("train/")
        assert (root / pair.class_name / pair.original).is_file()
        assert (root / pair.class_name / pair.copy).is_file()
    assert summary.splits
