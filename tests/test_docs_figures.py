"""Every measured figure in README.md and docs/*.md is backed by a results file.

The convention (docs/BENCHMARKS.md states it for writers):

- A *figure* is a number in the prose or a table that has a decimal point (``0.967``), a
  percent sign (``0.89%``) or a unit of time, memory, rate or ratio after it (``65.6 s``,
  ``8 min 1 s``, ``3.5 GiB``, ``459 images/s``, ``1.86x``). A range (``0.78-1.22%``) is two
  figures. Integers without a unit (image, class and pair counts) are not figures.
- Code is not prose: fenced and indented code blocks and inline code spans are commands,
  option values and program output, so a value you type (a threshold ``0.95``, a budget
  ``1%``, a default ``0.1``) is written as code.
- A figure must appear in the results file its citation names: the first
  ``results/<name>.json`` after it in its *block* (the paragraph, list item or table it sits
  in: lines up to the next blank line), with the names listed right after that one
  (``results/a.json``, ``results/b.json``); a figure with no citation after it in its block
  (a table whose header cites its files) may come from any file its block names. A link to
  ``benchmarks/results/<name>.json`` cites it by its text. A figure appears in a file when
  some number of the file, as a fraction or a percentage and, for minutes, GiB and
  milliseconds, converted from the seconds, MiB or seconds stored, rounds to it at the
  figure's own number of decimals. Signs are ignored (``+0.33`` above a median is stored as
  0.33 or -0.33 depending on the side). A file's numbers are matched as a whole, so a figure
  that happens to equal another number of its file passes: cite the narrowest file.
- ``ALLOWED`` lists the few numbers in prose that are not measurements (versions), each
  with its reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Numbers in prose that are not measurements, as regexes of the phrase, with the reason.
ALLOWED: dict[str, str] = {
    r"Dagster \(?1\.13\b": "the Dagster version the project targets",
}

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# a word unit may follow a space ("65.6 s"); "x" and "%" follow the number ("1.86x")
_UNIT = r" ?(?:images/s|img/s|GFLOP/s|MFLOP|GB/s|GiB|MiB|ms|min|s)|x|%"
# "8 min 1 s": one figure of 481 seconds.
_MIN_SEC = re.compile(r"(?<![\w.])(\d+) min (\d+) s\b")
_RANGE = re.compile(rf"(?<![\w.\-/])({_NUMBER})(?:-| to )({_NUMBER})({_UNIT})?(?![\w.])")
_SINGLE = re.compile(rf"(?<![\w./\-])[+\-]?({_NUMBER})({_UNIT})?(?![\w])")
# dates (2026-12-01) and versions (2.13.0) are not figures
_NOT_FIGURES = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d+(?:\.\d+){2,}\b")
_REF = re.compile(r"results/([\w.\-%]+\.json)")


@dataclass(frozen=True)
class Figure:
    """One figure as written: its text, value, decimals and unit, and where it is."""

    text: str
    value: float
    decimals: int
    unit: str
    line: int


def _mask(text: str, pattern: str, flags: int = 0) -> str:
    """`text` with each match of `pattern` blanked out, newlines kept: offsets stay valid."""
    return re.sub(pattern, lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=flags)


@dataclass(frozen=True)
class Block:
    """A block of prose: its first line, its text with code blanked out, its citations."""

    start: int
    prose: str
    citations: list[tuple[int, int, str]]  # (start, end, file name) in `prose`


def _prose_blocks(markdown: str) -> list[Block]:
    """The blocks of prose of a markdown text (code blocks and inline code left out)."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    in_fence = False
    previous_blank = True
    previous_code = False
    current: list[str] = []
    start = 0

    def close() -> None:
        if current:
            raw = _mask("\n".join(current), r"(?<=\])\([^)]*\)")  # link targets
            raw = _mask(raw, r"<!--.*?-->", re.S)
            citations = [(m.start(), m.end(), m.group(1)) for m in _REF.finditer(raw)]
            blocks.append(Block(start, _mask(raw, r"`[^`]*`"), citations))
            current.clear()

    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            close()
            in_fence = not in_fence
            previous_blank = False
            continue
        if in_fence:
            continue
        indented = line.startswith("    ") or line.startswith("\t")
        if indented and (previous_blank or previous_code):
            close()
            previous_code = True
            previous_blank = False
            continue
        previous_code = False
        if not line.strip():
            close()
            previous_blank = True
            continue
        previous_blank = False
        if not current:
            start = number
        current.append(line)
    close()
    return blocks


def _cited(block: Block, offset: int) -> list[str]:
    """The files cited for a figure at `offset`: the citation after it, else the block's."""
    after = [c for c in block.citations if c[0] >= offset]
    if not after:
        return [name for _, _, name in block.citations]
    names = [after[0][2]]
    for previous, following in zip(after, after[1:], strict=False):
        gap = block.prose[previous[1] : following[0]]
        if not re.fullmatch(r"[\s`,;()\[\]]*(?:and)?[\s`,;()\[\]]*", gap):
            break
        names.append(following[2])
    return names


def _decimals(number: str) -> int:
    return len(number.split(".", 1)[1]) if "." in number else 0


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def figures(markdown: str) -> list[tuple[Figure, list[str]]]:
    """Every figure of a markdown text, each with the results files cited for it."""
    found: list[tuple[Figure, list[str]]] = []
    for block in _prose_blocks(markdown):
        prose = block.prose
        for pattern in ALLOWED:
            prose = _mask(prose, pattern)
        prose = _mask(prose, _NOT_FIGURES.pattern)
        written: list[tuple[int, str, str, str]] = []  # (offset, number, unit, as written)
        for match in _MIN_SEC.finditer(prose):
            seconds = int(match.group(1)) * 60 + int(match.group(2))
            written.append((match.start(), str(seconds), "s", match.group(0)))
        prose = _mask(prose, _MIN_SEC.pattern)
        for match in _RANGE.finditer(prose):
            unit = match.group(3) or ""
            written.append((match.start(), match.group(1), unit, match.group(0)))
            written.append((match.start(), match.group(2), unit, match.group(0)))
        prose = _mask(prose, _RANGE.pattern)
        for match in _SINGLE.finditer(prose):
            written.append((match.start(), match.group(1), match.group(2) or "", match.group(0)))
        for offset, number, unit, whole in sorted(written, key=lambda w: w[0]):
            unit = unit.strip()
            if "." in number or unit:
                line = block.start + prose.count("\n", 0, offset)
                figure = Figure(whole.strip(), _value(number), _decimals(number), unit, line)
                found.append((figure, _cited(block, offset)))
    return found


def _numbers(node: object) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, (int, float)):
        return [float(node)] if math.isfinite(node) else []
    if isinstance(node, dict):
        return [n for value in node.values() for n in _numbers(value)]
    if isinstance(node, list):
        return [n for value in node for n in _numbers(value)]
    return []


def _scales(unit: str) -> tuple[float, ...]:
    """What a stored number is multiplied by to read in the figure's unit."""
    return {
        "%": (100.0, 1.0),  # a fraction, or a percentage stored as such
        "min": (1 / 60,),  # seconds
        "GiB": (1 / 1024, 1 / 2**30, 1.0),  # MiB, bytes, GiB
        "MiB": (1.0, 1 / 2**20),
        "ms": (1000.0, 1.0),  # seconds (per image), or milliseconds
    }.get(unit, (1.0,))


def backed(figure: Figure, numbers: list[float]) -> bool:
    """Whether some stored number rounds to the figure at its own decimals."""
    half = 0.5 * 10 ** (-figure.decimals) + 1e-9
    target = abs(figure.value)
    return any(
        abs(abs(number) * scale - target) <= half
        for number in numbers
        for scale in _scales(figure.unit)
    )


def unbacked_figures(markdown: str, results: Path) -> list[str]:
    """The figures of `markdown` no results file of their block backs, as readable lines."""
    cache: dict[str, list[float] | None] = {}
    problems: list[str] = []
    for figure, refs in figures(markdown):
        if not refs:
            problems.append(f"line {figure.line}: {figure.text!r} cites no results/<name>.json")
            continue
        numbers: list[float] = []
        for ref in refs:
            if ref not in cache:
                path = results / ref
                cache[ref] = _numbers(json.loads(path.read_text())) if path.is_file() else None
            if cache[ref] is None:
                problems.append(f"line {figure.line}: results/{ref} does not exist")
            else:
                numbers.extend(cache[ref] or [])
        if numbers and not backed(figure, numbers):
            problems.append(
                f"line {figure.line}: {figure.text!r} is in none of {', '.join(sorted(set(refs)))}"
            )
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_is_backed_by_a_results_file(document: Path) -> None:
    problems = unbacked_figures(document.read_text(), RESULTS)
    assert not problems, f"{document.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_documents_quote_figures_at_all() -> None:
    """The check above is not vacuous: the docs do quote figures, and the parser sees them."""
    quoted = sum(len(figures(document.read_text())) for document in DOCUMENTS)
    assert quoted >= 50


def test_an_unbacked_figure_fails(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(json.dumps({"wall_seconds": 65.62, "recall": 0.9604}))
    backed_text = "A run took 65.6 s and found 0.960 of the pairs, 96.0% (`results/run.json`).\n"
    assert unbacked_figures(backed_text, results) == []
    # a figure off by one in its last digit, one without a citation, a missing file
    wrong = "A run took 65.7 s (results/run.json).\n\nRecall 0.960 here.\n"
    missing = "It took 65.6 s ([results/gone.json](../benchmarks/results/gone.json)).\n"
    assert unbacked_figures(wrong, results) == [
        "line 1: '65.7 s' is in none of run.json",
        "line 3: '0.960' cites no results/<name>.json",
    ]
    assert unbacked_figures(missing, results) == ["line 1: results/gone.json does not exist"]
    # each figure is read against the citation after it, not any file of its paragraph
    (results / "a.json").write_text(json.dumps({"seconds": 2.5}))
    (results / "b.json").write_text(json.dumps({"seconds": 1.5}))
    swapped = "A took 1.5 s (`results/a.json`) and B 2.5 s (`results/b.json`).\n"
    assert unbacked_figures(swapped, results) == [
        "line 1: '1.5 s' is in none of a.json",
        "line 1: '2.5 s' is in none of b.json",
    ]
    both = "A took 1.5 s and B 2.5 s (`results/a.json`, `results/b.json`).\n"
    assert unbacked_figures(both, results) == []


def test_what_counts_as_a_figure() -> None:
    text = (
        "Run `dedup run --thresholds 0.95,1%` on 27,000 images in 8 min 1 s, 2026-12-03, "
        "torch 2.13.0, 0.78-1.22% false removals, 1.86x, 3.5 GiB, Dagster 1.13.\n"
        "\n"
        "    dedup run --source S --fraction 0.05\n"
    )
    found = [(f.text, f.value, f.unit) for f, _ in figures(text)]
    assert found == [
        ("8 min 1 s", 481.0, "s"),
        ("0.78-1.22%", 0.78, "%"),
        ("0.78-1.22%", 1.22, "%"),
        ("1.86x", 1.86, "x"),
        ("3.5 GiB", 3.5, "GiB"),
    ]
