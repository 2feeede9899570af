"""The README's two commands are the contract with a new user; CI runs the second one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    return re.findall(r"^    (python3\.11 -m venv .*)$", head, flags=re.M)


def test_readme_starts_with_setup_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    run, test = commands
    assert run.endswith("dedup demo")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def test_workspace_loads_the_definitions_module():
    workspace = (ROOT / "workspace.yaml").read_text()
    assert "module_name: dedup_assets.definitions" in workspace
