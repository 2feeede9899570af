"""Shared helpers: the real `dedup` command in a subprocess, tree digests, and a class
catalog table to write as test data."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEDUP = Path(sys.executable).with_name("dedup")

# Under pytest-xdist each worker is one process per core: one thread each (and in the
# `dedup` processes they start) instead of every worker's torch taking every core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def run_dedup(
    *args: str, timeout: float = 600, env_extra: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run the installed `dedup` entry point as a user would; text output captured (no
    DEDUP_ variable of this process's environment, only those of `env_extra`)."""
    env = dict(os.environ)
    env.pop("DAGSTER_HOME", None)
    for name in list(env):
        if name.startswith("DEDUP_"):
            env.pop(name)
    env.update(env_extra or {})
    return subprocess.run(
        [str(DEDUP), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def run_python(code: str, timeout: float = 300) -> str:
    """`code` run by a fresh interpreter (nothing this test process has imported carries
    over: what a module imports is seen whole); its standard output. A failure fails the
    test with its standard error."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def smooth_textures(n: int, rng):
    """n unrelated 64x64 RGB images with structure at low frequencies (random coarse
    colour fields, bicubic-upscaled): stand-ins for photos in the leakage tests."""
    import numpy as np
    from PIL import Image

    out = np.empty((n, 64, 64, 3), np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, (rng.integers(3, 7), rng.integers(3, 7), 3), dtype=np.uint8)
        out[i] = np.asarray(Image.fromarray(coarse).resize((64, 64), Image.BICUBIC))
    return out


def tree_digest(root: Path) -> str:
    """Digest of every path (as raw bytes) and file content under root; links not followed."""
    h = hashlib.sha1()
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        for name in sorted(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        ):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root_b) + b"\0")
            if os.path.islink(path):
                h.update(b"link:" + os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    h.update(hashlib.sha1(fh.read()).digest())
    return h.hexdigest()


def leftovers(root: Path) -> list[str]:
    """Temporary files and half-swapped trees an interrupted write would leave."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")):
                found.append(os.path.join(dirpath, name))
    return found


@pytest.fixture
def dedup():
    return run_dedup


@pytest.fixture(autouse=True)
def _dagster_home_as_it_was():
    """A test that runs the pipeline in this process sets $DAGSTER_HOME to its output's
    instance (`layout.resolve_dagster_home`, as `dedup run` does for its own process); the
    next test's `dedup` subprocesses must not inherit it and write to that instance."""
    before = os.environ.get("DAGSTER_HOME")
    yield
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before


# The files whose tests take longest (each 40 s or more of one worker in a fresh clone,
# 2026-12-03), run first: two workers take files in collection order (`--dist loadfile`),
# so slow files collected last (the alphabet put test_splits_pipeline, test_trust and
# test_ui_runs there) left one worker running them alone at the end.
SLOW_FIRST = (
    "test_many_classes.py",
    "test_fast_path.py",
    "test_leakage_pipeline.py",
    "test_interrupt.py",
    "test_distributed.py",
    "test_cli_contract.py",
    "test_trust.py",
    "test_recovery.py",
    "test_splits_pipeline.py",
    "test_review_roundtrip.py",
    "test_demo_and_sensor.py",
    "test_overrides_end_to_end.py",
    "test_ui_runs.py",
)


def pytest_collection_modifyitems(config, items):
    """Slow files first (SLOW_FIRST), each file's tests in their own order."""
    rank = {name: at for at, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def catalog_frame(
    key: str,
    status: list[str],
    row: list[int | None],
    *,
    image_id: str = "{key}-{i:04d}",
    width: int = 32,
):
    """A class catalog (`CATALOG_SCHEMA`) of len(status) files `key/<i>.png`: the given
    status (a quarantined file's reason "corrupt") and pixel-store rows, the rest filler."""
    import polars as pl

    from dedup_assets.core.data.class_catalog import CATALOG_SCHEMA

    n = len(status)
    return pl.DataFrame(
        {
            "image_id": [image_id.format(key=key, i=i) for i in range(n)],
            "split": ["all"] * n,
            "class": [key] * n,
            "class_key": [key] * n,
            "path": [f"{key}/{i}.png" for i in range(n)],
            "raw_path": [f"{key}/{i}.png".encode() for i in range(n)],
            "size_bytes": list(range(n)),
            "mtime_ns": list(range(n)),
            "width": [width] * n,
            "height": [width] * n,
            "mode": ["RGB"] * n,
            "content_hash": [f"c{i}" for i in range(n)],
            "pixel_hash": [f"p{i}" for i in range(n)],
            "status": status,
            "reason": [None if s == "ok" else "corrupt" for s in status],
            "note": [None] * n,
            "row": row,
        },
        schema=CATALOG_SCHEMA,
    )
