"""Figures for the UI and the reports, rendered off-screen to PNG bytes."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dedup_assets.core.density.spline import SplineDensity1D  # noqa: E402
from dedup_assets.core.quality.statistics import ComponentRegression  # noqa: E402

DPI = 80
MAX_HISTOGRAM_BINS = 80


def _few_ticks(ax, x: int = 5, y: int = 4) -> None:
    """At most x and y labelled ticks on a small panel: a tick label is text drawn glyph by
    glyph, and the default locator put up to 9 on each axis of the marginal densities'
    panels (measured in pairs, the figure took 0.61 of the time with these)."""
    ax.xaxis.set_major_locator(MaxNLocator(x))
    ax.yaxis.set_major_locator(MaxNLocator(y))


def _png(fig, tight: bool = True) -> bytes:
    """PNG bytes of a figure; `tight` crops to the drawn area (renders twice: slower)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # class names in scripts the font lacks show as boxes
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def loss_curve(losses: Sequence[float]) -> bytes:
    """Reconstruction loss per epoch."""
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
) -> bytes:
    """Each column: the kept image above the removed image that duplicates it, both named,
    with their similarity; `note` says how the keep policy chose which one stays.

    One axes in inches for the whole picture, each image an extent in it: an axes per
    image (16 of them) made most of the keep list's rendering, 1-3 s a threshold."""
    n = len(kept)
    margin, cell, size, height = 0.3, 1.7, 1.4, 4.6  # inches: row labels, column, image
    width = margin + max(n, 1) * cell
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    for c in range(n):
        x0 = margin + c * cell + (cell - size) / 2
        for image, y0 in ((kept[c], 2.7), (removed[c], 0.75)):
            ax.imshow(image, extent=(x0, x0 + size, y0, y0 + size), interpolation="nearest")
            ax.add_patch(plt.Rectangle((x0, y0), size, size, fill=False, lw=0.6, color="0.3"))
        mid = x0 + size / 2
        ax.text(mid, 4.17, f"similarity {similarities[c]:.3f}", fontsize=6, ha="center")
        ax.text(mid, 2.64, _wrap(kept_names[c]), fontsize=5, ha="center", va="top")
        ax.text(mid, 0.69, _wrap(removed_names[c]), fontsize=5, ha="center", va="top")
    ax.text(0.12, 3.4, "kept", fontsize=8, rotation=90, va="center")
    ax.text(0.12, 1.45, "removed", fontsize=8, rotation=90, va="center")
    ax.text(width / 2, 4.45, note, fontsize=7, ha="center")
    return _png(fig, tight=False)


def marginal_densities(
    fits: Sequence[SplineDensity1D], samples: Sequence[np.ndarray], title: str
) -> bytes:
    """Spline densities of the leading components over the histogram of their scores."""
    fig, axes = plt.subplots(1, len(fits), figsize=(3.2 * len(fits), 2.6), squeeze=False)
    for k, (fit, x) in enumerate(zip(fits, samples, strict=True)):
        ax = axes[0][k]
        lo, hi = fit.support
        t = np.linspace(lo, hi, 400)
        ax.hist(
            x,
            bins=min(fit.nodes.size, MAX_HISTOGRAM_BINS),
            range=(fit.nodes[0] - fit.step / 2, fit.nodes[-1] + fit.step / 2),
            density=True,
            histtype="stepfilled",  # one patch, not one per bar
            alpha=0.35,
            color="tab:gray",
            label="histogram",
        )
        ax.plot(t, fit.pdf(t), color="tab:blue", label="spline S2")
        ax.set_title(f"PC{k + 1}", fontsize=9)
        ax.tick_params(labelsize=7)
        _few_ticks(ax)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.12, top=0.8, wspace=0.25)
    return _png(fig, tight=False)


def density_panels(
    panels: Sequence[tuple[str, SplineDensity1D, SplineDensity1D]],
    component: int,
    threshold: str,
    note: str = "",
) -> bytes:
    """One component's spline density before and after removal, one ridge per class.

    Each class's scores are shown in units of its own before-removal standard deviation
    around its mean (class axes differ in scale), each ridge scaled to its before-peak. One
    axes for every class: ten small axes took 0.7 s a figure, most of a report's time."""
    n = max(len(panels), 1)
    fig, ax = plt.subplots(figsize=(7.0, 0.55 * n + 1.3))
    for row, (name, before, after) in enumerate(reversed(list(panels))):
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
        ax.plot(z, row + p_before * scale, lw=1.0, color="tab:blue")
        ax.plot(z, row + p_after * scale, lw=1.0, color="tab:orange")
        ax.text(
            -4.1,
            row + 0.15,
            f"{name}  H {before.entropy():.2f} -> {after.entropy():.2f}",
            fontsize=6,
            ha="right",
        )
    ax.set_xlim(-4, 4)
    ax.set_ylim(-0.1, n + 0.1)
    ax.set_yticks([])
    ax.set_xlabel(
        f"PC{component} score, in standard deviations of the class before removal", fontsize=7
    )
    ax.tick_params(labelsize=6)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.legend(
        handles=[
            Line2D([], [], color="tab:blue", label="before removal"),
            Line2D([], [], color="tab:orange", label="after removal"),
        ],
        loc="upper right",
        fontsize=6,
        frameon=False,
    )
    ax.set_title(
        f"PC{component}: spline density of each class before and after removal, T = {threshold}"
        "\nH: differential entropy of the density, in nats (higher = less peaked)"
        + (f"\n{note}" if note else ""),
        fontsize=8,
    )
    fig.subplots_adjust(left=0.3, right=0.98, bottom=0.55 / (0.55 * n + 1.3) + 0.05, top=0.86)
    return _png(fig, tight=False)


KEYED = 30  # classes named beside a kurtosis scatter


def kurtosis_scatter(
    before: np.ndarray,
    after: np.ndarray,
    labels: Sequence[str],
    reg: ComponentRegression,
    threshold: str,
) -> bytes:
    """The paper's figures 1-3: kurtosis after vs before, Theil-Sen line and y = x.

    Points carry numbers and the classes are listed beside the plot, so names never overlap;
    only the classes named in the key (the first KEYED) are numbered: a number per point
    cost 1.5 ms, 8 s a figure for 5,000 classes; the others are plain points.
    """
    fig, (ax, key) = plt.subplots(1, 2, figsize=(6.2, 3.6), gridspec_kw={"width_ratios": [3, 1.3]})
    ok = np.isfinite(before) & np.isfinite(after)
    ax.scatter(before[ok], after[ok], s=18, color="tab:blue", zorder=3)
    numbered = [(i + 1, lab) for i, lab in enumerate(np.asarray(labels)[ok])]
    shown = numbered[:KEYED]
    for (number, _), x, y in zip(shown, before[ok], after[ok], strict=False):
        ax.annotate(str(number), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if ok.any():
        lo = float(min(before[ok].min(), after[ok].min()))
        hi = float(max(before[ok].max(), after[ok].max()))
        pad = 0.05 * (hi - lo + 1e-9)
        t = np.linspace(lo - pad, hi + pad, 10)
        ax.plot(t, t, "--", color="gray", label="y = x (no change)")
        if np.isfinite(reg.slope):
            ax.plot(
                t,
                reg.slope * t + reg.intercept,
                color="tab:red",
                label=f"Theil-Sen {reg.equation()}",
            )
    ax.set_xlabel("excess kurtosis before removal")
    ax.set_ylabel("excess kurtosis after removal")
    ax.set_title(f"PC{reg.component}, T = {threshold}", fontsize=9)
    # "best" placement scans every point: a fixed corner when there are many; no legend
    # when nothing was drawn (no class with a finite kurtosis: Matplotlib would warn)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best" if len(numbered) <= KEYED else "upper left")
    ax.grid(alpha=0.3)
    key.axis("off")
    key.text(
        0,
        1,
        "\n".join(f"{n}  {name[:22]}" for n, name in shown)
        + (f"\n... and {len(numbered) - len(shown)} more" if len(numbered) > len(shown) else ""),
        fontsize=6,
        va="top",
        family="monospace",
    )
    # Fixed margins instead of a tight bounding box (which draws the figure twice).
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.14, top=0.91, wspace=0.05)
    return _png(fig, tight=False)


def precision_recall(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> bytes:
    """Precision-recall curves, one per method: name -> (recall, precision, AP)."""
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
