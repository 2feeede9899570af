"""Figures for the UI and the reports: pictures of images as PNG bytes (Pillow), curves,
bars, densities and kurtosis as SVG (`svg_figure`). Nothing here imports Matplotlib: its
import and Agg rendering were about a fifth of a first run on the demo (4.88 s against
3.8 s without, benchmarks/results/code_pair_demo_figures_1226.json)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dedup_assets.core.density.spline import SplineDensity1D
from dedup_assets.core.quality.statistics import ComponentRegression
from dedup_assets.core.quality.svg_figure import (
    BLUE,
    GRAY,
    MONO,
    ORANGE,
    RED,
    SvgFigure,
    nice_ticks,
)

MAX_HISTOGRAM_BINS = 80


def loss_curve(losses: Sequence[float]) -> bytes:
    """Reconstruction loss per epoch (SVG), on a log scale: ticks at powers of ten, or at
    the lowest and highest loss when they share a decade."""
    values = np.asarray(losses, dtype=np.float64)
    ok = np.isfinite(values) & (values > 0)
    logged = np.full(len(values), np.nan)
    logged[ok] = np.log10(values[ok])
    lo, hi = (float(logged[ok].min()), float(logged[ok].max())) if ok.any() else (0.0, 0.0)
    pad = max(0.08 * (hi - lo), 0.05)
    decades = np.arange(np.ceil(lo - pad), np.floor(hi + pad) + 1).tolist()
    yticks = [(d, f"1e{int(d)}") for d in decades]
    if len(yticks) < 2:  # within about a decade: the lowest and highest loss too
        yticks += [(v, f"{10**v:.2g}") for v in sorted({lo, hi}) if v not in decades]
    epochs = np.arange(1, len(values) + 1)
    shown = nice_ticks(1, max(len(values), 1), 6)
    xticks = [(float(e), str(int(e))) for e in shown.tolist() if float(e).is_integer()]
    fig = SvgFigure(400, 240)
    panel = fig.panel(64, 28, 316, 160, (0.5, max(len(values), 1) + 0.5), (lo - pad, hi + pad))
    panel.line(epochs, logged, BLUE)
    panel.points(epochs, logged, BLUE, 3.0)
    panel.frame(
        xlabel="epoch",
        ylabel="MSE (images in [-1, 1])",
        title="autoencoder training loss",
        xticks=xticks,
        yticks=yticks,
        grid=True,
    )
    return fig.to_bytes()


def image_rows(rows: Sequence[np.ndarray], labels: Sequence[str], scale: int = 2) -> bytes:
    """Rows of images (each row (n, H, W[, C])) stacked into one PNG, each row under its
    label, every image in a square of one size (`_thumbnail`).

    Drawn with Pillow, as `duplicate_pairs`: with Matplotlib this picture and the loss curve
    were about 0.7 s of the training step of a first run on the demo, its import included."""
    from PIL import Image, ImageDraw

    side, gap, label = 46 * scale, 3 * scale, 16 * scale  # pixels
    n = max((len(r) for r in rows), default=0)
    width, row_height = max(n, 1) * (side + gap), side + label
    canvas = Image.new("RGB", (width, max(len(rows), 1) * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(5 * scale + 1)
    for r, (row, text) in enumerate(zip(rows, labels, strict=True)):
        top = r * row_height
        draw.text((gap, top + 2), text, "black", font)
        for c, image in enumerate(row):
            canvas.paste(_thumbnail(image, side), (gap // 2 + c * (side + gap), top + label))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _wrap(text: str, width: int = 18, lines: int = 3) -> str:
    """A file name broken into short lines (never cut silently: an ellipsis marks a cut)."""
    parts = [text[i : i + width] for i in range(0, len(text), width)] or [""]
    if len(parts) > lines:
        parts = [*parts[: lines - 1], "..." + text[-(width - 3) :]]
    return "\n".join(parts)


def duplicate_pairs(
    kept: np.ndarray,
    removed: np.ndarray,
    similarities: Sequence[float],
    kept_names: Sequence[str],
    removed_names: Sequence[str],
    note: str,
    stamp: str = "",
) -> bytes:
    """Each column: the kept image above the removed image that duplicates it, both named,
    with their similarity; `note` says how the keep policy chose which one stays (PNG, with
    `stamp` in its text chunk PAIRS_STAMP: what the caller drew it from, `pairs_stamp`).

    Drawn with Pillow, images pasted and text set in its own font: Matplotlib's import
    and rendering were 0.3 s of the keep list's 0.44 s on EuroSAT, in the command's
    process beside the cross-class join."""
    from PIL import Image, ImageDraw

    n = len(kept)
    width, height = PAIR_MARGIN + max(n, 1) * PAIR_CELL, PAIR_HEIGHT
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    small, label = _font(9), _font(12)
    grey = (77, 77, 77)
    for c in range(n):
        x0 = PAIR_MARGIN + c * PAIR_CELL + (PAIR_CELL - PAIR_IMAGE) // 2
        mid = x0 + PAIR_IMAGE // 2
        draw.text((mid, 36), f"similarity {similarities[c]:.3f}", "black", small, "ma")
        for image, top, name in (
            (kept[c], PAIR_KEPT_TOP, kept_names[c]),
            (removed[c], PAIR_REMOVED_TOP, removed_names[c]),
        ):
            canvas.paste(_thumbnail(image), (x0, top))
            draw.rectangle((x0 - 1, top - 1, x0 + PAIR_IMAGE, top + PAIR_IMAGE), outline=grey)
            draw.multiline_text(
                (mid, top + PAIR_IMAGE + 5), _wrap(name), "black", small, "ma", 1, "center"
            )
    for text, top in (("kept", PAIR_KEPT_TOP), ("removed", PAIR_REMOVED_TOP)):
        box = draw.textbbox((0, 0), text, font=label)
        word = Image.new("RGB", (box[2] + 2, box[3] + 2), "white")
        ImageDraw.Draw(word).text((1, 1), text, "black", label)
        word = word.rotate(90, expand=True)
        canvas.paste(word, (6, top + (PAIR_IMAGE - word.height) // 2))
    draw.text((width // 2, 12), note, "black", label, "ma")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if stamp:
        info.add_text(PAIRS_STAMP, stamp)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


PAIRS_STAMP = "latent-dedup-pairs"


def pairs_stamp(path) -> str | None:
    """The stamp a `duplicate_pairs` picture at `path` was drawn with (None: no picture
    there, or none readable)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.text.get(PAIRS_STAMP)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return None


def _font(size: int):
    """DejaVu Sans (Matplotlib's own file, found without importing it: it has the accents
    and scripts of file names that Pillow's built-in font lacks), else Pillow's font."""
    from importlib.util import find_spec

    from PIL import ImageFont

    spec = find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


PAIR_MARGIN, PAIR_CELL, PAIR_IMAGE, PAIR_HEIGHT = 24, 136, 112, 368  # pixels
PAIR_KEPT_TOP, PAIR_REMOVED_TOP = 52, 212


def _thumbnail(image: np.ndarray, side: int = PAIR_IMAGE):
    """An image (H x W, H x W x 1/3/4; uint8, or floats in [0, 1]) scaled to fit a
    `side` square, pixels kept sharp, centred on white."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    picture = Image.fromarray(a).convert("RGB")
    scale = side / max(picture.width, picture.height, 1)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    box = Image.new("RGB", (side, side), "white")
    box.paste(
        picture.resize(size, Image.Resampling.NEAREST),
        ((side - size[0]) // 2, (side - size[1]) // 2),
    )
    return box


def marginal_densities(
    fits: Sequence[SplineDensity1D], samples: Sequence[np.ndarray], title: str
) -> bytes:
    """Spline densities of the leading components over the histogram of their scores (SVG:
    `svg_figure`)."""
    cell, left, top, height = 250.0, 44.0, 44.0, 130.0
    fig = SvgFigure(cell * max(len(fits), 1) + 8, top + height + 30)
    fig.text(fig.width / 2, 15, title, 9, "middle")
    for k, (fit, x) in enumerate(zip(fits, samples, strict=True)):
        lo, hi = fit.support
        t = np.linspace(lo, hi, 400)
        density = fit.pdf(t)
        x = np.asarray(x, float)
        counts, edges = np.histogram(
            x[np.isfinite(x)],
            bins=min(fit.nodes.size, MAX_HISTOGRAM_BINS),
            range=(fit.nodes[0] - fit.step / 2, fit.nodes[-1] + fit.step / 2),
            density=True,
        )
        peak = max(float(density.max(initial=0.0)), float(counts.max(initial=0.0)), 1e-12)
        panel = fig.panel(
            k * cell + left,
            top,
            cell - left - 14,
            height,
            (min(lo, float(edges[0])), max(hi, float(edges[-1]))),
            (0.0, 1.05 * peak),
        )
        panel.area(np.repeat(edges, 2), np.r_[0.0, np.repeat(counts, 2), 0.0], GRAY)
        panel.line(t, density, BLUE)
        panel.frame(title=f"PC{k + 1}")
        if k == 0:
            panel.legend([("histogram", GRAY, "area"), ("spline S2", BLUE, "line")])
    return fig.to_bytes()


def density_panels(
    panels: Sequence[tuple[str, SplineDensity1D, SplineDensity1D]],
    component: int,
    threshold: str,
    note: str = "",
) -> bytes:
    """One component's spline density before and after removal, one ridge per class (SVG).

    Each class's scores are shown in units of its own before-removal standard deviation
    around its mean (class axes differ in scale), each ridge scaled to its before-peak."""
    n = max(len(panels), 1)
    row, left, width = 40.0, 250.0, 420.0
    heading = [
        f"PC{component}: spline density of each class before and after removal, T = {threshold}",
        "H: differential entropy of the density, in nats (higher = less peaked)",
        *([note] if note else []),
    ]
    top = 14.0 + 12.0 * len(heading)
    fig = SvgFigure(left + width + 20, top + row * n + 44)
    fig.text(left + width / 2, 14, "\n".join(heading), 8, "middle")
    panel = fig.panel(left, top, width, row * n, (-4.0, 4.0), (-0.1, n + 0.1))
    for k, (name, before, after) in enumerate(reversed(list(panels))):
        lo = min(before.support[0], after.support[0])
        hi = max(before.support[1], after.support[1])
        t = np.linspace(lo, hi, 300)
        p_before, p_after = before.pdf(t), after.pdf(t)
        dt = t[1] - t[0]
        mass = max(float(p_before.sum() * dt), 1e-12)
        mean = float((t * p_before).sum() * dt / mass)
        sd = float(np.sqrt(max(((t - mean) ** 2 * p_before).sum() * dt / mass, 1e-24)))
        z = (t - mean) / sd
        scale = 0.9 / max(float(p_before.max()), float(p_after.max()), 1e-12)
        panel.line(z, k + p_before * scale, BLUE, 1.0)
        panel.line(z, k + p_after * scale, ORANGE, 1.0)
        panel.label(
            -4.0,
            k + 0.15,
            f"{name}  H {before.entropy():.2f} -> {after.entropy():.2f}",
            7,
            dx=-6,
            anchor="end",
        )
    panel.frame(
        xlabel=f"PC{component} score, in standard deviations of the class before removal",
        yticks=0,
        sides="b",
    )
    panel.legend([("before removal", BLUE, "line"), ("after removal", ORANGE, "line")])
    return fig.to_bytes()


KEYED = 30  # classes named beside a kurtosis scatter


def kurtosis_scatter(
    before: np.ndarray,
    after: np.ndarray,
    labels: Sequence[str],
    reg: ComponentRegression,
    threshold: str,
) -> bytes:
    """The paper's figures 1-3: kurtosis after vs before, Theil-Sen line and y = x (SVG).

    Points carry numbers and the classes are listed beside the plot, so names never overlap;
    only the classes named in the key (the first KEYED) are numbered, the others are plain
    points (one path for all of them: 5,000 classes stay a small figure).
    """
    fig = SvgFigure(620, 360)
    ok = np.isfinite(before) & np.isfinite(after)
    xb, ya = np.asarray(before, float)[ok], np.asarray(after, float)[ok]
    if ok.any():
        lo, hi = float(min(xb.min(), ya.min())), float(max(xb.max(), ya.max()))
        pad = 0.05 * (hi - lo + 1e-9)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.0, 1.0
    panel = fig.panel(62, 30, 360, 270, (lo, hi), (lo, hi))
    panel.frame(
        xlabel="excess kurtosis before removal",
        ylabel="excess kurtosis after removal",
        title=f"PC{reg.component}, T = {threshold}",
        grid=True,
    )
    keyed: list[tuple[str, str, str]] = []
    if ok.any():
        t = np.array([lo, hi])
        panel.line(t, t, GRAY, 1.0, dash="4 2")
        keyed.append(("y = x (no change)", GRAY, "dash"))
        if np.isfinite(reg.slope):
            panel.line(t, reg.slope * t + reg.intercept, RED, 1.2)
            keyed.append((f"Theil-Sen {reg.equation()}", RED, "line"))
    panel.points(xb, ya, BLUE)
    numbered = [(i + 1, lab) for i, lab in enumerate(np.asarray(labels)[ok])]
    shown = numbered[:KEYED]
    for (number, _), x, y in zip(shown, xb.tolist(), ya.tolist(), strict=False):
        panel.label(x, y, str(number), 6, dx=3, dy=-3)
    if keyed:
        panel.legend(keyed, corner="upper left")
    lines = [f"{n}  {str(name)[:22]}" for n, name in shown]
    if len(numbered) > len(shown):
        lines.append(f"... and {len(numbered) - len(shown)} more")
    if lines:
        fig.text(436, 38, "\n".join(lines), 6.5, family=MONO)
    return fig.to_bytes()


CURVE_COLOURS = (BLUE, ORANGE, "#2ca02c", RED, "#9467bd", "#8c564b", "#e377c2", GRAY)


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> bytes:
    """Precision-recall curves, one per method: name -> (recall, precision, AP) (SVG; a
    method ranked by margin over local levels, "(local)", dashed in its method's colour)."""
    fig = SvgFigure(420, 330)
    panel = fig.panel(52, 24, 352, 250, (0, 1.01), (0, 1.01))
    keyed, colours = [], {}
    for name, (recall, precision, ap) in curves.items():
        method = name.removesuffix(" (local)")
        colour = colours.setdefault(method, CURVE_COLOURS[len(colours) % len(CURVE_COLOURS)])
        dashed = name.endswith("(local)")
        panel.line(recall, precision, colour, 1.4, "4 2" if dashed else None)
        keyed.append((f"{name} (AP {ap:.3f})", colour, "dash" if dashed else "line"))
    panel.frame(xlabel="recall of known duplicate pairs", ylabel="precision", grid=True, yticks=5)
    if keyed:
        panel.legend(keyed, corner="lower left")
    return fig.to_bytes()


def recall_per_transform(
    recalls: dict[str, dict[str, float]], threshold: float, counts: dict[str, int]
) -> bytes:
    """Grouped bars: per planted transform, each method's recall of its known pairs at T
    (SVG), with a dashed line at 0.9.

    recalls: method -> transform -> recall; counts: known pairs per transform.
    """
    transforms = sorted(counts)
    methods = list(recalls)
    width = max(420.0, 76.0 * len(transforms) + 120)
    fig = SvgFigure(width, 290)
    panel = fig.panel(56, 16, width - 72, 210, (-0.5, max(len(transforms), 1) - 0.5), (0, 1.05))
    bar = 0.8 / max(len(methods), 1)
    x = np.arange(len(transforms), dtype=np.float64)
    keyed = []
    for k, method in enumerate(methods):
        colour = CURVE_COLOURS[k % len(CURVE_COLOURS)]
        values = [recalls[method].get(t, np.nan) for t in transforms]
        panel.bars(x + (k - (len(methods) - 1) / 2) * bar, values, bar, colour)
        keyed.append((method, colour, "bar"))
    panel.line(np.array(panel.xlim), np.array([0.9, 0.9]), GRAY, 0.8, "4 2")
    panel.frame(
        ylabel=f"recall of known pairs at T = {threshold}",
        xticks=[(float(i), f"{t}\n({counts[t]} pairs)") for i, t in enumerate(transforms)],
        yticks=6,
        grid=False,
    )
    x0 = panel.left  # the key in a row under the axis, clear of the bars
    for method, colour, _ in keyed:
        fig.parts.append(
            f'<rect x="{x0:.1f}" y="{fig.height - 17:.1f}" width="16" height="6" fill="{colour}"/>'
        )
        fig.text(x0 + 20, fig.height - 11.5, method, 7)
        x0 += 32 + 4.2 * len(method)
    return fig.to_bytes()
