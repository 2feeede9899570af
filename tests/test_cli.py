"""The `dedup` command: argument handling, thresholds and the planting tool."""

import csv

import pytest

from dedup_assets.cli import build_parser, main
from dedup_assets.core.demo_data import generate_demo_dataset
from dedup_assets.partitions import DEFAULT_THRESHOLDS, parse_thresholds


def test_thresholds_are_kept_as_written_and_validated():
    assert parse_thresholds(None) == DEFAULT_THRESHOLDS
    assert parse_thresholds("0.97, 0.9,0.950") == ("0.9", "0.950", "0.97")
    with pytest.raises(ValueError, match="not a number"):
        parse_thresholds("0.9,high")
    with pytest.raises(ValueError, match="between -1 and 1"):
        parse_thresholds("1.0")


def test_run_requires_a_source():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--output", "x"])
    args = build_parser().parse_args(
        ["run", "--source", "s", "--thresholds", "0.9", "--epochs", "3"]
    )
    assert (args.source, args.thresholds, args.epochs) == ("s", "0.9", 3)


def test_plant_command_writes_copies_and_ground_truth(tmp_path, capsys):
    source = tmp_path / "src"
    generate_demo_dataset(source, seed=1, per_class=10, duplicate_fraction=0.0)
    dest = tmp_path / "planted"
    assert (
        main(
            [
                "plant",
                "--source",
                str(source),
                "--dest",
                str(dest),
                "--fraction",
                "0.2",
                "--proportions",
                "jpeg=1,noise=1",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((dest / "ground_truth.csv").open()))
    assert len(rows) == 6 * 2  # 20% of 10 originals in each of 6 classes
    assert {r["copy"].rsplit("__dup_", 1)[1].split(".")[0] for r in rows} <= {"jpeg", "noise"}
    for r in rows:
        assert (dest / r["class"] / r["copy"]).is_file()
    assert "planted 12 near-duplicates" in capsys.readouterr().out
