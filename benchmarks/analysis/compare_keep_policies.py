"""Keep policies `first` and `density` in one similarity space, at equal numbers removed.

For each policy and T in 0.90-0.99: images removed and the kurtosis gate's regressions;
then the line's excess at the median and the slopes, interpolated at equal removals.

    python benchmarks/analysis/compare_keep_policies.py OUTPUT_DIR [--space raw] [RESULT.json]
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.class_density import ClassDensityModel  # noqa: E402
from dedup_assets.core.keep_policy import greedy_keep, visit_order  # noqa: E402
from dedup_assets.core.layout import OutputLayout  # noqa: E402
from dedup_assets.core.similarity import embed  # noqa: E402
from dedup_assets.core.statistics import excess_kurtosis, kurtosis_gate  # noqa: E402

THRESHOLDS = [0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
TARGETS = [8000, 12000, 16000]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    space = sys.argv[sys.argv.index("--space") + 1] if "--space" in sys.argv else "raw"
    args = [a for a in args if a != space]
    output = Path(args[0])
    layout = OutputLayout(output)
    data = []
    for c in load_classes(output):
        model = ClassDensityModel.load(layout.spline_fit(c.key))
        data.append(
            (
                c.ids,
                embed(c.latents, space, model),
                model.log_density(c.latents),
                model.scores(c.latents)[:, :3],
            )
        )
    before = np.array([excess_kurtosis(z) for *_, z in data])
    results: dict[str, list[dict]] = {}
    for policy in ("first", "density"):
        rows = []
        for t in THRESHOLDS:
            after, removed = [], 0
            for ids, x, log_density, z in data:
                d = greedy_keep(x, visit_order(ids, policy, log_density), t)
                removed += len(ids) - d.n_kept
                after.append(excess_kurtosis(z[d.kept]))
            gate = kurtosis_gate(before, np.array(after), 0.1)
            regs = gate.regressions
            rows.append(
                {
                    "threshold": t,
                    "removed": removed,
                    "slopes": [r.slope for r in regs],
                    "excess": [r.excess_at_median for r in regs],
                    "reduced": [r.fraction_reduced for r in regs],
                }
            )
            print(
                policy,
                t,
                removed,
                " ".join(
                    f"PC{r.component}: {r.equation()} excess={r.excess_at_median:+.3f} reduced={r.fraction_reduced:.0%}"
                    for r in regs
                ),
                flush=True,
            )
        results[policy] = rows
    for target in TARGETS:
        cells = []
        for policy, rows in results.items():
            removed = np.array([r["removed"] for r in rows])
            order = np.argsort(removed)
            excess = np.array([r["excess"] for r in rows])[order]
            slopes = np.array([r["slopes"] for r in rows])[order]
            ex = ",".join(
                f"{np.interp(target, removed[order], excess[:, c]):+.3f}" for c in range(3)
            )
            sl = ",".join(
                f"{np.interp(target, removed[order], slopes[:, c]):.2f}" for c in range(3)
            )
            cells.append(f"{policy}: excess {ex} slope {sl}")
        print(f"removed {target}: " + " | ".join(cells))
    if len(args) > 1:
        Path(args[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
