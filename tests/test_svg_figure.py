"""The SVG figures (`core.quality.svg_figure`, and the density and kurtosis figures of
`core.quality.plots` drawn with it): valid documents whatever the names, round ticks inside
the range, and marks where the data puts them (a histogram's area is its mass, a curve's
peak is the density's, every finite point drawn once)."""

import base64
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import run_python

from dedup_assets.core.density.spline import SplineDensity1D
from dedup_assets.core.quality import plots
from dedup_assets.core.quality.statistics import theil_sen
from dedup_assets.core.quality.svg_figure import SvgFigure, nice_ticks, tick_label
from dedup_assets.ui import md_image

NS = {"s": "http://www.w3.org/2000/svg"}
ODD = 'Forêt <&> "quoted" \u6728 [x]'


def _parse(svg: bytes) -> ET.Element:
    assert svg.startswith(b"<svg")
    return ET.fromstring(svg)


def _points(element: ET.Element) -> np.ndarray:
    return np.array([[float(v) for v in p.split(",")] for p in element.get("points").split()])


def _texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("seed", range(40))
def test_ticks_are_round_inside_the_range_and_at_most_as_many_as_asked(seed):
    rng = np.random.default_rng(seed)
    lo = float(rng.normal() * 10.0 ** rng.integers(-4, 5))
    hi = lo + float(rng.random() * 10.0 ** rng.integers(-4, 5)) + 1e-6
    most = int(rng.integers(2, 8))
    ticks = nice_ticks(lo, hi, most)
    assert 2 <= len(ticks) <= most or (len(ticks) == 1 and most == 2)
    span = hi - lo
    assert ticks.min() >= lo - 1e-9 * span and ticks.max() <= hi + 1e-9 * span
    if len(ticks) > 1:
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-9)
        assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5))


def test_ticks_of_a_point_of_nothing_and_labels():
    assert nice_ticks(3.0, 3.0).tolist() == [3.0]
    assert len(nice_ticks(float("nan"), 1.0)) == 0 and len(nice_ticks(2.0, 1.0)) == 0
    assert nice_ticks(-4, 4, 5).tolist() == [-4, -2, 0, 2, 4]
    assert [tick_label(v, 0.1) for v in (0.1, 0.2, -0.0)] == ["0.1", "0.2", "0"]
    assert tick_label(7.5, 2.5) == "7.5" and tick_label(-1e-17, 0.5) == "0"
    assert tick_label(20.0, 10.0) == "20"


def test_text_is_escaped_and_multiline_text_keeps_its_lines():
    fig = SvgFigure(100, 50)
    fig.text(5, 10, ODD)
    fig.text(5, 20, f"one\n{ODD}")
    root = _parse(fig.to_bytes())
    assert _texts(root) == [ODD, f"one{ODD}"]
    second = root.findall("s:text", NS)[1]
    assert ["".join(t.itertext()) for t in second.findall("s:tspan", NS)] == ["one", ODD]


def test_a_line_breaks_at_values_that_are_not_finite():
    fig = SvgFigure(100, 100)
    panel = fig.panel(0, 0, 100, 100, (0, 10), (0, 10))
    panel.line([0, 1, 2, np.nan, 4, 5, np.inf, 7], [0, 1, 2, 3, 4, 5, 6, 7], "red")
    root = _parse(fig.to_bytes())
    lines = root.findall(".//s:polyline", NS)
    # runs of 3, 2 and 1 finite points: a run of one point draws nothing
    assert [len(_points(p)) for p in lines] == [3, 2]
    assert np.allclose(_points(lines[0])[:, 0], [0, 10, 20]) and np.allclose(
        _points(lines[0])[:, 1], [100, 90, 80]
    )


def _marginals(seed: int = 0, n: int = 2_700):
    rng = np.random.default_rng(seed)
    samples = [rng.standard_normal(n) * s + m for s, m in ((3, 1), (2, -5), (0.01, 100))]
    return [SplineDensity1D.fit(x) for x in samples], samples


def _panel_scale(root: ET.Element, k: int):
    """Pixels per data unit of panel k from its clip box and the data it was drawn for."""
    rect = root.findall("s:defs/s:clipPath", NS)[k].find("s:rect", NS)
    return (float(rect.get(a)) for a in ("x", "y", "width", "height"))


def test_marginal_densities_histogram_area_is_its_mass_and_the_curve_peaks_with_the_density():
    fits, samples = _marginals()
    root = _parse(plots.marginal_densities(fits, samples, ODD))
    assert ODD in _texts(root) and {"PC1", "PC2", "PC3"} <= set(_texts(root))
    areas = root.findall(".//s:polygon", NS)
    curves = root.findall(".//s:polyline", NS)
    assert len(areas) == 3 and len(curves) == 3
    for k, (fit, x) in enumerate(zip(fits, samples, strict=True)):
        left, top, width, height = _panel_scale(root, k)
        lo, hi = fit.support
        edges_lo = fit.nodes[0] - fit.step / 2
        edges_hi = fit.nodes[-1] + fit.step / 2
        x0, x1 = min(lo, edges_lo), max(hi, edges_hi)
        t = np.linspace(lo, hi, 400)
        counts, _ = np.histogram(
            x,
            bins=min(fit.nodes.size, plots.MAX_HISTOGRAM_BINS),
            range=(edges_lo, edges_hi),
            density=True,
        )
        y1 = 1.05 * max(fit.pdf(t).max(), counts.max())
        # the histogram's area in data units: the share of the samples it covers (all)
        p = _points(areas[k])
        shoelace = 0.5 * abs(
            np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1))
        )
        assert shoelace / (width / (x1 - x0)) / (height / y1) == pytest.approx(1.0, abs=0.01)
        # the curve's highest pixel sits over the density's argmax
        c = _points(curves[k])
        peak_x = x0 + (c[np.argmin(c[:, 1]), 0] - left) / width * (x1 - x0)
        assert abs(peak_x - t[np.argmax(fit.pdf(t))]) <= (x1 - x0) / width * 0.6


def test_marginal_densities_of_no_component_is_a_figure_with_its_title():
    root = _parse(plots.marginal_densities([], [], "empty"))
    assert _texts(root) == ["empty"] and not root.findall(".//s:polyline", NS)


@pytest.mark.parametrize("n", [0, 1, 2, 40, 5_000])
def test_kurtosis_scatter_draws_every_finite_point_once_and_numbers_the_first_thirty(n):
    rng = np.random.default_rng(n)
    before = rng.standard_normal(n)
    after = 0.8 * before + 0.1 * rng.standard_normal(n)
    if n >= 2:
        before[1] = np.nan  # a class without a kurtosis: not drawn, not numbered
    labels = [f"{ODD} {i}" for i in range(n)]
    reg = theil_sen(before, after, 2)
    root = _parse(plots.kurtosis_scatter(before, after, labels, reg, "0.95"))
    finite = int((np.isfinite(before) & np.isfinite(after)).sum())
    paths = root.findall(".//s:path", NS)
    drawn = sum(len(re.findall(r"M", p.get("d"))) for p in paths)
    assert drawn == finite
    numbers = [  # the points' numbers (size 6; the ticks' labels are size 7)
        t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("font-size") == "6"
    ]
    assert numbers == [str(i) for i in range(1, min(finite, plots.KEYED) + 1)]
    texts = "\n".join(_texts(root))
    assert ("more" in texts) == (finite > plots.KEYED)
    if finite > plots.KEYED:
        assert f"... and {finite - plots.KEYED} more" in texts
    assert ("Theil-Sen" in texts) == (finite >= 2)  # a legend only for lines drawn
    assert "PC2, T = 0.95" in texts


@pytest.mark.parametrize("n", [0, 1, 3])
def test_density_panels_draw_two_ridges_a_class_with_its_name(n):
    rng = np.random.default_rng(n)
    panels = [
        (
            f"{ODD} {i}",
            SplineDensity1D.fit(rng.standard_normal(300)),
            SplineDensity1D.fit(rng.standard_normal(200)),
        )
        for i in range(n)
    ]
    root = _parse(plots.density_panels(panels, 3, "2%", "3 of 9 classes"))
    assert len(root.findall(".//s:polyline", NS)) == 2 * n
    texts = _texts(root)
    for name, before, after in panels:
        assert f"{name}  H {before.entropy():.2f} -> {after.entropy():.2f}" in texts
    assert any("3 of 9 classes" in t for t in texts) and any("T = 2%" in t for t in texts)


def test_markdown_image_names_the_figure_kind():
    svg = plots.marginal_densities(*_marginals(1, 50), "t")
    md = md_image(svg, "alt")
    assert md.startswith("![alt](data:image/svg+xml;base64,")
    assert base64.b64decode(md.split(",", 1)[1][:-1]) == svg
    png = plots.image_rows([np.zeros((2, 8, 8, 3), np.uint8)], ["row"])
    assert md_image(png).startswith("![figure](data:image/png;base64,")


def _curve_points(root: ET.Element) -> list[np.ndarray]:
    return [_points(p) for p in root.findall(".//s:polyline", NS)]


@pytest.mark.parametrize(
    "losses", [[0.5], [0.2, 0.1], [1.0, 0.3, 0.05, 0.004, 0.0039], [0.1, math.nan, 0.05]]
)
def test_the_loss_curve_draws_each_epoch_once_lower_losses_lower(losses):
    root = _parse(plots.loss_curve(losses))
    finite = [v for v in losses if math.isfinite(v)]
    path = root.find(".//s:path", NS).get("d")  # the markers: one per finite epoch
    marks = np.array([[float(v) for v in m.split()] for m in re.findall(r"M([^h]+)h0", path)])
    assert len(marks) == len(finite)
    # x increases with the epoch; a lower loss is drawn lower (pixels count downwards).
    assert np.all(np.diff(marks[:, 0]) > 0)
    order = np.argsort(finite)
    assert np.all(np.diff(marks[order, 1]) <= 0)
    # One line through consecutive finite epochs (none across the gap of a NaN).
    lines = _curve_points(root)
    if all(math.isfinite(v) for v in losses) and len(losses) > 1:
        assert len(lines) == 1 and np.allclose(lines[0], marks, atol=0.11)
    else:
        assert lines == []
    texts = _texts(root)
    assert "epoch" in texts and "autoencoder training loss" in texts
    if max(finite) / min(finite) > 10:  # more than a decade: powers of ten
        assert any(t.startswith("1e") for t in texts)


def test_the_loss_curve_of_no_epoch_is_a_figure():
    root = _parse(plots.loss_curve([]))
    assert "autoencoder training loss" in _texts(root)


def _bars(root: ET.Element, colour: str) -> list[float]:
    """Heights (pixels) of the bars of one colour, left to right."""
    rects = [r for r in root.findall(".//s:g/s:rect", NS) if r.get("fill") == colour]
    rects.sort(key=lambda r: float(r.get("x")))
    return [float(r.get("height")) for r in rects]


def test_recall_per_transform_draws_a_bar_per_method_and_transform_as_high_as_its_recall():
    recalls = {
        "ours": {"crop": 1.0, "jpeg": 0.5, "blur": 0.25},
        "phash": {"crop": 0.0, "jpeg": 1.0},
    }
    counts = {"crop": 4, "jpeg": 2, "blur": 8}
    root = _parse(plots.recall_per_transform(recalls, "2%", counts))
    ours, phash = _bars(root, "#1f77b4"), _bars(root, "#ff7f0e")
    # sorted transforms: blur, crop, jpeg; phash has no blur (not drawn) and a zero bar
    assert len(ours) == 3 and len(phash) == 2
    unit = ours[1]  # recall 1.0
    assert ours == pytest.approx([0.25 * unit, unit, 0.5 * unit], abs=0.15)
    assert phash == pytest.approx([0.0, unit], abs=0.15)
    texts = _texts(root)
    assert "crop(4 pairs)" in texts and "blur(8 pairs)" in texts
    assert "recall of known pairs at T = 2%" in texts and {"ours", "phash"} <= set(texts)


def test_precision_recall_draws_each_curve_its_local_one_dashed_in_the_same_colour():
    r = np.linspace(0, 1, 11)
    curves = {
        "ours": (r, 1 - 0.5 * r, 0.75),
        "ours (local)": (r, 1 - 0.25 * r, 0.875),
        ODD: (r, np.full(11, 0.5), 0.5),
    }
    root = _parse(plots.precision_recall(curves))
    lines = root.findall(".//s:g/s:polyline", NS)
    assert len(lines) == 3
    assert lines[0].get("stroke") == lines[1].get("stroke") != lines[2].get("stroke")
    assert lines[1].get("stroke-dasharray") and not lines[0].get("stroke-dasharray")
    first = _points(lines[0])
    assert (
        len(first) == 11 and np.all(np.diff(first[:, 0]) > 0) and np.all(np.diff(first[:, 1]) > 0)
    )
    texts = _texts(root)
    assert "ours (AP 0.750)" in texts and f"{ODD} (AP 0.500)" in texts
    assert "precision" in texts and "recall of known duplicate pairs" in texts
    assert _parse(plots.precision_recall({})) is not None


def test_no_figure_imports_matplotlib():
    """Matplotlib's import and Agg rendering were about 1.2 s of a first run on the demo
    (training's picture and loss curve, the evaluation's curves): every figure is drawn
    without it, in a fresh interpreter that imports the command's modules first."""
    code = (
        "import sys, numpy as np, dedup_assets.runner, dedup_assets.dispatch\n"
        "import dedup_assets.instance_imports\n"
        "from dedup_assets.core.quality import plots\n"
        "x = np.zeros((2, 8, 8, 3), np.uint8)\n"
        "plots.loss_curve([1.0, 0.5]); plots.image_rows([x, x], ['a', 'b'])\n"
        "plots.precision_recall({'m': (np.r_[0, 1.0], np.r_[1, 0.5], 0.7)})\n"
        "plots.recall_per_transform({'m': {'crop': 0.5}}, '0.95', {'crop': 2})\n"
        "plots.duplicate_pairs(x, x, [0.9, 0.95], ['a', 'b'], ['c', 'd'], 'note')\n"
        "print('matplotlib' in sys.modules)\n"
    )
    assert run_python(code).strip() == "False"
