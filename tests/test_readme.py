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


def test_readme_is_a_short_users_guide():
    """The README's first screen is what a user does; the detail lives in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_documents_resolve():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documents.append(ROOT / "benchmarks" / "README.md")
    broken = []
    for document in documents:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            if not linked.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _dedup_options(text: str, *, bare: bool) -> set[str]:
    """The `--options` of the `dedup` commands a document shows (and, with `bare`, of its
    inline code spans that are an option alone, such as `--retrain`)."""
    options: set[str] = set()
    command_lines: list[str] = []
    continued = False
    for line in text.splitlines():
        stripped = line.strip()
        if continued or re.match(r"(\.venv/bin/)?dedup (demo|run|plant|ui)\b", stripped):
            command_lines.append(stripped)
            continued = stripped.endswith("\\")
    spans = re.findall(r"`([^`]+)`", text)
    command_lines += [s for s in spans if re.match(r"(\.venv/bin/)?dedup (demo|run|plant|ui)\b", s)]
    if bare:
        command_lines += [s for s in spans if re.fullmatch(r"--[a-z][a-z-]*( \S+)?", s)]
    for line in command_lines:
        options.update(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    return options


def test_every_dedup_option_the_documents_show_exists():
    """A command in the README or docs/ that `dedup --help` does not know would fail a user."""
    import subprocess

    helps = ""
    for command in ("demo", "run", "watch", "plant", "ui"):
        helps += subprocess.run(
            [str(ROOT / ".venv" / "bin" / "dedup"), command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    known = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", helps))
    shown: dict[str, set[str]] = {}
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        bare = document.name in {"README.md", "GUIDE.md"}
        shown[document.name] = _dedup_options(document.read_text(), bare=bare)
    assert len(shown["README.md"]) >= 10
    unknown = {name: sorted(options - known) for name, options in shown.items() if options - known}
    assert not unknown, unknown
