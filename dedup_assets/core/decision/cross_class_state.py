"""What the cross-class join leaves for the next run: the shared space, every image's
vector in it and its nearest image of another class, by image id.

The space is fitted once per model (and seed, and join): a run after new images keeps it,
so the vectors of the images it had stay exactly what they were, and the join is updated
for what changed (`cross_class.update_nearest_other`) instead of computed again, until the
images outgrow the sample the space was fitted on (`space_outgrown`: a space fitted on the
30 images of a first run is no space for 10,000). The vectors are a `.npy` file (N x 128
float32: 512 MB at a million images), named by a token the state file records, written
before it: an interrupted write leaves the previous state whole. Saves and loads take a
lock beside the state, and a loaded state reads its vectors through the file it opened, so
threshold partitions run at once (a backfill from the UI) neither read a state whose
vectors are gone nor fail when another removes the file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no lock (concurrent saves may cost a later run a full join)
    fcntl = None

from dedup_assets.core.data.atomic_io import atomic_path, savez
from dedup_assets.core.decision.cross_class import SAMPLE_FOR_AXES, NearestOther, SharedSpace

STATE_NAME = ".join_state.npz"
LOCK_NAME = ".join_state.lock"
VECTORS_GLOB = ".join_vectors-*.npy"
SPACE_GROWTH = 1.25
"""A kept space serves until the sample a fit would take now is this many times the one it
was fitted on (as the leakage index's REFIT_GROWTH)."""


ROWS_READ = 65_536  # vector rows read at a time from a stored state


@dataclass(frozen=True)
class JoinState:
    """One run's join: `key` (what the space and the join were made with), the space and how
    many images it was fitted on, and per image (in the run's row order) its id, its vector
    (in the vectors file, open in `vectors`, read by `vectors_at`) and its nearest
    other-class image (`nearest.partner` a row of this state). Close it when done."""

    key: str
    space: SharedSpace
    fitted_on: int
    image_ids: np.ndarray
    nearest: NearestOther
    vectors: BinaryIO
    offset: int  # of the first row in the file
    width: int

    def vectors_at(self, rows: np.ndarray, out: np.ndarray, to: np.ndarray) -> None:
        """out[to] = the stored vectors of `rows`, reading the file ROWS_READ rows at a time
        (never the whole of it at once, nor mapped: its pages would count as this
        process's memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        n = len(self.image_ids)
        bounds = np.searchsorted(sorted_rows, np.arange(0, n + ROWS_READ, ROWS_READ))
        for k in range(len(bounds) - 1):
            a, b = bounds[k], bounds[k + 1]
            if a == b:
                continue
            first, last = int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1
            chunk = np.empty((last - first, self.width), dtype=np.float32)
            self.vectors.seek(self.offset + first * self.width * 4)
            if self.vectors.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                raise OSError(f"the cross-class join's stored vectors end early: {self.vectors}")
            out[to[order[a:b]]] = chunk[sorted_rows[a:b] - first]

    def close(self) -> None:
        self.vectors.close()


def space_outgrown(fitted_on: int, images: int) -> bool:
    """Whether a space fitted on `fitted_on` images is too small a basis for `images` now:
    a fit now would sample more than SPACE_GROWTH times as many."""
    return min(images, SAMPLE_FOR_AXES) > SPACE_GROWTH * max(fitted_on, 1)


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _vectors_path(folder: Path, token: str) -> Path:
    return folder / f".join_vectors-{token}.npy"


def load_join_state(folder: Path, key: str) -> JoinState | None:
    """The state stored in `folder` when it was made under `key`, its vectors file open;
    None when absent, made otherwise or unreadable."""
    if not (folder / STATE_NAME).is_file():
        return None
    try:
        with _locked(folder, exclusive=False):
            with np.load(folder / STATE_NAME) as f:
                if str(f["key"]) != key:
                    return None
                axes = f["axes"] if bool(f["has_axes"]) else None
                space = SharedSpace(f["mean"], axes)
                ids, partner, similarity = f["image_ids"], f["partner"], f["similarity"]
                token, fitted_on = str(f["token"]), int(f["fitted_on"])
            path = _vectors_path(folder, token)
            mapped = np.load(path, mmap_mode="r")  # its header only: no page read
            shape, dtype, offset = mapped.shape, mapped.dtype, mapped.offset
            del mapped
            handle = open(path, "rb")  # noqa: SIM115 (closed by JoinState.close)
    except (OSError, KeyError, ValueError):
        return None
    if len(shape) != 2 or shape[0] != len(ids) or len(partner) != len(ids) or dtype != np.float32:
        handle.close()
        return None
    return JoinState(
        key, space, fitted_on, ids, NearestOther(partner, similarity), handle, offset, shape[1]
    )


def save_join_state(
    folder: Path,
    key: str,
    space: SharedSpace,
    image_ids: np.ndarray,
    vectors: np.ndarray,
    nearest: NearestOther,
    fitted_on: int,
) -> None:
    """Store a run's join in `folder` (the vectors first, then the state naming them), and
    remove the vectors of earlier states (a state loaded elsewhere still reads its own
    through the file it holds open)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    path = _vectors_path(folder, token)
    axes = space.axes
    with _locked(folder, exclusive=True):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        with atomic_path(folder / STATE_NAME) as tmp, open(tmp, "wb") as fh:
            savez(
                fh,
                key=np.array(key),
                token=np.array(token),
                fitted_on=np.array(int(fitted_on)),
                mean=space.mean,
                has_axes=np.array(axes is not None),
                axes=axes if axes is not None else np.zeros((0, 0), np.float32),
                image_ids=np.asarray(image_ids, dtype=np.bytes_),
                partner=nearest.partner,
                similarity=nearest.similarity,
            )
        for old in folder.glob(VECTORS_GLOB):
            if old != path:
                old.unlink(missing_ok=True)


def previous_rows(image_ids: np.ndarray, previous_ids: np.ndarray) -> np.ndarray:
    """For each id of `image_ids`, its row in `previous_ids`, or -1 when new."""
    now = np.asarray(image_ids, dtype=np.bytes_)
    before = np.asarray(previous_ids, dtype=np.bytes_)
    if not len(before) or not len(now):
        return np.full(len(now), -1, dtype=np.int64)
    order = np.argsort(before, kind="stable")
    at = np.minimum(np.searchsorted(before[order], now), len(before) - 1)
    found = before[order][at] == now
    return np.where(found, order[at], -1).astype(np.int64)
