"""What the cross-class join leaves for the next run: the shared space, every image's
vector in it and its nearest image of another class, by image id.

The space is fitted once per model (and seed, and join): a run after new images keeps it,
so the vectors of the images it had stay exactly what they were, and the join is updated
for what changed (`cross_class.update_nearest_other`) instead of computed again. The
vectors are a memory-mapped `.npy` file (N x 128 float32: 512 MB at a million images),
named by a token the state file records, written before it: an interrupted write leaves
the previous state whole.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup_assets.core.data.atomic_io import atomic_path
from dedup_assets.core.decision.cross_class import NearestOther, SharedSpace

STATE_NAME = ".join_state.npz"
VECTORS_GLOB = ".join_vectors-*.npy"


ROWS_READ = 65_536  # vector rows read at a time from a stored state


@dataclass(frozen=True)
class JoinState:
    """One run's join: `key` (what the space and the join were made with), the space, and
    per image (in the run's row order) its id, its vector (in the file `vectors_path`, read
    by `vectors_at`) and its nearest other-class image (`nearest.partner` a row of this
    state)."""

    key: str
    space: SharedSpace
    image_ids: np.ndarray
    nearest: NearestOther
    vectors_path: Path
    width: int

    def vectors_at(self, rows: np.ndarray, out: np.ndarray, to: np.ndarray) -> None:
        """out[to] = the stored vectors of `rows`, reading the file ROWS_READ rows at a time
        (never the whole of it at once, nor mapped: its pages would count as this
        process's memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        mapped = np.load(self.vectors_path, mmap_mode="r")  # its header only: no page read
        shape, dtype, start = mapped.shape, mapped.dtype, mapped.offset
        del mapped
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        bounds = np.searchsorted(sorted_rows, np.arange(0, shape[0] + ROWS_READ, ROWS_READ))
        for k in range(len(bounds) - 1):
            a, b = bounds[k], bounds[k + 1]
            if a == b:
                continue
            first, last = int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1
            chunk = np.fromfile(
                self.vectors_path,
                dtype=dtype,
                count=(last - first) * shape[1],
                offset=start + first * shape[1] * dtype.itemsize,
            ).reshape(last - first, shape[1])
            out[to[order[a:b]]] = chunk[sorted_rows[a:b] - first]


def _vectors_path(folder: Path, token: str) -> Path:
    return folder / f".join_vectors-{token}.npy"


def load_join_state(folder: Path, key: str) -> JoinState | None:
    """The state stored in `folder` when it was made under `key`; None when absent, made
    otherwise or unreadable."""
    try:
        with np.load(folder / STATE_NAME) as f:
            if str(f["key"]) != key:
                return None
            axes = f["axes"] if bool(f["has_axes"]) else None
            space = SharedSpace(f["mean"], axes)
            ids, partner, similarity = f["image_ids"], f["partner"], f["similarity"]
            token = str(f["token"])
        path = _vectors_path(folder, token)
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, KeyError, ValueError):
        return None
    if len(shape) != 2 or shape[0] != len(ids) or len(partner) != len(ids):
        return None
    return JoinState(key, space, ids, NearestOther(partner, similarity), path, shape[1])


def save_join_state(
    folder: Path,
    key: str,
    space: SharedSpace,
    image_ids: np.ndarray,
    vectors: np.ndarray,
    nearest: NearestOther,
) -> None:
    """Store a run's join in `folder` (the vectors first, then the state naming them), and
    remove the vectors of earlier states."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    path = _vectors_path(folder, token)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    axes = space.axes
    with atomic_path(folder / STATE_NAME) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            key=np.array(key),
            token=np.array(token),
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
