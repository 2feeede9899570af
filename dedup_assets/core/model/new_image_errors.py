"""The reconstruction errors of images new since the model was trained, kept per class.

The retraining rule on new images (`core.model.retraining`) compares their mean
reconstruction error with the training error. Reconstructing a sample of them in the
command's process after every update cost 0.26 s for 270 new EuroSAT images on one core,
and grew with each update until the model was retrained (every image new since training
is in the sample, up to 2,048). Each class's run computes the error of its images that are
new since training once, when it encodes them (in parallel with the other classes), and
stores it here with the model's digest; the rule reads the sample's errors back and
reconstructs only those it does not find.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from dedup_assets.core.data.atomic_io import save_npz


def errors_key(model_digest: str, amp_dtype: object = None) -> str:
    """What stored errors are made with and read for: the model and the precision (an
    error made in bf16 is not reused by a run in fp32)."""
    return f"{model_digest}/{str(amp_dtype or 'fp32').removeprefix('torch.')}"


def read_new_image_errors(path: Path, model_digest: str) -> dict[str, float]:
    """Image id -> stored error, for errors made with `model_digest` (an `errors_key`; none
    for a file of another model or precision, a missing or an unreadable one)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["model"]) != model_digest:
                return {}
            return dict(zip(z["image_ids"].tolist(), z["errors"].tolist(), strict=True))
    except Exception:  # noqa: BLE001 - a cache: whatever is wrong, the rule reconstructs
        return {}


def update_new_image_errors(
    path: Path,
    model_digest: str,
    new_ids: list[str],
    compute: Callable[[list[str]], np.ndarray],
) -> int:
    """Store the errors of `new_ids` (a class's images new since training) at `path`: those
    already stored for the same model kept, `compute` called for the others (their ids, in
    order). No file when nothing is new. Returns how many were computed now."""
    if not new_ids:
        path.unlink(missing_ok=True)
        return 0
    known = read_new_image_errors(path, model_digest)
    missing = [i for i in new_ids if i not in known]
    if missing:
        known |= dict(zip(missing, np.asarray(compute(missing), dtype=np.float64), strict=True))
    save_npz(
        path,
        model=np.array(model_digest),
        image_ids=np.asarray(new_ids, dtype=str),
        errors=np.asarray([known[i] for i in new_ids], dtype=np.float32),
    )
    return len(missing)


def mean_error(
    ids: list[str],
    stored: Iterable[dict[str, float]],
    compute: Callable[[list[str]], np.ndarray],
) -> float:
    """The mean error of the images `ids`: stored errors where found, `compute` (called
    once, with the missing ids in order) for the rest."""
    found: dict[str, float] = {}
    for errors in stored:
        found |= errors
    missing = [i for i in ids if i not in found]
    computed = (
        dict(zip(missing, np.asarray(compute(missing), dtype=np.float64), strict=True))
        if missing
        else {}
    )
    values = np.array([found[i] if i in found else computed[i] for i in ids], dtype=np.float64)
    return float(values.mean()) if len(values) else float("nan")
