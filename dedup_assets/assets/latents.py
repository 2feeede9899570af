"""Asset: per-class latent tables, the 1024-value encoder output of every image, with the
blocking check `latents_valid` (finite values, one row per catalogued image) per class."""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import class_images
from dedup_assets.assets.class_batch import (
    ClassOutcome,
    class_asset,
    class_check,
    materialize_classes,
)
from dedup_assets.core.data.artifacts import (
    class_summary,
    file_digest,
    hold_class_images,
    latents_provenance,
    open_pixels,
    read_decoded_images,
    read_latents,
    read_provenance,
    write_latents,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.mapped import take_rows
from dedup_assets.core.data.splits import is_training_key
from dedup_assets.core.decision.integrity import latent_problems
from dedup_assets.core.model.autoencoder import (
    GROUP_IMAGES,
    LATENT_DIM,
    SMALL_BATCH,
    encode_images,
    load_state,
    reconstruction_errors,
)
from dedup_assets.core.model.new_image_errors import errors_key, update_new_image_errors
from dedup_assets.names import FULL_TAG, GPU_OP_TAGS
from resources import ComputeDevice, DedupStorage

ENCODE_CHUNK = 16_384
LATENTS_VALID = "latents_valid"


class ModelUnreadable(RuntimeError):
    """The stored autoencoder cannot be loaded."""


@class_asset(
    "class_latents",
    group_name="latents",
    kinds={"pytorch", "parquet"},
    op_tags=GPU_OP_TAGS,
    deps=[class_images, autoencoder],
    check=class_check(
        LATENTS_VALID,
        "class_latents",
        "Latents are finite (no NaN/inf) and there is one row per catalogued image.",
    ),
    description="One parquet table per class: image id, path and the 1024-value latent "
    "Code(x) of every decoded image of the class, stamped with the class's content digest "
    "and the model's digest. Only images not encoded by the same model before are encoded.",
)
def class_latents(context: dg.AssetExecutionContext, compute: ComputeDevice, storage: DedupStorage):
    hold_class_images(storage.layout(), list(context.partition_keys))  # small catalogs, one read
    encoder = _ClassEncoder(
        layout=storage.layout(),
        device=compute.torch_device(),
        amp_dtype=compute.amp_dtype(),
        full=context.run.tags.get(FULL_TAG) == "1",
        keys=list(context.partition_keys),
    )
    yield from materialize_classes(context, "class_latents", encoder.encode, check=LATENTS_VALID)


@dataclass
class _Plan:
    """One class's encoding to do: its catalog rows, latents reused from the same model
    (the rest zero), and the rows still to encode."""

    summary: dict
    images: Any  # pl.DataFrame of the class's decoded images
    latents: np.ndarray
    reused: np.ndarray
    todo: np.ndarray


@dataclass
class _ClassEncoder:
    """Encodes the classes of one run with one model, loaded once, on first need; `keys`,
    the run's classes in the order they are encoded, lets a small class be encoded together
    with the next small ones (GROUP_IMAGES)."""

    layout: OutputLayout
    device: str
    amp_dtype: Any
    full: bool
    keys: Sequence[str] = ()
    _model: Any = None
    # class -> its plan with its latents filled in, encoded with an earlier class
    _ahead: dict[str, _Plan] = field(default_factory=dict)
    _trained: Any = None  # the model's training images (ids), read once a run

    def __post_init__(self) -> None:
        self.model_digest = file_digest(self.layout.model)
        self._position = {k: at for at, k in enumerate(self.keys)}

    def model(self):
        if self._model is None:
            try:
                self._model = load_state(self.layout.model, self.device)
            except Exception as exc:  # noqa: BLE001 - any loader failure: the file is unusable
                raise ModelUnreadable(
                    f"the model {self.layout.model} cannot be loaded ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); retrain it "
                    "(dedup run --retrain)"
                ) from exc
        return self._model

    def plan(self, key: str) -> _Plan:
        """What encoding class `key` takes: the latents of the same model reused."""
        summary = class_summary(self.layout, key)
        if summary is None:
            raise ValueError(f"class {key!r} has no catalog yet: materialize class_images first")
        images = read_decoded_images(self.layout, key)
        reused = np.zeros(images.height, dtype=bool)
        latents = np.zeros((images.height, LATENT_DIM), dtype=np.float32)
        previous = self.layout.latents(key)
        same_model = (
            previous.exists()
            and (read_provenance(previous) or {}).get("model") == self.model_digest
        )
        if same_model and not self.full:
            table, old = read_latents(previous)
            hits = (
                images.select("image_id")
                .join(
                    table.select("image_id").with_row_index("old"),
                    on="image_id",
                    how="left",
                    maintain_order="left",
                )["old"]
                .to_numpy()
            )
            reused = ~np.isnan(hits.astype(np.float64))
            if reused.any():
                latents[reused] = old[hits[reused].astype(np.int64)]
        return _Plan(summary, images, latents, reused, np.flatnonzero(~reused))

    def _pixels(self, key: str, plan: _Plan, part: slice | None = None) -> np.ndarray:
        rows = plan.images["row"].to_numpy()[plan.todo]
        return take_rows(open_pixels(self.layout, key), rows if part is None else rows[part])

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        # bf16 where the device has it: measured on planted EuroSAT, the latents' cosine to
        # fp32's is 1 - 1e-5 and AP is unchanged (0.802/0.801).
        return encode_images(self.model(), pixels, device=self.device, amp_dtype=self.amp_dtype)

    def _with_next(self, key: str, plan: _Plan) -> int:
        """Encode the small class `key` with the next small classes of the run (up to
        GROUP_IMAGES images in all), keeping theirs for when they come; how many joined. A
        later class whose plan or pixels fail is left to fail on its own turn."""
        group = [(key, plan, self._pixels(key, plan))]
        total = len(plan.todo)
        at = self._position.get(key, len(self.keys) - 1) + 1
        for other in self.keys[at:]:
            try:
                # A class of SMALL_BATCH images or more ends the group unplanned.
                if (class_summary(self.layout, other) or {}).get("images", 0) >= SMALL_BATCH:
                    break
                later = self.plan(other)
                if not len(later.todo):
                    continue
                if len(later.todo) >= SMALL_BATCH or total + len(later.todo) > GROUP_IMAGES:
                    break
                group.append((other, later, self._pixels(other, later)))
            except Exception:  # noqa: BLE001 - reported when that class is encoded itself
                break
            total += len(later.todo)
        encoded = self._encode(np.concatenate([px for *_, px in group]))
        start = 0
        for k, p, _ in group:
            mine = encoded[start : start + len(p.todo)]
            start += len(p.todo)
            p.latents[p.todo] = mine
            if k != key:
                self._ahead[k] = p
        return len(group) - 1

    def _new_errors(self, key: str, images: Any, latents: np.ndarray) -> int:
        """Store the reconstruction errors of the class's images new since the model was
        trained (`core.model.new_image_errors`, read by its retraining rule); how many were
        computed now. None stored without a record of the training images (a model copied
        in: the rule reads no image then)."""
        path = self.layout.new_image_errors(key)
        if not is_training_key(key):  # evaluation images: never in the rule's sample
            path.unlink(missing_ok=True)
            return 0
        if self._trained is None:
            # A set, read once a run: a polars join against every trained id per class cost
            # about a millisecond a class (a second at 1,000 classes).
            known = self.layout.trained_images
            self._trained = (
                set(pl.read_parquet(known, columns=["image_id"], glob=False)["image_id"])
                if known.exists()
                else False
            )
        if self._trained is False:
            path.unlink(missing_ok=True)
            return 0
        ids = images["image_id"].to_list()
        new = [at for at, image in enumerate(ids) if image not in self._trained]

        def compute(missing: list[str]) -> np.ndarray:
            wanted = set(missing)
            at = np.array([k for k in new if ids[k] in wanted], dtype=np.int64)
            pixels = take_rows(open_pixels(self.layout, key), images["row"].to_numpy()[at])
            return reconstruction_errors(
                self.model(),
                pixels,
                device=self.device,
                amp_dtype=self.amp_dtype,
                latents=latents[at],
            )

        return update_new_image_errors(
            path, errors_key(self.model_digest, self.amp_dtype), [ids[k] for k in new], compute
        )

    def encode(self, key: str, log: Callable[[str], None]) -> ClassOutcome:
        """One class's latents: those of the same model reused, the rest encoded."""
        ahead = self._ahead.pop(key, None)  # planned and encoded with an earlier class
        plan = ahead if ahead is not None else self.plan(key)
        summary, images, latents, reused, todo = (
            plan.summary,
            plan.images,
            plan.latents,
            plan.reused,
            plan.todo,
        )
        start = time.perf_counter()
        how = ""
        if ahead is not None:
            how = " (with an earlier class, in one batch)"
        elif 0 < len(todo) < SMALL_BATCH:
            joined = self._with_next(key, plan)
            how = f" (with the next {joined} classes, in one batch)" if joined else ""
        else:
            # Streamed from the memory-mapped store, ENCODE_CHUNK images at a time: memory
            # stays flat whatever the class size (`take_rows` lets the chunk's pages go).
            for at in range(0, len(todo), ENCODE_CHUNK):
                part = slice(at, at + ENCODE_CHUNK)
                latents[todo[part]] = self._encode(self._pixels(key, plan, part))
                if len(todo) > ENCODE_CHUNK:
                    log(f"{key}: encoded {min(at + ENCODE_CHUNK, len(todo)):,} of {len(todo):,}")
        seconds = time.perf_counter() - start
        path = write_latents(
            self.layout.latents(key),
            images["image_id"].to_list(),
            images["path"].to_list(),
            latents,
            latents_provenance(summary["digest"], self.model_digest),
        )
        log(
            f"{key}: encoded {len(todo):,} new images in {seconds:.2f}s on {self.device}{how}, "
            f"kept {int(reused.sum()):,} latents of the same model"
        )
        try:
            errors = self._new_errors(key, images, latents)
        except Exception as exc:  # noqa: BLE001 - a cache: the rule reconstructs what it lacks
            self.layout.new_image_errors(key).unlink(missing_ok=True)
            errors = 0
            log(
                f"{key}: new images' reconstruction errors not stored ({type(exc).__name__}: {exc})"
            )
        norms = np.linalg.norm(latents, axis=1) if len(latents) else np.zeros(0)
        expected = images["image_id"].to_list()
        return ClassOutcome(
            metadata={
                "images": images.height,
                "encoded": len(todo),
                "reused": int(reused.sum()),
                "encode_seconds": round(seconds, 3),
                "new_image_errors_computed": errors,
                "mean_latent_norm": float(norms.mean()) if len(norms) else 0.0,
                "dead_dimensions_fraction": float((latents.max(axis=0) <= 0).mean())
                if len(latents)
                else 0.0,
                "model_digest": self.model_digest,
                "path": dg.MetadataValue.path(str(path)),
            },
            # The check reads the stored table as the later stages of this process read it
            # (what the writer handed over for the file as written, `write_latents`).
            problems=_stored_problems(self.layout, key, expected),
            check_metadata={"catalogued": len(expected)},
        )


def _stored_problems(layout, key: str, expected: list[str]) -> list[str]:
    """The stored latents' problems (as `read_latents` gives them): non-finite values, rows
    not those of the catalog."""
    table, latents = read_latents(layout.latents(key))
    return latent_problems(table["image_id"].to_list(), latents, expected)
