"""How `dedup run` starts its pool of local processes: forks of a server that imported the
pipeline once, with the workers' thread settings, started while the command's own imports
run when its listing says the pool will be used (`engines.worker_context`,
`cli._prestart_workers`). Each case runs in its own interpreter: the server is one per
process."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup_assets.engines import threads_per_process

pytestmark = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods() or not Path("/proc").is_dir(),
    reason="the worker server is forkserver's, found through /proc (Linux)",
)

POOL_SCRIPT = r"""
import json, os, sys
from concurrent.futures import ProcessPoolExecutor
from dedup_assets.engines import init_pool_process, worker_context

before = os.environ.get("OMP_NUM_THREADS")
context = worker_context(1)
with ProcessPoolExecutor(2, mp_context=context, initializer=init_pool_process,
                         initargs=(1, True)) as pool:
    seen = [pool.submit(eval, expr).result() for expr in (
        "'dagster' in __import__('sys').modules and 'polars' in __import__('sys').modules",
        "__import__('os').environ.get('OMP_NUM_THREADS')",
        "__import__('os').getppid()",
        "__import__('dedup_assets.core.data.pools', fromlist=['_']).process_cores()",
        "__import__('torch').get_num_threads()",
        "__import__('polars').thread_pool_size()",
        "[m in __import__('sys').modules for m in "
        "('dedup_assets.instance_imports', 'alembic.command', 'dagster._core.instance.factory')]",
    )]
print(json.dumps({"method": context.get_start_method(), "parent_env": before,
                  "after_env": os.environ.get("OMP_NUM_THREADS"), "me": os.getpid(),
                  "seen": seen}))
"""


def test_pool_workers_are_forks_of_a_server_that_imported_the_pipeline():
    proc = subprocess.run(
        [sys.executable, "-c", POOL_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    preloaded, env, parent, cores, threads, polars_threads, instance_modules = out["seen"]
    assert out["method"] == "forkserver"
    assert preloaded  # Dagster and polars were there before the worker's first task
    assert parent != out["me"]  # forked by the server, not started by this process
    assert env == "1" and cores == 1 and threads == 1  # one core's share each
    assert polars_threads == 1  # polars's pool too: it starts in the worker, not the server
    # What opening the instance imports was imported by the server, before any task.
    assert all(instance_modules), instance_modules
    # The caller's own environment is as it was: its BLAS keeps every core.
    assert out["parent_env"] == out["after_env"]


def test_every_module_opening_the_instance_imports_is_still_there():
    """`instance_imports` skips a module a Dagster release dropped; this says when one is
    (the preload then does less)."""
    import importlib

    from dedup_assets.instance_imports import MODULES

    for name in MODULES:
        importlib.import_module(name)


OPEN_SCRIPT = r"""
import json, sys
from pathlib import Path
import dedup_assets.dispatch
if sys.argv[2] == "preloaded":
    import dedup_assets.instance_imports
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.runner import instance_for
OutputLayout(Path(sys.argv[1])).claim()
before = set(sys.modules)
with instance_for(Path(sys.argv[1])):
    pass
print(json.dumps(len(set(sys.modules) - before)))
"""


def test_a_preloaded_process_opens_its_instance_with_few_imports(tmp_path):
    counts = {}
    for how in ("plain", "preloaded"):
        proc = subprocess.run(
            [sys.executable, "-c", OPEN_SCRIPT, str(tmp_path / how), how],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        counts[how] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["plain"] > 200 and counts["preloaded"] < counts["plain"] / 4, counts


PRESTART_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from dedup_assets import cli

probe = cli._probe(sys.argv[1:])
cli._prestart_workers(probe)
from multiprocessing import forkserver
# The server this process started, as multiprocessing records it (a scan of /proc for
# children running "forkserver" missed it once on a loaded machine), and alive.
pid = forkserver._forkserver._forkserver_pid
servers = []
if pid is not None:
    os.kill(pid, 0)  # raises if it is not running
    servers.append(pid)
heavy = "dagster" in sys.modules
import polars  # noqa: E402 - its pool starts at the first parallel operation: now
print(json.dumps({"servers": len(servers), "heavy": heavy,
                  "polars_env": os.environ.get("POLARS_MAX_THREADS"),
                  "polars_threads": polars.thread_pool_size()}))
for pid in servers:  # its imports would go on after this process ends
    os.kill(pid, 9)
"""


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prestart") / "source"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("options", "started"),
    [
        ((), False),  # auto with 4 files: in process, no pool
        (("--executor", "processes"), True),
        (("--exec", "processes", "--parallel", "2"), True),  # an abbreviation argparse takes
        (("--executor=processes",), True),
        (("--executor", "in_process"), False),
        (("--executor", "dask"), False),  # its workers are the cluster's
        (("--executor", "nonsense"), False),  # argparse says what is wrong, later
    ],
)
def test_the_server_starts_early_only_for_a_run_that_uses_the_pool(
    small_source, tmp_path, options, started
):
    argv = ["run", "--source", str(small_source), "--output", str(tmp_path / "out"), *options]
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
    proc = subprocess.run(
        [sys.executable, "-c", PRESTART_SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["servers"] == (1 if started else 0)
    assert not out["heavy"]  # decided from the listing, before this process imports Dagster
    # Beside its workers this process's polars takes a worker's share of the cores too.
    share = threads_per_process(2 if "2" in options else 1)
    if started:
        assert out["polars_env"] == str(share) and out["polars_threads"] == share
    else:
        assert out["polars_env"] is None
