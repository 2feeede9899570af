"""The configuration object: validated once, built from the CLI, the environment or the
saved file, and the only way settings reach the Definitions."""

import json
import subprocess
import sys

import dagster as dg
import pytest

from dedup_assets.config import (
    DEFAULT_THRESHOLDS,
    ConfigError,
    PipelineConfig,
    current_inputs,
    known_overrides,
    load_overrides,
    parse_thresholds,
    read_saved,
)
from dedup_assets.core.data.layout import OutputInUse, OutputLayout
from dedup_assets.core.decision.overrides import OverridesError
from dedup_assets.definitions import build_definitions


def test_thresholds_are_spelled_one_way_sorted_and_validated():
    assert parse_thresholds(None) == DEFAULT_THRESHOLDS
    # One spelling per value: `--thresholds 0.950,1.0%` after `0.95,1%` made new keep lists
    # and clean copies decided from scratch, and marked the earlier ones not updated.
    assert parse_thresholds("0.97, 0.9,0.950") == ("0.9", "0.95", "0.97")
    assert parse_thresholds(".95,1.0%,0.50%") == ("0.95", "0.5%", "1%")
    assert parse_thresholds("0.9500001,0.07%") == ("0.9500001", "0.07%")
    assert parse_thresholds(["0.5", 0.25]) == ("0.25", "0.5")
    # False-removal budgets come after the cosines, smallest first.
    assert parse_thresholds("2%,0.95,0.5%") == ("0.95", "0.5%", "2%")
    for bad, message in [
        ("0%", "between 0% and 100%"),
        ("100%", "between 0% and 100%"),
        ("x%", "not a number or a percentage"),
        ("1%,1.0%", "same value"),
        ("0.9,high", "not a number"),
        ("1.0", "strictly between 0 and 1"),
        ("0", "strictly between 0 and 1"),
        ("-0.5", "strictly between 0 and 1"),
        ("0.95,0.950", "same value"),
        (" , ", "at least one threshold"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_thresholds(bad)


def test_every_setting_is_checked_when_the_config_is_built(tmp_path):
    out = str(tmp_path / "out")
    for values, where in [
        ({"thresholds": "1.5"}, "thresholds"),
        ({"device": "gpu0"}, "device"),
        ({"precision": "fp8"}, "precision"),
        ({"method": {"epochs": -1}}, "method.epochs"),
        ({"method": {"similarity_space": "l2"}}, "method.similarity_space"),
        ({"method": {"keep_policy": "random"}}, "method.keep_policy"),
        ({"max_file_bytes": 0}, "max_file_bytes"),
        ({"colour": "red"}, "colour"),
    ]:
        with pytest.raises(ConfigError, match=where):
            PipelineConfig.build(output=out, **values)


def test_source_and_output_never_overlap(tmp_path):
    src = tmp_path / "images"
    (src / "cats").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is the source folder"):
        PipelineConfig.build(source=str(src), output=str(src))
    with pytest.raises(ConfigError, match="inside the source"):
        PipelineConfig.build(source=str(src), output=str(src / "out"))
    with pytest.raises(ConfigError, match="source .* is inside the output"):
        PipelineConfig.build(source=str(src), output=str(tmp_path))
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ConfigError, match="is the source folder"):
        PipelineConfig.build(source=str(src), output=str(tmp_path / "link"))
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineConfig.build(source=str(tmp_path / "missing"), output=str(tmp_path / "o"))
    ok = PipelineConfig.build(source=str(src), output=str(tmp_path / "elsewhere"))
    assert ok.source == str(src.resolve())


def test_output_holding_foreign_files_is_refused(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "evaluation").mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputInUse, match="not made by latent-dedup"):
        OutputLayout(foreign).claim()
    fresh = OutputLayout(tmp_path / "new")
    fresh.claim()
    assert fresh.marker.is_file()
    (fresh.root / "keep_lists").mkdir()
    fresh.claim()  # ours: accepted again


def test_saved_file_holds_only_data_settings(tmp_path):
    config = PipelineConfig.build(
        output=str(tmp_path / "o"), thresholds="0.9,0.99", device="cuda", precision="bf16"
    )
    saved = config.saved()
    assert saved["thresholds"] == ["0.9", "0.99"]
    assert "device" not in saved and "precision" not in saved and "output" not in saved


def test_environment_config_reads_the_saved_file_then_variables(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (out / "pipeline.json").write_text(
        json.dumps(
            {
                "source": str(src),
                "thresholds": ["0.9", "0.99"],
                "device": "cuda",  # an old file: the machine's settings are not inherited
                "settings": {"epochs": 7},
            }
        )
    )
    env = {"DEDUP_OUTPUT": str(out)}
    config = PipelineConfig.from_environment(env)
    assert config.thresholds == ("0.9", "0.99")
    assert config.source == str(src)
    assert config.method.epochs == 7
    assert config.device == "auto"
    config = PipelineConfig.from_environment(
        env | {"DEDUP_THRESHOLDS": "0.5", "DEDUP_DEVICE": "cpu"}
    )
    assert config.thresholds == ("0.5",) and config.device == "cpu"


def test_corrupt_saved_file_names_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"pipeline\.json is not valid JSON"):
        read_saved(out)
    (out / "pipeline.json").write_text('["a list"]')
    with pytest.raises(ConfigError, match="does not hold a settings object"):
        PipelineConfig.from_environment({"DEDUP_OUTPUT": str(out)})
    (out / "pipeline.json").write_text('{"thresholds": ["2"]}')
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        PipelineConfig.from_environment({"DEDUP_OUTPUT": str(out)})


def test_definitions_take_their_thresholds_from_the_config_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DEDUP_THRESHOLDS", "0.5,0.6")  # must not leak into an explicit config
    config = PipelineConfig.build(output=str(tmp_path / "o"), thresholds="0.9,0.99")
    defs = build_definitions(config)
    graph = defs.resolve_asset_graph()
    for name in ("keep_list", "kurtosis_report", "clean_dataset"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert partitions.get_partition_keys() == ["0.9", "0.99"]
    job = defs.resolve_job_def("threshold_job")
    assert job.partitions_def.get_partition_keys() == ["0.9", "0.99"]


def test_no_module_reads_configuration_at_import(tmp_path):
    """Importing the code location with a broken environment must not fail: settings are
    read when Dagster loads the location, not when Python imports the module."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text("{broken")
    code = (
        "import dedup_assets.definitions, dedup_assets.partitions, dedup_assets.runner\n"
        "assert not hasattr(dedup_assets.partitions, 'THRESHOLDS')\n"
        "print('imported')\n"
    )
    env = {"DEDUP_OUTPUT": str(out), "DEDUP_THRESHOLDS": "7", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout


def test_overrides_given_must_exist_resolve_from_here_and_are_saved(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "cats").mkdir(parents=True)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="overrides file .*fixes.csv does not exist"):
        PipelineConfig.build(source=str(src), output=str(out), overrides="fixes.csv")
    (tmp_path / "fixes.csv").write_text("path,decision,other\n")
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig.build(source=str(src), output=str(out), overrides="fixes.csv")
    assert config.overrides == str(tmp_path / "fixes.csv")
    assert config.resources()["storage"].overrides_file() == tmp_path / "fixes.csv"
    assert config.saved()["overrides"] == str(tmp_path / "fixes.csv")
    env = {"DEDUP_OUTPUT": str(out), "DEDUP_SOURCE": str(src), "DEDUP_OVERRIDES": "fixes.csv"}
    assert PipelineConfig.from_environment(env).overrides == config.overrides
    plain = PipelineConfig.build(source=str(src), output=str(out))
    assert plain.resources()["storage"].overrides_file() is None
    out.mkdir()
    (out / "overrides.csv").write_text("path,decision,other\n")
    assert plain.resources()["storage"].overrides_file() == out / "overrides.csv"


def test_load_overrides_checks_the_file_before_any_work(tmp_path):
    src = tmp_path / "src"
    (src / "cats").mkdir(parents=True)
    out = tmp_path / "out"
    config = PipelineConfig.build(source=str(src), output=str(out))
    assert load_overrides(config) is None
    out.mkdir()
    (out / "overrides.csv").write_text("path,decision,other\ncats/a.png,keep,\n")
    assert [r.path for r in load_overrides(config).rows] == ["cats/a.png"]
    (out / "overrides.csv").write_text("path,decision,other\ncats/a.png,keep,\n../b.png,remove,\n")
    with pytest.raises(ConfigError) as caught:
        load_overrides(config)
    assert str(caught.value).startswith(f"{out / 'overrides.csv'}, line 3: ")
    assert "\n" not in str(caught.value)
    given = tmp_path / "mine.csv"
    given.write_text("path,decision\n")
    with pytest.raises(ConfigError, match=r"mine\.csv, line 1: .*path,decision,other"):
        load_overrides(config.model_copy(update={"overrides": str(given)}))


def test_current_inputs_carry_the_digests_of_the_overrides_known_to_the_catalog(tmp_path):
    import polars as pl

    from dedup_assets.core.data.artifacts import CLASS_SUMMARY_KEY

    src = tmp_path / "src"
    (src / "cats").mkdir(parents=True)
    out = tmp_path / "out"
    layout = OutputLayout(out)
    for key, paths in {"cats": ["cats/a.png", "cats/b.png"], "dogs": ["dogs/d.png"]}.items():
        table = pl.DataFrame(
            {"path": paths, "class_key": key, "status": "ok", "reason": None},
            schema_overrides={"reason": pl.String},
        )
        summary = json.dumps({"class": key, "images": len(paths), "digest": f"d-{key}"})
        layout.class_images(key).parent.mkdir(parents=True)
        table.write_parquet(layout.class_images(key), metadata={CLASS_SUMMARY_KEY: summary})
    layout.model.parent.mkdir(parents=True)
    layout.model.write_bytes(b"model")
    config = PipelineConfig.build(source=str(src), output=str(out))
    assert known_overrides(config) is None and current_inputs(config).override_digests == {}
    (out / "overrides.csv").write_text("path,decision,other\ncats/a.png,remove,\n")
    digests = current_inputs(config).override_digests
    assert list(digests) == ["cats"]
    storage = config.resources()["storage"]
    overrides = storage.read_overrides(src)
    assert storage.current_inputs(config.method, overrides).override_digests == digests
    assert storage.current_inputs(config.method).override_digests == digests  # read now
    (src / "cats" / "out.png").symlink_to(tmp_path / "elsewhere.png")
    (out / "overrides.csv").write_text("path,decision,other\ncats/out.png,remove,\n")
    with pytest.raises(OverridesError, match="line 2: 'cats/out.png' resolves outside"):
        storage.read_overrides(src)
    (out / "overrides.csv").write_text(
        "path,decision,other\ncats/a.png,remove,\ncats/z.png,keep,\n"
    )
    with pytest.raises(ConfigError, match=r"line 3: 'cats/z.png' is no image"):
        current_inputs(config)
