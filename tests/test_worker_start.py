"""How `dedup run` starts its pool of local processes: planned from the listing before any
heavy import (`cli._prestart_workers`) and forked from the command itself once its imports
are done (`cli._prefork`, `dispatch.prefork_pool`), with the workers' thread settings;
elsewhere forks of a server that imported the pipeline once (`engines.worker_context`).
Each case runs in its own interpreter: the server and the pool are one per process."""

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
heavy = "dagster" in sys.modules
import polars  # noqa: E402 - its pool starts at the first parallel operation: now
print(json.dumps({"planned": cli._PLANNED_POOL,
                  "server": forkserver._forkserver._forkserver_pid is not None,
                  "heavy": heavy,
                  "polars_env": os.environ.get("POLARS_MAX_THREADS"),
                  "polars_threads": polars.thread_pool_size()}))
"""

PREFORK_SCRIPT = r"""
import json, os, signal, sys
# As `cli._prestart_workers` does before the command imports polars (which fixes its pool's
# size as it loads): the command beside its workers takes a worker's share too.
from dedup_assets.engines import threads_per_process
os.environ["POLARS_MAX_THREADS"] = str(threads_per_process(2))
from dedup_assets import cli, dispatch
from dedup_assets.interrupts import stop_on_signals

cli._OWN_PROCESS, cli._PLANNED_POOL = sys.argv[1] == "own", 2
with stop_on_signals():  # as `dedup run` forks them: inside its signal handling
    cli._prefork(verbose=True)
pool = dispatch._preforked[1] if dispatch._preforked else None
seen = None
if pool is not None:
    probes = (
        "[m in __import__('sys').modules for m in ('dagster', 'torch', 'polars', "
        "'dedup_assets.instance_imports', 'dagster._core.instance.factory')]",
        "__import__('os').getppid()",
        "__import__('os').environ.get('OMP_NUM_THREADS')",
        "__import__('dedup_assets.core.data.pools', fromlist=['_']).process_cores()",
        "__import__('torch').get_num_threads()",
        "__import__('polars').thread_pool_size()",
        "[i['num_threads'] for i in __import__('threadpoolctl').threadpool_info() "
        "if i['user_api'] == 'blas']",
        "[__import__('signal').getsignal(2) is __import__('signal').default_int_handler, "
        "__import__('signal').getsignal(15) == __import__('signal').SIG_DFL, "
        "__import__('signal').set_wakeup_fd(-1)]",
    )
    seen = [pool.submit(eval, p).result() for p in probes]
    pids = {pool.submit(os.getpid).result() for _ in range(8)}
    dispatch.release_preforked()
print(json.dumps({"me": os.getpid(), "seen": seen}))
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
def test_the_pool_is_planned_early_only_for_a_run_that_uses_it(
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
    # Planned, to be forked from the command once its imports are done; no server started.
    assert out["planned"] == ((2 if "2" in options else 1) if started else None)
    assert not out["server"]
    assert not out["heavy"]  # decided from the listing, before this process imports Dagster
    # Beside its workers this process's polars takes a worker's share of the cores too.
    share = threads_per_process(2 if "2" in options else 1)
    if started:
        assert out["polars_env"] == str(share) and out["polars_threads"] == share
    else:
        assert out["polars_env"] is None


def test_the_command_forks_its_workers_from_itself_with_their_share_of_the_cores():
    """`dedup run` (only the command itself: `cli._OWN_PROCESS`) forks its pool's
    processes once its imports are done: each has the pipeline imported, one core's share
    for torch, polars and BLAS (loaded before the fork with every core), and a new
    process's signal handling, not the command's handlers and wakeup pipe. Called inside
    another program, it forks nothing (the server of `worker_context` is used)."""
    proc = subprocess.run(
        [sys.executable, "-c", PREFORK_SCRIPT, "own"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded, parent, env, cores, torch_threads, polars_threads, blas, signals = out["seen"]
    assert all(loaded), loaded
    assert parent == out["me"]  # forked by the command itself
    share = threads_per_process(2)
    assert env == str(share) and cores == share and torch_threads == share
    assert polars_threads == share and blas and set(blas) == {share}
    assert signals == [True, True, -1]
    other = subprocess.run(
        [sys.executable, "-c", PREFORK_SCRIPT, "library"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout.strip().splitlines()[-1])["seen"] is None


GC_SCRIPT = r"""
import atexit, gc, json, sys
from dedup_assets import cli

def seen():
    print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}), flush=True)

atexit.register(seen)
sys.argv = ["dedup", *sys.argv[1:]]
cli.entry()
"""


@pytest.mark.parametrize("command", ["run", "plant"])
def test_the_command_collects_garbage_again_once_its_imports_are_done(
    small_source, tmp_path, command
):
    """`dedup` pauses the garbage collector while it imports (six full collections of
    every object torch and Dagster made: a third of the import time) and turns it on again,
    those objects frozen, before any work: a run, and a command that is not a run."""
    if command == "run":
        argv = ["run", "--source", str(small_source), "--output", str(tmp_path / "out")]
        argv += ["--epochs", "1", "--executor", "processes", "--parallel", "2"]
    else:
        argv = ["plant", "--source", str(small_source), "--dest", str(tmp_path / "planted")]
    proc = subprocess.run(
        [sys.executable, "-c", GC_SCRIPT, *argv], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["enabled"]
    assert out["frozen"] > 100_000  # what the imports made (Dagster's and torch's objects)
    if command == "run":
        assert (tmp_path / "out" / "keep_lists").is_dir()
    else:
        assert (tmp_path / "planted").is_dir()


SCANS_SCRIPT = r"""
import atexit, json, os, sys
import dedup_assets.core.data.image_folder as image_folder

me, scans = os.getpid(), []
scan = image_folder.scan_image_folder

def counted(root, **kwargs):
    if os.getpid() == me:
        scans.append(os.fsdecode(root))
    return scan(root, **kwargs)

image_folder.scan_image_folder = counted  # before any module binds the name
atexit.register(lambda: print(json.dumps({"scans": scans}), flush=True))
from dedup_assets import cli
sys.argv = ["dedup", *sys.argv[1:]]
cli.entry()
"""


@pytest.mark.parametrize("options", [(), ("--include-hidden",), ("--executor", "processes")])
def test_the_command_lists_its_source_once(small_source, tmp_path, options):
    """The listing `dedup run` takes before its imports (to answer a rerun with nothing new
    and plan its workers) is its run's listing too: the source is scanned once, and the
    catalog holds every file of it."""
    out = tmp_path / "out"
    argv = ["run", "--source", str(small_source), "--output", str(out), "--epochs", "1"]
    proc = subprocess.run(
        [sys.executable, "-c", SCANS_SCRIPT, *argv, *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["scans"] == [str(small_source)]
    assert "catalog: 4 images" in proc.stdout
