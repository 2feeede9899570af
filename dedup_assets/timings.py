"""Where a run's time goes: seconds per kind of work and the images it went over.

Each step of a Dagster run is one asset over a range of partitions, and Dagster times it, so
a step's seconds are that asset's work for those classes or that threshold. `dedup run`
adds them up per asset over its runs (`WorkTimes`), prints the table, writes it to
`reports/timings.json` and the summary shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# asset (step key) -> the work it does, in the order a run does it
WORK = {
    "image_catalog": "listing the source",
    "class_images": "decoding new images",
    "autoencoder": "training (or keeping) the model",
    "reference_pool": "drawing the reference pool",
    "class_latents": "encoding",
    "spline_fits": "fitting densities (PCA + splines)",
    "class_keep_lists": "calibrating budgets + deciding",
    "keep_list": "keep lists + integrity check",
    "cross_class_duplicates": "cross-class pairs",
    "cross_class_duplicates_no_cross_class_duplicates": "cross-class check",
    "kurtosis_report": "kurtosis reports + gate",
    "clean_dataset": "clean copies",
    "dedup_summary": "summary",
    "dedup_evaluation": "evaluation",
    "review_page": "review page",
}


@dataclass
class WorkTimes:
    """Seconds per asset summed over a run's Dagster runs (with workers, the sum of their
    step times: more than the wall time when runs overlap), and the images each went over."""

    seconds: dict[str, float] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    def add(self, steps: Mapping[str, float]) -> None:
        for step, seconds in steps.items():
            self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    def count(self, steps: list[str], images: int) -> None:
        """The images a stage's assets went over (added up over the stage's runs)."""
        for step in steps:
            self.images[step] = self.images.get(step, 0) + images

    def rows(self) -> list[dict]:
        """One row per asset that ran, in WORK's order (unknown steps last)."""
        order = [s for s in WORK if s in self.seconds] + sorted(set(self.seconds) - set(WORK))
        out = []
        for step in order:
            seconds, images = self.seconds[step], self.images.get(step)
            out.append(
                {
                    "work": WORK.get(step, step),
                    "asset": step,
                    "seconds": round(seconds, 3),
                    "images": images,
                    "images_per_second": round(images / seconds, 1)
                    if images and seconds > 0
                    else None,
                }
            )
        return out

    def lines(self) -> list[str]:
        """The table as a user reads it at the end of a run."""
        rows = self.rows()
        wide = max([24, *(len(r["asset"]) for r in rows)])  # a check's step key is long
        head = f"{'work':<36} {'asset':<{wide}} {'seconds':>8} {'images':>9} {'images/s':>9}"
        body = [
            f"{r['work']:<36} {r['asset']:<{wide}} {r['seconds']:>8.1f} "
            f"{'' if r['images'] is None else format(r['images'], ','):>9} "
            f"{'' if r['images_per_second'] is None else format(r['images_per_second'], ',.0f'):>9}"
            for r in rows
        ]
        return [head, *body]
