"""Figures for the UI and the reports: pictures of images and the evaluation's curves as PNG
bytes (Matplotlib, off-screen), the density and kurtosis figures as SVG (`svg_figure`)."""

from __future__ import annotations

import io
import warnings
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
)

DPI = 80
MAX_HISTOGRAM_BINS = 80


def _pyplot():
    """Matplotlib's pyplot on the off-screen Agg backend, imported at the first PNG figure:
    the command's process and its workers' server import these modules before any work
    (about 0.13 s each on 2 busy cores), and most runs draw no PNG in most processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, tight: bool = True) -> bytes:
    """PNG bytes of a figure; `tight` crops to the drawn area (renders twice: slower)."""
    plt = _pyplot()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # class names in scripts the font lacks show as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def loss_curve(losses: Sequence[float]) -> bytes:
    """Reconstruction loss per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (images in [-1, 1])")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("autoencoder training loss")
    return _png(fig)


def image_rows(rows: Sequence[np.ndarray], labels: Sequence[str], scale: int = 2) -> bytes:
    """Rows of uint8 images (each row (n, H, W, 3)) stacked into one picture with labels.

    One axes in inches, each image an extent in it (as `duplicate_pairs`): an axes per
    image made the training picture's 20 images cost about 0.5 s."""
    plt = _pyplot()
    n = max(len(r) for r in rows)
    size, gap, label = 0.57 * scale, 0.03 * scale, 0.2 * scale  # inches
    width, row_height = max(n, 1) * (size + gap), size + label
    height = len(rows) * row_height
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    for r, (row, text) in enumerate(zip(rows, labels, strict=True)):
        top = height - r * row_height
        ax.text(gap, top - label * 0.15, text, fontsize=8, ha="left", va="top")
        for c, image in enumerate(row):
            x0, y0 = c * (size + gap) + gap / 2, top - label - size
            ax.imshow(image, extent=(x0, x0 + size, y0, y0 + size), interpolation="nearest")
    return _png(fig, tight=False)


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


def _thumbnail(image: np.ndarray):
    """An image (H x W, H x W x 1/3/4; uint8, or floats in [0, 1]) scaled to fit a
    PAIR_IMAGE square, pixels kept sharp, centred on white."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    picture = Image.fromarray(a).convert("RGB")
    scale = PAIR_IMAGE / max(picture.width, picture.height, 1)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    box = Image.new("RGB", (PAIR_IMAGE, PAIR_IMAGE), "white")
    box.paste(
        picture.resize(size, Image.Resampling.NEAREST),
        ((PAIR_IMAGE - size[0]) // 2, (PAIR_IMAGE - size[1]) // 2),
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


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> bytes:
    """Precision-recall curves, one per method: name -> (recall, precision, AP)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for name, (recall, precision, ap) in curves.items():
        style = "--" if name.endswith("(local)") else "-"  # ranked by margin, not cosine
        ax.plot(recall, precision, style, label=f"{name} (AP {ap:.3f})")
    ax.set_xlabel("recall of known duplicate pairs")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def recall_per_transform(
    recalls: dict[str, dict[str, float]], threshold: float, counts: dict[str, int]
) -> bytes:
    """Grouped bars: per planted transform, each method's recall of its known pairs at T.

    recalls: method -> transform -> recall; counts: known pairs per transform.
    """
    plt = _pyplot()
    transforms = sorted(counts)
    methods = list(recalls)
    fig, ax = plt.subplots(figsize=(max(4.6, 0.9 * len(transforms) + 1.5), 3.4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(transforms))
    for k, method in enumerate(methods):
        values = [recalls[method].get(t, np.nan) for t in transforms]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, values, width, label=method)
    ax.set_xticks(x, [f"{t}\n({counts[t]} pairs)" for t in transforms], fontsize=7)
    ax.set_ylabel(f"recall of known pairs at T = {threshold}")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(4, len(methods)))
    return _png(fig)
