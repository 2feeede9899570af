"""Asset: train/test leakage, every evaluation image (val, test) with an exact or near copy
in the training split, in `leakage.csv`, and a blocking check per evaluation split ("no test
image has a copy in train"). The comparison is `core.decision.leakage`.

Incremental. Each evaluation split keeps its pairs (`<output>/.leakage/<split>.parquet`)
with what they were computed from (`core.decision.leakage.split_inputs`: the latents of
every training class and of the split's classes, each recording its class's content and
the model; the budget, the join settings and the rule), and its judgement's state
(`<split>.index.npz`, `core.decision.leakage_index`). A run then:

- reads a split's pairs as they are when none of its inputs changed;
- otherwise updates the split's index: new training images are compared with the split's
  images and decoys (and the densities they raise lowered in place), new evaluation images
  are compared with train, removed ones dropped; only new images and new decoys are
  encoded. The judgement is the one a build on the same space would give (the index's
  module doc); the per-split table says what each update did;
- builds a split's index again when a training image was removed or changed, the model,
  budget, join or rule changed, or train grew past 1.25x the images its space was fitted
  on;
- never recomputes for overrides (pairs marked `not_duplicate` are left out of the table
  after the join) or for the tolerance (the checks count the table).

Blocking: a check that fails stops the assets downstream of `leakage` in the same run
(Dagster's blocking checks). `dedup run` and the automation run `leakage` in a run of its
own before the thresholds, so the clean copies are still made, with the leakage policy
applied (`--leakage drop-train` leaves the training copies out); the failed check makes
`dedup run` exit with the gate's status.
"""

import re
import time

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.latents import class_latents
from dedup_assets.core.data.artifacts import class_names, digest, is_current, write_table
from dedup_assets.core.data.atomic_io import write_csv
from dedup_assets.core.data.splits import SPLIT_ALIASES, TRAIN, parse_split_names
from dedup_assets.core.decision.leakage import (
    LEAKAGE_SCHEMA,
    PAIR_SCHEMA,
    SplitClasses,
    budget_facts,
    budget_note,
    budget_read_words,
    leakage_made_from,
    pairs_path,
    read_split_facts,
    split_cache,
    split_inputs,
    split_table,
    write_record,
    write_split_facts,
)
from dedup_assets.core.decision.leakage_index import SplitJudgement, judge_split
from dedup_assets.core.decision.overrides import without_pairs
from dedup_assets.core.model.autoencoder import encode_images, load_state
from dedup_assets.core.quality.run_summary import leakage_words
from dedup_assets.ui import md_table
from resources import ComputeDevice, DedupSettings, DedupStorage

SHOWN = 20  # pairs listed in the UI; leakage.csv holds them all
CANONICAL_EVAL_SPLITS = tuple(dict.fromkeys(s for s in SPLIT_ALIASES.values() if s != TRAIN))


def check_name(split: str) -> str:
    """The blocking check of one evaluation split: `no_leak_<split>` (a Dagster name)."""
    return "no_leak_" + re.sub(r"[^A-Za-z0-9_]", "_", split)


def eval_split_names(splits: str | None) -> list[str]:
    """The evaluation splits that get a check: the canonical ones (val, test) and those
    named in `--splits` (canonical names, the training split left out), in that order."""
    named = []
    try:
        given = parse_split_names(None if splits in (None, "", "auto") else splits) or ()
    except ValueError:
        given = ()
    for i, name in enumerate(given):
        canon = SPLIT_ALIASES.get(name.lower(), name.lower())
        trains = [n for n in given if SPLIT_ALIASES.get(n.lower()) == TRAIN]
        if canon == TRAIN or (not trains and i == 0):
            continue  # the training split (`splits.detect_splits`: else the first named)
        named.append(canon)
    return list(dict.fromkeys([*CANONICAL_EVAL_SPLITS, *named]))


def build_leakage_asset(splits: str | None = None) -> dg.AssetsDefinition:
    """The `leakage` asset with a blocking check per evaluation split (`eval_split_names`)."""
    checked = eval_split_names(splits)

    @dg.asset(
        group_name="deduplication",
        kinds={"numpy", "csv"},
        deps=[
            image_catalog,
            dg.AssetDep(class_latents, partition_mapping=dg.AllPartitionMapping()),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                check_name(s),
                asset="leakage",
                blocking=True,
                description=f"No {s} image has a copy in train (more than --leakage-tolerance "
                "flagged fails, default 0): the pairs are in leakage.csv and on the review page.",
            )
            for s in checked
        ],
        description="Every evaluation image (val, test) with an exact or near copy in the "
        "training split, in its own class or any other, at a calibrated false-flag budget "
        "(--leakage-budget): `leakage.csv` (split, class, image, train_class, train_image, "
        "similarity, kind, threshold). Pairs marked not_duplicate in overrides.csv are left "
        "out. Empty for a source without splits.",
    )
    def leakage(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        compute: ComputeDevice,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        current = storage.current_inputs(settings)  # with the pairs marked not a duplicate
        current.require_every_class(layout.latents, current.latents, "latents", "class_latents")
        classes = SplitClasses.of(list(current.class_digests))
        names = class_names(layout)
        start = time.perf_counter()
        model, tables_of = [], {}

        def encode(pixels: np.ndarray) -> np.ndarray:
            if not model:
                model.append(load_state(layout.model, compute.torch_device()))
            return encode_images(
                model[0], pixels, device=compute.torch_device(), amp_dtype=compute.amp_dtype()
            )

        def images(keys: tuple[str, ...]) -> pl.DataFrame:
            if keys not in tables_of:
                tables_of[keys] = split_table(layout, keys, names)
            return tables_of[keys]

        tables, info, recomputed, hows = [], {}, [], {}
        for split, keys in classes.evals.items():
            made_from = split_inputs(current, split, classes)
            cache = split_cache(layout, split)
            found, facts = read_split_facts(layout, split, made_from)
            if found and is_current(cache, made_from):
                table = pl.read_parquet(cache, glob=False)
                hows[split] = "unchanged"
            else:
                judged = judge_split(
                    layout,
                    split,
                    images(classes.train),
                    images(keys),
                    encode,
                    model=current.model_digest,
                    budget=float(settings.leakage_budget),
                    join=str(settings.join),
                    ann_min_size=int(settings.ann_min_class_size),
                    nprobe=int(settings.ann_nprobe),
                )
                table, result = judged.table, judged.result
                facts = (
                    None
                    if result is None
                    else budget_facts(
                        float(settings.leakage_budget), result.draws, result.threshold
                    )
                )
                write_table(table, cache, made_from)
                write_split_facts(layout, split, made_from, facts)
                recomputed.append(split)
                hows[split] = _how(judged)
                context.log.info(f"leakage {split}: {hows[split]}")
            if facts is not None:
                info[split] = facts
            tables.append(table)
        tables_of.clear()
        pairs = pl.concat(tables) if tables else pl.DataFrame(schema=PAIR_SCHEMA)
        pairs = without_pairs(pairs, current.not_duplicate, "image", "train_image")
        pairs = pairs.sort("split", "class", "image", "similarity", descending=[False] * 3 + [True])
        made_from = leakage_made_from(current)
        flagged = {s: pairs.filter(pl.col("split") == s)["image"].n_unique() for s in classes.evals}
        write_table(pairs, pairs_path(layout), made_from)
        write_csv(pairs.select(list(LEAKAGE_SCHEMA)), layout.leakage)
        write_record(
            layout,
            {
                "made_from": digest(made_from),
                "flagged": flagged,
                "pairs": {s: pairs.filter(pl.col("split") == s).height for s in classes.evals},
                "splits": info,
                "this_run": hows,
            },
        )
        budget_notes = {s: budget_note(s, info.get(s)) for s in classes.evals}
        seconds = time.perf_counter() - start
        tolerance = int(settings.leakage_tolerance)
        note = (
            ""
            if classes.evals
            else "no evaluation split: the source has no split folders (train, val, test), "
            "so there is nothing to compare with train"
        )
        context.log.info(
            note
            or f"leakage: {', '.join(f'{s} {n} flagged' for s, n in flagged.items())}; "
            f"recomputed {', '.join(recomputed) or 'nothing'} ({seconds:.1f}s)"
        )
        for words in budget_notes.values():
            if words:
                context.log.warning(words)
        checks = [
            _check_result(
                s,
                s in classes.evals,
                flagged.get(s, 0),
                pairs,
                tolerance,
                layout,
                note,
                budget_notes.get(s, ""),
            )
            for s in checked
        ]
        per_split = [
            (
                s,
                info.get(s, {}).get("threshold", "-"),
                info.get(s, {}).get("draws", 0),
                budget_read_words(info.get(s)),
                flagged[s],
                pairs.filter((pl.col("split") == s) & (pl.col("kind") == "exact"))[
                    "image"
                ].n_unique(),
                hows.get(s, "-"),
            )
            for s in classes.evals
        ]
        said = [w for w in budget_notes.values() if w]
        return dg.MaterializeResult(
            metadata={
                "flagged_images": sum(flagged.values()),
                "pairs": pairs.height,
                "evaluation_splits": ", ".join(classes.evals) or "none",
                "recomputed": ", ".join(recomputed) or "nothing",
                "budget": float(settings.leakage_budget),
                "tolerance": tolerance,
                "seconds": round(seconds, 2),
                "per_split": dg.MetadataValue.md(
                    md_table(
                        [
                            "split",
                            "threshold",
                            "decoy draws",
                            "budget read",
                            "flagged images",
                            "exact copies",
                            "this run",
                        ],
                        per_split,
                    )
                    + "".join(f"\n\n{w}" for w in said)
                    if per_split
                    else note
                ),
                "pairs_shown": dg.MetadataValue.md(_pairs_table(pairs)),
                "path": dg.MetadataValue.path(str(layout.leakage)),
                **({"note": note} if note else {}),
                **({"budget_note": "\n".join(said)} if said else {}),
            },
            check_results=checks,
        )

    return leakage


def _how(judged: SplitJudgement) -> str:
    """What one split's judgement did, in words (the log, the per-split table)."""
    c = judged.counts
    if judged.how != "updated" or c is None:
        return judged.how
    return (
        f"updated: +{c.train_added} train, +{c.eval_added}/-{c.eval_removed} evaluation "
        f"images, +{c.decoys_added}/-{c.decoys_removed} decoys, {c.encoded} views encoded, "
        f"{judged.recompared} rows compared again with all of train"
    )


def _check_result(
    split: str,
    present: bool,
    flagged: int,
    pairs: pl.DataFrame,
    tolerance: int,
    layout,
    note: str,
    budget: str = "",
) -> dg.AssetCheckResult:
    name = check_name(split)
    if not present:
        outcome = note or f"no {split} split in this source"
        return dg.AssetCheckResult(
            check_name=name, passed=True, description=outcome, metadata={"outcome": outcome}
        )
    mine = pairs.filter(pl.col("split") == split)
    exact = mine.filter(pl.col("kind") == "exact")["image"].n_unique()
    outcome = leakage_words(split, flagged, exact, tolerance, layout, budget)
    return dg.AssetCheckResult(
        check_name=name,
        passed=flagged <= tolerance,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome,
        metadata={
            "outcome": outcome,
            "flagged_images": flagged,
            "exact_copies": exact,
            "tolerance": tolerance,
            "first_pairs": dg.MetadataValue.md(_pairs_table(mine)),
        },
    )


def _pairs_table(pairs: pl.DataFrame) -> str:
    if pairs.height == 0:
        return "none"
    return md_table(
        ["split", "class", "image", "train class", "train image", "similarity", "kind"],
        pairs.select("split", "class", "image", "train_class", "train_image", "similarity", "kind")
        .head(SHOWN)
        .rows(),
    )
