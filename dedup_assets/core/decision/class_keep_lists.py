"""One class's keep lists as the tables a run writes: its decision at every threshold key
(`class_keep.decide_thresholds`), earlier decisions carried over (`prior_decisions`), the
user's corrections applied (`core.decision.overrides`), and each row stamped with its space,
join, calibration, when and in which run it was made, and who decided it (`decided_by`:
`exact`, `model` or `override`; a removal an override forced has `match` `override`).

What the `class_keep_lists` asset writes, as a plain function of the output folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    BUDGET_NULL,
    KEEP_LIST_COLUMNS,
    KEEP_LIST_SCHEMA,
    CurrentInputs,
    MethodSettings,
    class_name,
    join_setting,
    read_keep_list,
    read_provenance,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.splits import key_split
from dedup_assets.core.data.thresholds import budget_of, canonical_key
from dedup_assets.core.decision.calibration import (
    BudgetThreshold,
    NullSource,
    encode_mirrors,
    mirror_latents,
)
from dedup_assets.core.decision.class_decision import ClassDecision, PriorDecision
from dedup_assets.core.decision.class_keep import decide_thresholds, load_class_data
from dedup_assets.core.decision.overrides import ClassOverrides
from dedup_assets.core.decision.reference_pool import ReferencePool, read_reference_pool

if TYPE_CHECKING:  # torch is imported where the model is loaded
    import torch

    from dedup_assets.core.model.autoencoder import ConvAutoencoder


def prior_decisions(
    layout: OutputLayout,
    key: str,
    thresholds: Sequence[str],
    settings: MethodSettings,
    image_ids: np.ndarray,
) -> tuple[list[PriorDecision | None], dict[str, pl.DataFrame]]:
    """The class's earlier decisions at each threshold, mapped onto the current images.

    Only a keep list made with the same space, keep policy, threshold, join settings and (for
    a budget) budget scaling and rule counts; each earlier table is returned too, for the
    decision times and cosines it carries. A row an override decided (`decided_by`
    `override`) is no earlier decision: the overrides of now decide it again, so an override
    taken out of the file does not linger.
    """
    priors: list[PriorDecision | None] = []
    tables: dict[str, pl.DataFrame] = {}
    positions = None  # made for the first earlier table that applies (a first run has none)
    for t in thresholds:
        path = layout.class_keep_list(t, key)
        made = read_provenance(path) if path.exists() else None
        scaling = str(settings.budget_scaling) if budget_of(t) is not None else None
        same = made is not None and (
            made.get("space"),
            made.get("policy"),
            _spelled(made.get("threshold")),  # "0.950" before thresholds had one spelling
            made.get("scaling"),
            made.get("null"),
            made.get("join"),
        ) == (
            str(settings.similarity_space),
            str(settings.keep_policy),
            _spelled(t),
            scaling,
            BUDGET_NULL if scaling is not None else None,
            join_setting(settings),
        )
        if not same:
            priors.append(None)
            continue
        old = read_keep_list(path)
        tables[t] = old
        if positions is None:
            positions = pl.DataFrame(
                {"image_id": image_ids.tolist(), "at": np.arange(len(image_ids))},
                schema={"image_id": pl.String, "at": pl.Int64},
            )
        prior = PriorDecision.none(len(image_ids))
        mapped = old.filter(pl.col("decided_by") != "override")
        mapped = mapped.join(positions, on="image_id", how="inner").join(
            positions.rename({"image_id": "duplicate_of", "at": "named"}),
            on="duplicate_of",
            how="left",
        )
        at = mapped["at"].to_numpy()
        prior.state[at] = np.where(mapped["kept"].to_numpy(), 1, 0)
        prior.duplicate_of[at] = mapped["named"].fill_null(-1).to_numpy()
        prior.similarity[at] = mapped["similarity"].fill_null(np.nan).to_numpy()
        prior.exact[at] = (mapped["match"] == "exact").fill_null(False).to_numpy()
        prior.cosine[at] = mapped["cosine"].fill_null(np.nan).to_numpy()
        priors.append(prior)
    return priors, tables


def class_keep_lists(
    layout: OutputLayout,
    key: str,
    thresholds: Sequence[str],
    settings: MethodSettings,
    current: CurrentInputs,
    *,
    run_id: str,
    stable: bool = True,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
    amp_dtype: torch.dtype | None = None,
    overrides: ClassOverrides | None = None,
    model: ConvAutoencoder | None = None,
    pool: ReferencePool | None = None,
) -> dict[str, pl.DataFrame]:
    """One class's keep list at every threshold, from its current latents and fit.

    With `stable` (the default), earlier decisions are kept and only new images are decided
    (see `class_decision.keep_decisions`); each row says when and in which run it was made.
    overrides: the class's corrections (`Overrides.for_class`); they must be those `current`
    records for the class (`CurrentInputs.override_digests`), so the tables match the
    provenance they are written with. None or empty: decided exactly as without overrides.
    model, pool: the run's autoencoder and reference pool when a caller deciding many
    classes has them loaded (read from the output otherwise, when a budget needs them).
    """
    given = overrides.digest if overrides is not None else ""
    if given != current.override_digests.get(key, ""):
        raise ValueError(
            f"the overrides given for class {key} are not those of the current inputs: build "
            "CurrentInputs.of(..., override_digests=overrides.digests()) from the same file"
        )
    budgets = [budget_of(t) for t in thresholds]
    table, data = load_class_data(
        layout,
        key,
        current,
        space=settings.similarity_space,
        with_pixels=any(b is not None for b in budgets),
        dct_store=layout.class_dct(key),
    )
    rows = mirrors = None
    if any(b is not None for b in budgets):
        if model is None:
            from dedup_assets.core.model.autoencoder import load_state  # deferred: torch

            model = load_state(layout.model)
        if pool is None:
            pool = read_reference_pool(layout, current)
        # The mirrors' latents are stored for the cross-class calibration; they are encoded
        # on the run's device and precision, those of the latents.
        rows, mirrors = mirror_latents(
            layout,
            key,
            current.latents(key),
            len(data.image_ids),
            lambda rows: encode_mirrors(
                model,
                data.pixels,
                rows,
                device=device,
                amp_dtype=amp_dtype,
            ),
        )
    priors, earlier = (
        prior_decisions(layout, key, thresholds, settings, data.image_ids)
        if stable
        else ([None] * len(thresholds), {})
    )
    corrections = overrides.corrections(table["path"].to_list()) if overrides is not None else None
    start = time.perf_counter()
    decided = decide_thresholds(
        data,
        thresholds,
        space=settings.similarity_space,
        policy=settings.keep_policy,
        model=model,
        pool=pool,
        class_key=key,
        scaling=settings.budget_scaling,
        block=settings.block_size,
        join=settings.join,
        ann_min_class_size=settings.ann_min_class_size,
        nprobe=settings.ann_nprobe,
        prior=priors,
        decoy_latents=mirrors,
        decoy_rows=rows,
        corrections=corrections,
    )
    resolved = [d.resolved for d in decided]
    decisions = [d.decision for d in decided]
    seconds = time.perf_counter() - start
    name = class_name(layout, key)
    split = key_split(key)[0]
    ids = data.image_ids
    now = datetime.now(UTC).isoformat(timespec="seconds")
    n = len(ids)
    # The columns every threshold's table shares, made once; each table is built from plain
    # columns in one call (a Series and a repeat per column cost 1.2 ms a table, a tenth of
    # a small class's keep decisions at 1,000 classes).
    # As Series of their schema's types, made once for both tables (a dict of lists made
    # each table's columns again: 0.2 ms a table of 20 rows).
    shared = {
        "image_id": pl.Series("image_id", ids.tolist(), dtype=pl.String),
        "split": pl.Series("split", [split] * n, dtype=pl.String),
        "class": pl.Series("class", [name] * n, dtype=pl.String),
        "path": table["path"].alias("path").cast(pl.String),
    }
    out = {}
    for t, d, r in zip(thresholds, decisions, resolved, strict=True):
        dup = np.where(d.duplicate_of >= 0, ids[np.maximum(d.duplicate_of, 0)], None)
        match, decided_by = _who_decided(d)
        carried = d.carried if d.carried is not None else np.zeros(n, bool)
        if t in earlier:
            made = pl.DataFrame({"image_id": shared["image_id"], "carried": carried.tolist()})
            before = earlier[t]
            if "join" not in before.columns:  # written before the join was recorded
                before = before.with_columns(pl.lit("exact").alias("join"))
            made = made.join(
                before.select("image_id", "decided_at", "decided_in", "join"),
                on="image_id",
                how="left",
                maintain_order="left",
            ).with_columns(
                pl.when(pl.col("carried") & pl.col("decided_at").is_not_null())
                .then(pl.col("decided_at"))
                .otherwise(pl.lit(now))
                .alias("decided_at"),
                pl.when(pl.col("carried") & pl.col("decided_in").is_not_null())
                .then(pl.col("decided_in"))
                .otherwise(pl.lit(run_id))
                .alias("decided_in"),
                # Which join made each decision: this run's for those made now.
                pl.when(pl.col("carried") & pl.col("join").is_not_null())
                .then(pl.col("join"))
                .otherwise(pl.lit(d.join))
                .alias("join"),
            )
            joins, at, made_in = made["join"], made["decided_at"], made["decided_in"]
        else:  # nothing earlier to carry: every decision is this run's
            joins, at, made_in = [d.join] * n, [now] * n, [run_id] * n
        similarity = d.similarity.astype(np.float64)
        columns = {
            **shared,
            "kept": np.asarray(d.kept, dtype=bool),
            "duplicate_of": dup.tolist(),
            "similarity": np.where(np.isnan(similarity), None, similarity).tolist(),
            "match": match.tolist(),
            "space": [d.space] * n,
            "join": joins,
            "cosine": np.asarray(d.cosines(), dtype=np.float64),
            "calibrated_on": [None if r is None else r.null] * n,
            "decided_at": at,
            "decided_in": made_in,
            "decided_by": decided_by.tolist(),
        }
        out[t] = pl.DataFrame(
            [pl.Series(c, columns[c], dtype=KEEP_LIST_SCHEMA[c]).alias(c) for c in KEEP_LIST_SCHEMA]
        )
        if log is not None:
            carried = int(d.carried.sum()) if d.carried is not None else 0
            at = t if r is None else f"{t} ({_resolution_words(r, d.threshold)})"
            exact = int(d.exact.sum())
            log(
                f"{key} @ T={at}: kept {d.n_kept:,} of {len(ids):,} in space {d.space} "
                f"({exact} exact {'copy' if exact == 1 else 'copies'} removed; {carried:,} "
                f"earlier decisions kept, {len(ids) - carried:,} decided now)"
            )
    if log is not None:
        log(f"{key}: {len(thresholds)} thresholds decided in {seconds:.2f}s")
    return out


def _spelled(threshold: object) -> object:
    """A threshold key in its one spelling (`thresholds.canonical_key`); anything else as
    it is."""
    try:
        return canonical_key(str(threshold))
    except ValueError:
        return threshold


def _who_decided(d: ClassDecision) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `match` (None kept, `exact`, `near`, or `override` for a removal an
    override forced) and `decided_by` (`override` for an image an override names, else
    `exact` for an exact copy removed, else `model`)."""
    match = np.where(d.kept, None, np.where(d.exact, "exact", "near"))
    if d.forced is not None:
        match = np.where(d.forced == -1, "override", match)
    decided_by = np.where(match == "exact", "exact", "model")
    if d.overridden is not None:
        decided_by = np.where(d.overridden, "override", decided_by)
    return match, decided_by


def _resolution_words(r: BudgetThreshold, threshold: float) -> str:
    """How a budget was read for a class and what it resolved to (`threshold`), for the log."""
    if r.null == NullSource.NONE:
        return (
            f"not calibrated: {r.draws} null values cannot show the top {r.budget:.2%}; "
            f"cosine {threshold:.4f}"
        )
    where = "the class's mirrors" if r.null == NullSource.CLASS else "the run's reference pool"
    kind = f"cosine in {r.space} {threshold:.4f}"
    if r.offsets is not None:
        kind = f"margin over the local levels {threshold:.4f}" + (
            f", ceiling {r.ceiling:.4f}" if r.ceiling is not None else ""
        )
    return f"{r.draws:,} null values from {where}; {kind}"


DUPLICATE_OF_PATH = "duplicate_of_path"
"""The keep list files' last column: the path, relative to the source, of the kept image a
removed one duplicates (`duplicate_of` names it by image id, a content hash a user cannot
open); empty where `duplicate_of` is (kept images, a removal by override naming none)."""


def with_duplicate_paths(keep: pl.DataFrame) -> pl.DataFrame:
    """The threshold's keep list as its files carry it: KEEP_LIST_COLUMNS, then
    DUPLICATE_OF_PATH, looked up in the same class of the same split (where `duplicate_of`
    always lies)."""
    paths = keep.select(
        "split",
        "class",
        pl.col("image_id").alias("duplicate_of"),
        pl.col("path").alias(DUPLICATE_OF_PATH),
    )
    joined = keep.drop(DUPLICATE_OF_PATH, strict=False).join(
        paths, on=["split", "class", "duplicate_of"], how="left", maintain_order="left"
    )
    if joined.height != keep.height:
        raise ValueError("an image id appears twice in one class of the keep list")
    return joined.select(*KEEP_LIST_COLUMNS, DUPLICATE_OF_PATH)
