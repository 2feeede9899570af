"""The options of `dedup run` and `dedup demo` are generated from PipelineConfig's fields:
every field has its option (or is named as having none), every option given a value other
than its default reaches the configuration built from the arguments, no option of earlier
versions changed its name, and `--help` says what the command does, each option's choices
and default, and the exit statuses. A new field is covered here without a new line."""

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from dedup_assets.cli import (
    NOT_OPTIONS,
    RUN_ONLY,
    ConfigOption,
    build_parser,
    config_from_args,
    config_options,
    main,
)
from dedup_assets.config import PipelineConfig

OPTIONS = {option.name: option for option in config_options("run")}
# The options of `dedup run` before they were generated (README, users' scripts).
FORMER = (
    "--source", "--ground-truth", "--output", "--thresholds", "--epochs", "--training-images",
    "--training", "--batch-size", "--learning-rate", "--seed", "--device", "--precision",
    "--space", "--policy", "--budget-scaling", "--join", "--ann-min-class-size", "--components",
    "--kurtosis-tolerance", "--clean-copy-mode", "--max-file-bytes", "--include-hidden",
    "--retrain-new-share", "--retrain-error-factor", "--schedule", "--executor",
    "--dask-address", "--parallel", "--retrain", "--full", "--verify", "--verbose",
)  # fmt: skip
ADDED = (
    "--overrides",
    "--force",
    "--splits",
    "--leakage",
    "--leakage-budget",
    "--leakage-tolerance",
)  # options added since, beside the former ones
# A valid value other than the default, for the fields whose type cannot give one.
SAMPLES = {
    "source": "{tmp}/other_src",
    "output": "{tmp}/other_out",
    "ground_truth": "{tmp}/truth.csv",
    "thresholds": "0.5,2%",
    "device": "cpu",
    "schedule": "30 4 * * 1",
    "dask_address": "tcp://127.0.0.1:8786",
    "overrides": "{tmp}/overrides.csv",
    "splits": "train,test",
}
# The source's folders a value needs (PipelineConfig checks the layout): else one class.
FOLDERS = {"splits": ("train/cats", "test/cats")}
# Settings that are only valid together with another (PipelineConfig's cross-checks).
NEEDS = {
    "--parallel": {"executor": "processes"},
    "--dask-address": {"executor": "dask"},
    "--executor=dask": {"dask_address": "tcp://127.0.0.1:8786"},
}


def _other_values(option: ConfigOption) -> list[Any]:
    """Every value of `option` other than its default (one for numbers and strings)."""
    default = option.field.get_default(call_default_factory=True)
    kind = option.field.annotation
    if kind is bool:
        return [not default]
    if option.choices:
        return [c for c in option.choices if c != str(getattr(default, "value", default))]
    if kind is int:
        return [default + 1]
    if kind is float:
        return [default * 2 or 1.0]
    return [SAMPLES.get(option.name)]


def _argv(values: dict[str, Any]) -> list[str]:
    """The command-line arguments giving these field values."""
    argv: list[str] = []
    for name, value in values.items():
        option = OPTIONS[name]
        argv += [option.flag] if isinstance(value, bool) else [option.flag, str(value)]
    return argv


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """The same values as PipelineConfig takes them: method settings under `method`."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        group = OPTIONS[name].group
        (nested.setdefault(group, {}) if group else nested)[name] = value
    return nested


def _read(config: PipelineConfig, option: ConfigOption) -> Any:
    return getattr(getattr(config, option.group) if option.group else config, option.name)


CASES = [
    pytest.param(name, value, id=f"{option.flag}={value}")
    for name, option in OPTIONS.items()
    for value in _other_values(option)
]


@pytest.mark.parametrize(("name", "value"), CASES)
def test_every_option_given_another_value_reaches_the_config(tmp_path: Path, name, value):
    """A flag that parses but is ignored is the worst kind of bug: each option, given a value
    other than its default, changes the PipelineConfig `dedup run` builds, to what the same
    value given to PipelineConfig directly makes."""
    option = OPTIONS[name]
    assert value is not None, f"add a valid value of {option.flag} to SAMPLES"
    for folder in ("src", "other_src"):
        for sub in FOLDERS.get(name, ("cats",)):
            (tmp_path / folder / sub).mkdir(parents=True)
    (tmp_path / "truth.csv").write_text("class,original,copy\n")
    (tmp_path / "overrides.csv").write_text("path,decision,other\n")
    base = {"source": str(tmp_path / "src"), "output": str(tmp_path / "out")}
    given = {name: value.format(tmp=tmp_path) if isinstance(value, str) else value}
    given |= NEEDS.get(f"{option.flag}={value}", NEEDS.get(option.flag, {}))
    args = build_parser().parse_args(["run", *_argv(base), *_argv(given)])
    from_cli = config_from_args(args)
    assert _read(from_cli, option) == _read(PipelineConfig.build(**_nested(base | given)), option)
    assert _read(from_cli, option) != _read(PipelineConfig.build(**_nested(base)), option)


def test_every_field_has_an_option_or_is_named_as_having_none():
    fields = set(PipelineConfig.model_fields) - {"method"}
    fields |= set(PipelineConfig.model_fields["method"].annotation.model_fields)
    names = [option.name for option in config_options("run")]
    assert sorted(names) == sorted(fields - NOT_OPTIONS), "one option per field, none twice"
    assert not set(names) & {"command", "retrain", "full", "verbose"}, "the command's own"
    flags = [option.flag for option in config_options("run")]
    assert len(set(flags)) == len(flags)
    demo = {option.name for option in config_options("demo")}
    assert demo == set(names) - RUN_ONLY


def _subcommand(name: str) -> argparse.ArgumentParser:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def test_no_option_changed_its_name():
    flags = {f for a in _subcommand("run")._actions for f in a.option_strings}
    assert flags == {"-h", "--help", *FORMER, *ADDED}
    flags = {f for a in _subcommand("demo")._actions for f in a.option_strings}
    assert flags == {"-h", "--help", *FORMER, *ADDED} - {"--source", "--ground-truth"}
    flags = {f for a in _subcommand("watch")._actions for f in a.option_strings}
    assert flags == {"-h", "--help", *FORMER, *ADDED, "--interval", "--settle", "--updates"}


def test_demo_builds_the_demo_config(tmp_path: Path):
    args = build_parser().parse_args(["demo", "--output", str(tmp_path / "o"), "--space", "raw"])
    config = config_from_args(args)
    assert config.source == "" and config.demo_source == tmp_path / "o" / "demo_dataset"
    assert config.method.similarity_space == "raw" and config.method.keep_policy == "density"
    assert not config.demo_splits and config.resources()["image_source"].demo_splits is False


def test_demo_splits_is_a_flag_of_demo_and_run_splits_names_folders(tmp_path: Path):
    """`dedup demo --splits` takes no value and picks the demo's split variant; `dedup run
    --splits NAMES` keeps its value (the split folders)."""
    args = build_parser().parse_args(["demo", "--output", str(tmp_path / "o"), "--splits"])
    config = config_from_args(args)
    assert config.demo_splits and config.splits == "auto"
    assert config.demo_source == tmp_path / "o" / "demo_dataset_splits"
    source = config.resources()["image_source"]
    assert source.demo_splits and source.demo_dir == str(config.demo_source)
    (tmp_path / "src" / "train" / "cats").mkdir(parents=True)
    (tmp_path / "src" / "holdout" / "cats").mkdir(parents=True)
    run = ["run", "--source", str(tmp_path / "src"), "--output", str(tmp_path / "o2")]
    config = config_from_args(build_parser().parse_args([*run, "--splits", "train,holdout"]))
    assert config.splits == "train,holdout" and not config.demo_splits
    with pytest.raises(SystemExit):  # a value is required
        build_parser().parse_args([*run, "--splits"])


ABOUT = {"run": "Find and remove", "demo": "Run everything", "watch": "Keep an output up to date"}


@pytest.mark.parametrize("command", ["run", "demo", "watch"])
def test_help_says_what_the_command_does_each_default_and_the_exit_statuses(capsys, command):
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    about = text.split("\n\n")[1]
    assert about.startswith(ABOUT[command])
    solid = re.sub(r"\s+", "", text)  # argparse wraps lines at spaces and hyphens
    if command == "watch":
        for shown in ("(default:2)", "(default:1)", "(default:untilstopped)"):
            assert shown in solid
    for option in config_options("demo" if command == "demo" else "run"):
        assert re.sub(r"\s+", "", option.help(option.name == "source")).replace("%%", "%") in solid
    for shown in (
        "(raw|whitened|spline_copula|spline_copula_dct;defaultspline_copula_dct)",
        "(default0.93,0.95,0.97,1%)",
        "(default'02***')",
        "(default128)",
    ):
        assert shown in solid
    statuses = re.findall(r"^  (\d+) ", text.split("exit status:")[1], re.M)
    assert statuses == ["0", "1", "2", "3", "130", "143"]


def test_every_option_says_what_it_does():
    """Help is the field's description, written once beside its default in the model."""
    for option in config_options("run"):
        assert option.field.description, f"{option.flag}: give its field a description"
