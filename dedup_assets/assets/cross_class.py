"""Asset: near-identical images filed under different classes (likely label errors), per
threshold, with a WARN check that lists them. The join is `core.decision.cross_class`."""

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.latents import class_latents
from dedup_assets.core.data.artifacts import (
    LATENT_GROUP_ROWS,
    CurrentInputs,
    catalog_images,
    class_latent_groups,
    class_names,
    digest,
    read_catalog,
    read_class_latent_ids,
    read_latents,
    write_table,
)
from dedup_assets.core.data.atomic_io import atomic_path, savez
from dedup_assets.core.data.splits import key_split
from dedup_assets.core.data.thresholds import budget_of
from dedup_assets.core.decision.ann_join import resolve_join
from dedup_assets.core.decision.calibration import (
    MAX_MIRRORS,
    MAX_QUERIES,
    budget_thresholds,
    encode_mirrors,
    latents_rows_pixels,
    mirror_latents,
    mirror_null,
    null_block_rows,
    proportional_mirrors,
)
from dedup_assets.core.decision.cross_class import (
    APPROXIMATE_JOIN,
    DEFAULT_COMPONENTS,
    SAMPLE_FOR_AXES,
    NearestOther,
    SharedSpace,
    cross_class_pairs,
    join_threads,
    nearest_other_class,
    stratified_sample,
    update_nearest_other,
    update_share,
)
from dedup_assets.core.decision.cross_class_state import (
    load_join_state,
    previous_rows,
    save_join_state,
    space_outgrown,
)
from dedup_assets.core.decision.overrides import without_pairs
from dedup_assets.core.model.autoencoder import load_state
from dedup_assets.names import FULL_TAG, HOST_TAG, PID_TAG
from dedup_assets.ui import md_table
from resources import ComputeDevice, DedupSettings, DedupStorage

SHOWN = 20  # pairs listed in the UI; the parquet holds them all

SCHEMA = {
    "class_a": pl.String,
    "path_a": pl.String,
    "class_b": pl.String,
    "path_b": pl.String,
    "similarity": pl.Float32,
    "match": pl.String,
}


def build_cross_class_asset(
    thresholds_def: dg.StaticPartitionsDefinition,
) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    """cross_class_duplicates and its warning check, partitioned by threshold."""
    any_budget = any(budget_of(t) is not None for t in thresholds_def.get_partition_keys())

    @dg.asset(
        group_name="deduplication",
        kinds={"numpy", "parquet"},
        partitions_def=thresholds_def,
        deps=[
            image_catalog,
            autoencoder,  # the model of every class's latents (see keep_list's deps)
            dg.AssetDep(class_latents, partition_mapping=dg.AllPartitionMapping()),
        ],
        description="Pairs of images in different classes with cosine > T in one space "
        "shared by all classes (centred latents on their leading principal axes), exact "
        "copies always: `cross_class/<T>.parquet` (class_a, path_a, class_b, path_b, "
        "similarity, match). Near-identical images under two labels are likely label errors. "
        "The space is kept while the model is, and a later run updates the stored join for "
        "the images added or deleted (metadata `nearest`).",
    )
    def cross_class_duplicates(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        compute: ComputeDevice,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = storage.current_inputs(settings)  # with the pairs marked not a duplicate
        names = class_names(layout)
        start = time.perf_counter()
        current.require_every_class(layout.latents, current.latents, "latents", "class_latents")
        keys = sorted(current.class_digests)
        # A class is its name: `train/cats` and `test/cats` are one class (a copy across
        # splits is the leakage check's, `assets/leakage.py`, and pairs across splits are
        # left out below).
        label_of: dict[str, int] = {}
        ids, sizes = read_class_latent_ids(layout, keys)
        labels = [
            np.full(n, label_of.setdefault(key_split(key)[1], len(label_of)), dtype=np.int32)
            for key, n in zip(keys, sizes, strict=True)
        ]
        images = ids.with_columns(
            pl.Series("class", np.repeat([names[k] for k in keys], sizes), pl.String),
            pl.Series("split", np.repeat([key_split(k)[0] for k in keys], sizes), pl.String),
        )
        hashes = _pixel_hashes(layout, images)
        labels = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        join = resolve_join(settings.join, images.height, settings.ann_min_class_size)
        budget = budget_of(threshold)
        # Every threshold partition needs the same nearest-other-class join: the first one
        # computes it, the others read it.
        full = context.run.tags.get(FULL_TAG) == "1"
        cache_key = _nearest_key(
            current.cross_class("any"), settings, join, context.run.tags, context.run.run_id
        )
        # The budget's null (each image's similarity to its most similar mirror of another
        # image, `core.decision.calibration.mirror_null`) is the same for every budget:
        # cached beside the nearest pairs, keyed by the same inputs and by how the null is
        # sampled.
        null_key = digest({"nearest": cache_key, "null": [2, MAX_MIRRORS, MAX_QUERIES]})
        nearest = _cached(_nearest_path(layout), cache_key)
        # The null is computed with the nearest pairs when any configured threshold is a
        # budget, so the shared vectors are built once per run, not once per use.
        wants_null = budget is not None or (nearest is None and any_budget)
        null = _cached(_null_path(layout), null_key) if wants_null else None
        how = "stored"
        if nearest is None or (wants_null and null is None):
            joined = _Join(
                layout,
                keys,
                sizes,
                _row_ids(keys, sizes, ids),
                labels,
                settings,
                join,
                state_key=_state_key(current, settings, join),
                full=full,
            )
            space, vectors = joined.vectors(context.log.info)
            if nearest is None:
                found_nearest, how = joined.nearest(space, vectors)
                nearest = {
                    "partner": found_nearest.partner,
                    "similarity": found_nearest.similarity,
                }
                _store(_nearest_path(layout), cache_key, nearest)
            if wants_null and null is None:
                null = {
                    "null": _mirror_null(
                        layout,
                        current,
                        keys,
                        sizes,
                        space,
                        vectors,
                        settings.block_size,
                        compute,
                    )
                }
                _store(_null_path(layout), null_key, null)
            del vectors
        cosine = (
            float(threshold) if budget is None else budget_thresholds(null["null"], [budget])[0]
        )
        found = cross_class_pairs(
            None,  # `nearest` is given
            labels,
            [cosine],
            pixel_hashes=hashes,
            nearest=NearestOther(nearest["partner"], nearest["similarity"]),
        )[0]
        seconds = time.perf_counter() - start
        side = images.select("class", "path", "split").with_row_index("at")
        pairs = (
            pl.DataFrame(
                {
                    "i": found.i.astype(np.uint32),
                    "j": found.j.astype(np.uint32),
                    "similarity": found.similarity,
                    "match": np.where(found.exact, "exact", "near"),
                }
            )
            .join(
                side.rename({"class": "class_a", "path": "path_a", "split": "split_a"}),
                left_on="i",
                right_on="at",
            )
            .join(
                side.rename({"class": "class_b", "path": "path_b", "split": "split_b"}),
                left_on="j",
                right_on="at",
            )
            .filter(pl.col("split_a") == pl.col("split_b"))
            .select(list(SCHEMA))
            .cast(SCHEMA)
            .sort("similarity", "path_a", descending=[True, False])
        )
        pairs = without_pairs(pairs, current.not_duplicate)  # the user said: not duplicates
        write_table(pairs, layout.cross_class(threshold), current.cross_class(threshold))
        context.log.info(
            f"T={threshold}: {pairs.height:,} cross-class pairs among {images.height:,} images "
            f"({seconds:.1f}s; nearest other-class images {how})"
        )
        return dg.MaterializeResult(
            metadata={
                "pairs": pairs.height,
                "cosine": cosine,
                "exact_pairs": int(found.exact.sum()),
                "images": images.height,
                "join": join,
                "nearest": how,
                "seconds": round(seconds, 2),
                "pairs_shown": dg.MetadataValue.md(_pairs_table(pairs)),
                "path": dg.MetadataValue.path(str(layout.cross_class(threshold))),
            }
        )

    @dg.asset_check(
        asset=cross_class_duplicates,
        partitions_def=thresholds_def,
        description="WARN when near-identical images sit in different classes: each is "
        "likely a label error (the pairs are in `cross_class/<T>.parquet`). A warning, not a "
        "gate: the keep lists are per class and stay valid.",
    )
    def no_cross_class_duplicates(
        context: dg.AssetCheckExecutionContext, storage: DedupStorage
    ) -> dg.AssetCheckResult:
        path = storage.layout().cross_class(context.partition_key)
        pairs = pl.read_parquet(path, glob=False)
        outcome = (
            f"{pairs.height} {'pair' if pairs.height == 1 else 'pairs'} of near-identical "
            "images in different classes, likely "
            f"label errors: {path}"
            if pairs.height
            else "no near-identical images in different classes"
        )
        return dg.AssetCheckResult(
            passed=pairs.height == 0,
            severity=dg.AssetCheckSeverity.WARN,
            description=outcome,
            metadata={
                "outcome": outcome,
                "pairs": pairs.height,
                "first_pairs": dg.MetadataValue.md(_pairs_table(pairs)),
            },
        )

    return cross_class_duplicates, no_cross_class_duplicates


def _nearest_key(classes: dict, settings, join: str, tags: Mapping[str, str], run_id: str) -> str:
    """What the stored nearest pairs (and the null beside them) are keyed by: every class's
    latents and the settings; under `--full` also the command that runs (its host and pid,
    which its runs carry), so that no result stored before it is read (a retrained model may
    give the same latents bit for bit) but its other threshold partitions read its own."""
    computed_from = {**classes, "seed": settings.seed, "join": join, "nprobe": settings.ann_nprobe}
    if join == "ann":  # a result of an earlier approximate join (top-32 of an IVF index)
        computed_from["approximate"] = APPROXIMATE_JOIN  # is not this one's
    if tags.get(FULL_TAG) == "1":
        computed_from["full"] = [tags.get(HOST_TAG), tags[PID_TAG]] if PID_TAG in tags else run_id
    return digest(computed_from)


HELD_LATENT_ROWS = 4 * LATENT_GROUP_ROWS
JOIN_STATE_VERSION = 1
UPDATE_AT_MOST = 0.5  # of a full join's products: more, and the join is computed again


def _state_key(current: CurrentInputs, settings, join: str) -> str:
    """What a stored join state must have been made with to be updated: the model (the
    latents of an image it kept are then the same bits), the seed and the space's shape,
    and the join."""
    return digest(
        {
            "version": JOIN_STATE_VERSION,
            "model": current.model_digest,
            "seed": settings.seed,
            "space": [DEFAULT_COMPONENTS, SAMPLE_FOR_AXES],
            "join": join,
            "nprobe": settings.ann_nprobe,
            "approximate": APPROXIMATE_JOIN if join == "ann" else None,
        }
    )


def _row_ids(keys: list[str], sizes: list[int], ids: pl.DataFrame) -> np.ndarray:
    """Each row's identity across runs: its class (hashed, fixed width) and its image id
    (the content of its file within the class)."""
    tags = [hashlib.sha1(k.encode()).hexdigest()[:8] for k in keys]
    both = pl.Series(np.repeat(np.array(tags, dtype=object), sizes), dtype=pl.String)
    return (both + ids["image_id"]).to_numpy().astype(np.bytes_)


class _Join:
    """The shared space, every image's vector in it and each one's nearest image of another
    class: from the stored state of an earlier run with the same model where there is one
    (`core.decision.cross_class_state`: its space kept, its vectors read, only the new
    images' latents read and projected, the join updated when that is less work), else
    computed from every class's latents."""

    def __init__(self, layout, keys, sizes, row_ids, labels, settings, join, *, state_key, full):
        self.layout, self.keys, self.sizes = layout, keys, sizes
        self.row_ids, self.labels, self.settings, self.join = row_ids, labels, settings, join
        self.state_key = state_key
        self.state = None if full else load_join_state(layout.cross_class_dir, state_key)
        self.refit = ""  # why a stored space was not kept, if it was not
        if self.state is not None and space_outgrown(self.state.fitted_on, len(row_ids)):
            self.refit = (
                f"the space fitted again: {len(row_ids):,} images against the "
                f"{self.state.fitted_on:,} it was fitted on"
            )
            self.state.close()
            self.state = None
        self.fitted_on = 0
        self.before: np.ndarray | None = None

    def vectors(self, log: Callable[[str], None]) -> tuple[SharedSpace | None, np.ndarray]:
        state = self.state
        if state is None:
            space, vectors, self.fitted_on = _shared_vectors(
                self.layout, self.keys, self.sizes, self.settings.seed
            )
            return space, vectors
        self.fitted_on = state.fitted_on
        try:
            self.before = previous_rows(self.row_ids, state.image_ids)
            vectors = np.empty((len(self.row_ids), state.width), dtype=np.float32)
            kept = np.flatnonzero(self.before >= 0)
            state.vectors_at(self.before[kept], vectors, kept)
        finally:
            state.close()
        new = np.flatnonzero(self.before < 0)
        offsets = np.cumsum([0, *self.sizes])
        first = np.searchsorted(offsets, new, side="right") - 1  # each new row's class
        for c in np.unique(first):
            rows = new[first == c]
            latents = read_latents(self.layout.latents(self.keys[c]))[1]
            vectors[rows] = state.space.project(latents[rows - offsets[c]])
        log(
            f"shared space kept from the last run with this model: {len(kept):,} vectors "
            f"read, {len(new):,} new images projected"
        )
        return state.space, vectors

    def nearest(self, space: SharedSpace | None, vectors: np.ndarray) -> tuple[NearestOther, str]:
        """Each image's nearest of another class, and how it was found."""
        state, before = self.state, self.before
        if state is not None and before is not None:
            share = update_share(before, state.nearest, self.join, self.settings.ann_nprobe)
            if share <= UPDATE_AT_MOST:
                found = update_nearest_other(
                    vectors, self.labels, before, state.nearest, block=self.settings.block_size
                )
                how = f"updated ({share:.1%} of a full join's products)"
            else:
                found, how = self._computed(vectors), "computed (too much changed to update)"
        else:
            found = self._computed(vectors)
            how = f"computed ({self.refit})" if self.refit else "computed"
        if space is not None:
            save_join_state(
                self.layout.cross_class_dir,
                self.state_key,
                space,
                self.row_ids,
                vectors,
                found,
                self.fitted_on,
            )
        return found, how

    def _computed(self, vectors: np.ndarray) -> NearestOther:
        return nearest_other_class(
            vectors,
            self.labels,
            block=self.settings.block_size,
            join=self.join,
            nprobe=self.settings.ann_nprobe,
        )


def _shared_vectors(layout, keys: list[str], sizes: list[int], seed: int):
    """The shared space, every image's unit vector in it and how many images it was fitted
    on, in two passes over the
    latents one class at a time: a sample for the axes, then every image projected (N x
    128 in memory, never N x 1024)."""
    picks = stratified_sample(sizes, seed=seed)
    # Read once and held where they fit in 256 MB (as the stored reads held them one class
    # at a time before), else a group of classes at a time, twice.
    held = None
    if sum(sizes) <= HELD_LATENT_ROWS:
        held = [m for group in class_latent_groups(layout, keys, sizes) for m in group]

    def each() -> Iterator[np.ndarray]:
        if held is not None:
            return iter(held)
        return (m for group in class_latent_groups(layout, keys, sizes) for m in group)

    sample = [m[at] for m, at in zip(each(), picks, strict=True)]
    sample = np.concatenate(sample) if sample else np.zeros((0, 1), np.float32)
    if not len(sample):
        return None, np.zeros((0, 1), np.float32), 0
    space, fitted_on = SharedSpace.fit(sample, seed=seed), len(sample)
    del sample
    return space, np.concatenate([space.project(m) for m in each()]), fitted_on


def _nearest_path(layout):
    return layout.cross_class_dir / ".nearest_other_class.npz"


def _null_path(layout):
    return layout.cross_class_dir / ".mirror_null.npz"


def _cached(path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored at path under `key`, or None when absent, stale or unreadable."""
    try:
        with np.load(path) as f:
            if str(f["key"]) == key:
                return {name: f[name] for name in f.files if name != "key"}
    except (OSError, KeyError, ValueError):
        pass
    return None


def _store(path, key: str, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        savez(fh, key=np.array(key), **arrays)


def _mirror_null(
    layout, current, keys: list[str], sizes: list[int], space, vectors, block: int, compute
) -> np.ndarray:
    """The nearest-unrelated similarities of the whole set in the shared space
    (`core.decision.calibration.mirror_null`, the classes' mirrors as one set of decoys); the
    mirrors' latents are the ones the class calibrations stored, encoded here only when
    missing, on `compute`'s device and precision as the class calibrations encode them (the
    stored mirrors are keyed, like the latents, by the class's content and the model)."""
    if space is None or len(vectors) < 2:
        return np.zeros(0, np.float32)
    model = []  # loaded once, only when some class's mirrors must be encoded

    def encoder(key: str):
        def encode(mirror_at: np.ndarray) -> np.ndarray:
            if not model:
                model.append(load_state(layout.model, compute.torch_device()))
            return encode_mirrors(
                model[0],
                latents_rows_pixels(layout, key, mirror_at),
                device=compute.torch_device(),
                amp_dtype=compute.amp_dtype(),
            )

        return encode

    stored = [
        mirror_latents(layout, key, current.latents(key), size, encoder(key))
        for key, size in zip(keys, sizes, strict=True)
    ]
    if all(len(rows) == size for (rows, _), size in zip(stored, sizes, strict=True)):
        decoys, at = [m for _, m in stored], [r for r, _ in stored]
    else:  # some classes mirror a sample: the same share of every class's mirrors
        picks = proportional_mirrors(sizes, [len(r) for r, _ in stored])
        decoys = [m[p] for (_, m), p in zip(stored, picks, strict=True)]
        at = [r[p] for (r, _), p in zip(stored, picks, strict=True)]
    offsets = np.cumsum([0, *sizes[:-1]])
    projected = np.concatenate([space.project(d) for d in decoys])
    # As the join, the blocks also on idle cores: at 135,000 images the null was one core's
    # work of several seconds while the other sat idle (the other worker's reports done).
    widest = max(len(vectors), len(projected))  # a block's columns, at most
    return mirror_null(
        vectors,
        projected,
        np.concatenate([o + r for o, r in zip(offsets, at, strict=True)]),
        block,
        threads=join_threads(None, widest, null_block_rows(widest, block)),
    )


def _pixel_hashes(layout, images: pl.DataFrame) -> np.ndarray:
    catalog = catalog_images(read_catalog(layout)).select("image_id", "pixel_hash")
    joined = images.join(catalog, on="image_id", how="left", maintain_order="left")
    return joined["pixel_hash"].fill_null("").to_numpy().astype(str)


def _pairs_table(pairs: pl.DataFrame) -> str:
    if pairs.height == 0:
        return "none"
    return md_table(
        ["class", "image", "class", "image", "similarity", "match"],
        pairs.head(SHOWN).rows(),
    )
