"""`dedup watch`: a run, then an update in the same process each time the source changes;
through the real command (tiny data), and its change detection (`cli._SourceWatch`) alone."""

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import DEDUP, run_dedup

from dedup_assets import cli
from dedup_assets.core.data.image_folder import scan_image_folder
from dedup_assets.core.data.live_listing import LiveListing
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.runner import instance_for

FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32", "--thresholds", "0.95")
UPDATE_ENDED = re.compile(r"^update (\d+) ended with exit (\d+);")


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "src"
    generate_demo_dataset(root, seed=3, per_class=8, duplicate_fraction=0.25)
    for extra in ("desert", "road", "urban"):  # three classes: fewer runs, same behaviour
        shutil.rmtree(root / extra)
    return root


def _signals_as_a_shell_leaves_them() -> None:
    """SIGINT and SIGTERM at their defaults in the watch, as a terminal starts a command.
    A signal ignored when a process starts stays ignored there (`interrupts`), and this
    test process may ignore SIGTERM: started without job control (CI in the background)
    it ignores SIGINT, and Dagster, run in it by another test, sets SIGTERM's handler to
    SIGINT's (`dagster._utils.interrupts.setup_interrupt_handlers`). The watch then took
    no notice of SIGTERM (twice in CI's full suite, never alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Watch:
    """`dedup watch` in a subprocess; its lines read as they come."""

    def __init__(self, source: Path, output: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEDUP_")}
        env.pop("DAGSTER_HOME", None)
        self.proc = subprocess.Popen(
            [str(DEDUP), "watch", "--source", str(source), "--output", str(output), *FAST]
            + list(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its workers too are stopped if a test fails (`end`)
            preexec_fn=_signals_as_a_shell_leaves_them,
        )
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []  # read as it comes too: a full pipe would block the watch
        threading.Thread(target=self._read, daemon=True).start()
        self._errors = threading.Thread(target=self.err.extend, args=(self.proc.stderr,))
        self._errors.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, pattern: re.Pattern | str, timeout: float = 240) -> re.Match:
        """Read lines until one matches `pattern`; fails on the end of output or timeout."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise AssertionError(f"no {pattern.pattern!r}:\n" + "\n".join(self.out)) from None
            assert line is not None, f"ended before {pattern.pattern!r}:\n" + "\n".join(self.out)
            self.out.append(line)
            if m := pattern.search(line):
                return m

    def end(self, timeout: float = 240) -> tuple[int, str, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            while not self.lines.empty():  # what it printed that `until` had not read
                self.out.append(str(self.lines.get()))
            raise AssertionError(
                f"still running after {timeout} s:\n" + "\n".join(self.out) + "".join(self.err)
            ) from None
        while (line := self.lines.get(timeout=10)) is not None:
            self.out.append(line)
        self._errors.join(timeout=10)
        return rc, "\n".join(self.out), "".join(self.err)


def _copy_as(src: Path, dest: Path) -> None:
    dest.write_bytes(src.read_bytes())


def _keep(output: Path) -> pl.DataFrame:
    return pl.read_parquet(output / "keep_lists" / "0.95.parquet")


def test_watch_updates_when_an_image_arrives_and_a_run_then_answers_from_it(source, tmp_path):
    out = tmp_path / "out"
    # One epoch's model reconstructs a single new image 0.5x to 2x as well as its training
    # set: the retraining rule (which redoes every class) is not what this test is about.
    keep_model = ("--retrain-error-factor", "100")
    # Local worker processes: later updates start them from the workers' server, not by
    # forking this process, whose polars and torch pools have run (`cli._RAN`: such a
    # fork hung in its first parallel read).
    workers = ("--executor", "processes", "--parallel", "2")
    watch = Watch(
        source, out, "--interval", "0.2", "--settle", "0.5", "--updates", "2", *keep_model, *workers
    )
    assert watch.until(UPDATE_ENDED).groups() == ("1", "0")
    by_class = {
        p.stem: p.read_bytes() for p in (out / "keep_lists" / "by_class" / "0.95").iterdir()
    }
    # A file of the clean copy edited between updates (of a class that does not change),
    # once the watch has verified the copy's folders (milliseconds after its line here).
    time.sleep(1.0)
    edited = sorted((out / "clean" / "0.95" / "water").glob("*.png"))[0]
    with open(edited, "ab") as fh:
        fh.write(b"edited")
    first = sorted((source / "forest").glob("*.png"))[0]
    _copy_as(first, source / "forest" / "zz copy of first.png")  # an exact copy, an odd name
    rc, stdout, stderr = watch.end(timeout=120)
    assert rc == 0, stderr
    listed = re.search(
        r"update 2: the source's files changed \((\d+) -> (\d+) images listed\)", stdout
    )
    assert listed, stdout
    # ... and on the processes of the first update, kept (`dispatch.keep_pools`).
    first_workers = set(re.findall(r"steps ran on (\S+)", stdout[: listed.start()]))
    later = re.search(r"\[images[^]]*\] forest: steps ran on (\S+)", stdout[listed.end() :])
    assert later and first_workers, stdout
    assert later.group(1) in first_workers, (later.group(1), first_workers)
    before, images = map(int, listed.groups())
    assert images == before + 1
    assert "quick check: changed since the last run: the source's files" in stdout
    keep = _keep(out)
    assert len(keep) == images
    copy = keep.filter(pl.col("path") == "forest/zz copy of first.png")
    assert copy["kept"].to_list() == [False], copy  # the exact copy is removed ...
    assert copy["decided_by"].to_list() == ["exact"]
    assert copy["duplicate_of_path"].to_list() == [f"forest/{first.name}"]  # ... as a copy of it
    # The classes that did not change were not decided again.
    after = {p.stem: p.read_bytes() for p in (out / "keep_lists" / "by_class" / "0.95").iterdir()}
    training = re.findall(r"^training: .*", stdout, re.M)
    assert {k for k in by_class if after[k] != by_class[k]} == {"forest"}, training
    # Its clean copy never took the edited folder on the watch's word (`folder_trust`: at
    # most the others, verified after update 1 with no change event since;
    # tests/test_folder_trust.py shows that they are), and holds the source's files, the
    # edited one's again.
    with instance_for(out) as instance:
        made = instance.fetch_materializations(dg.AssetKey("clean_dataset"), limit=1).records
    trusted = made[0].asset_materialization.metadata["folders_known_unchanged"].value
    assert trusted <= len([d for d in source.iterdir() if d.is_dir()]) - 1, stdout + stderr
    clean = out / "clean" / "0.95"
    for row in keep.filter(pl.col("kept")).iter_rows(named=True):
        assert (clean / row["path"]).read_bytes() == (source / row["path"]).read_bytes()
    # The watch's record is the run's: the same options without the watch's answer at once.
    again = run_dedup("run", "--source", str(source), "--output", str(out), *FAST, *keep_model)
    assert again.returncode == 0, again.stderr
    assert "nothing changed: every output is up to date" in again.stdout


def test_a_change_is_seen_before_the_interval_ends_where_the_kernel_reports_it(source, tmp_path):
    with LiveListing(source) as listing:
        listing.scan()
        if not listing.live:
            pytest.skip("no change events on this machine (inotify): only --interval looks")
    out = tmp_path / "out"
    # --interval 600: without the kernel's events it would not look again in this test.
    keep_model = ("--retrain-error-factor", "100")  # one new image: no retraining
    watch = Watch(source, out, "--interval", "600", "--settle", "0", "--updates", "2", *keep_model)
    watch.until(UPDATE_ENDED)
    first = sorted((source / "forest").glob("*.png"))[0]
    _copy_as(first, source / "forest" / "zz arrived.png")
    watch.until(r"update 2: the source's files changed", timeout=120)
    rc, stdout, stderr = watch.end(timeout=120)
    assert rc == 0, stderr


def test_a_run_with_the_watchs_settings_is_its_update_and_others_run_on_their_own(source, tmp_path):
    out = tmp_path / "out"
    # --interval 60: the watch would not look at the source on its own during the test.
    watch = Watch(source, out, "--interval", "60", "--settle", "5")
    # How it sees changes, said once: each class folder watched where inotify is at hand.
    watch.until(
        r"^change events: (\d+) of \1 class folder\(s\) watched \(inotify\)$|^change events: none"
    )
    watch.until(
        f"a dedup run with these options is answered by this watch \\(through {out}/.watch.sock\\)"
    )
    watch.until(UPDATE_ENDED)
    assert (out / ".watch.sock").exists()
    first = sorted((source / "forest").glob("*.png"))[0]
    _copy_as(first, source / "forest" / "zz copy of first.png")
    run = ("run", "--source", str(source), "--output", str(out), *FAST)
    done = run_dedup(*run)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"latent-dedup: {source} -> {out}\n")
    assert "quick check: changed since the last run: the source's files" in done.stdout
    assert done.stdout.rstrip().endswith(
        "done: every stage ran and no gate held back a clean copy (exit 0)"
    )
    asked = watch.until(r"update 2: asked by dedup run \(pid (\d+)\); the source's files changed")
    watch.until(r"^update 2 ended with exit 0;")
    copy = _keep(out).filter(pl.col("path") == "forest/zz copy of first.png")
    assert copy["kept"].to_list() == [False], copy
    # Nothing new: the watch answers with the last run's screen.
    again = run_dedup(*run)
    assert again.returncode == 0, again.stderr
    assert "nothing changed: every output is up to date" in again.stdout
    watch.until(r"update 3: asked by dedup run \(pid \d+\); nothing changed \(\d+ images listed\)")
    watch.until(r"^update 3 ended with exit 0;")
    # The update's exit status is the command's: a malformed overrides file, exit 2.
    (out / "overrides.csv").write_text("path,decision\n")
    bad = run_dedup(*run)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert re.fullmatch(r"dedup run: error: .*overrides.csv.*\n", bad.stderr), bad.stderr
    watch.until(r"^update 4 ended with exit 2;")
    (out / "overrides.csv").unlink()
    # Other options: refused, and the command runs the update itself.
    other = run_dedup(*run, "--clean-copy-mode", "symlink")
    assert other.returncode == 0, other.stderr
    assert other.stderr == (
        f"dedup run: the dedup watch on {out} does not run this update "
        "(other options: --clean-copy-mode); running it here\n"
    )
    assert "update 5" not in "\n".join(watch.out)
    watch.proc.send_signal(signal.SIGTERM)
    rc, stdout, stderr = watch.end(timeout=60)
    assert rc == 143, stderr
    assert int(asked.group(1)) != watch.proc.pid
    assert not (out / ".watch.sock").exists()  # removed as the watch stopped


def test_settle_waits_for_files_still_arriving(source, tmp_path):
    out = tmp_path / "out"
    watch = Watch(source, out, "--interval", "0.2", "--settle", "2.5", "--updates", "2")
    watch.until(UPDATE_ENDED)
    pngs = sorted((source / "water").glob("*.png"))
    _copy_as(pngs[0], source / "water" / "late 1.png")
    time.sleep(0.8)  # within --settle: the same update takes both
    _copy_as(pngs[1], source / "water" / "late 2.png")
    rc, stdout, stderr = watch.end()
    assert rc == 0, stderr
    listed = re.search(
        r"update 2: the source's files changed \((\d+) -> (\d+) images listed\)", stdout
    )
    assert listed, stdout
    before, after = map(int, listed.groups())
    assert after == before + 2  # one update for both
    assert {"water/late 1.png", "water/late 2.png"} <= set(_keep(out)["path"])


def test_a_failed_update_is_said_and_the_watch_goes_on(source, tmp_path):
    out = tmp_path / "out"
    watch = Watch(source, out, "--interval", "0.2", "--settle", "0", "--updates", "3")
    watch.until(UPDATE_ENDED)
    (out / "overrides.csv").write_text("path,decision\n")  # not the header a review page writes
    watch.until(r"update 2: the output's overrides.csv changed")
    watch.until(r"^update 2 ended with exit 2;")
    (out / "overrides.csv").unlink()
    watch.until(r"update 3: the output's overrides.csv changed")
    rc, stdout, stderr = watch.end(timeout=120)
    assert rc == 0, stderr
    assert re.search(r"dedup watch: update 2 failed: .*overrides.csv.*path,decision,other", stderr)
    assert stdout.rstrip().endswith(
        "done: every stage ran and no gate held back a clean copy (exit 0)"
    )


def test_a_signal_between_updates_stops_it_at_once(source, tmp_path):
    out = tmp_path / "out"
    watch = Watch(source, out, "--interval", "30")
    watch.until(UPDATE_ENDED)
    time.sleep(2)  # in its 30 s wait between looks (nothing changed: nothing wakes it)
    watch.proc.send_signal(signal.SIGTERM)  # as Ctrl-C (SIGINT: 130); the same handling
    sent = time.monotonic()
    rc, stdout, stderr = watch.end(timeout=60)
    # At once, not when the 30 s wait ends: the signal may reach another thread of the
    # watch, and the main thread acts on it only between two slices of its wait.
    assert time.monotonic() - sent < 10
    assert rc == 143
    assert "update 2" not in stdout
    assert "dedup watch: stopped after 1 update(s); the outputs are those of the last" in stderr
    assert not list(out.rglob("*-wal"))  # every database closed
    # What the stopped watch left is complete: a run takes a new image from there.
    _copy_as(sorted((source / "forest").glob("*.png"))[0], source / "forest" / "new.png")
    done = run_dedup("run", "--source", str(source), "--output", str(out), *FAST)
    assert done.returncode == 0, done.stderr
    assert "forest/new.png" in set(_keep(out)["path"])


def test_an_update_waits_while_another_run_writes_the_output(source, tmp_path):
    import fcntl

    from dedup_assets.core.data.layout import OutputLayout

    out = tmp_path / "out"
    watch = Watch(source, out, "--interval", "0.2", "--settle", "0", "--updates", "2")
    watch.until(UPDATE_ENDED)
    with open(OutputLayout(out).lock, "a+") as held:  # as a `dedup run` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _copy_as(sorted((source / "forest").glob("*.png"))[0], source / "forest" / "later.png")
        watch.until(r"update 2: the source's files changed")
        time.sleep(2)  # ten looks at least, each finding the output in use
        assert watch.proc.poll() is None
        fcntl.flock(held, fcntl.LOCK_UN)
    rc, stdout, stderr = watch.end()
    assert rc == 0, stderr
    assert stderr.count("dedup watch: update 2 waits: output") == 1, stderr
    assert "in use by another dedup run" in stderr
    assert "forest/later.png" in set(_keep(out)["path"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--interval", "0"], "--interval: 0: not a positive number of seconds"),
        (["--interval", "nan"], "--interval: nan: not a positive number of seconds"),
        (["--settle", "-1"], "--settle: -1: not a number of seconds >= 0"),
        (["--updates", "0"], "--updates: 0: not a count >= 1"),
    ],
)
def test_bad_watch_options_exit_2_with_one_line(source, tmp_path, extra, message):
    done = run_dedup("watch", "--source", str(source), "--output", str(tmp_path / "o"), *extra)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ when it lists the source


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch_inputs(source: Path, out: Path):
    return cli._probe(["watch", "--source", str(source), "--output", str(out)]).inputs


def _looking(source: Path, out: Path, monkeypatch, *extra: str, listing=None):
    argv = ["watch", "--source", str(source), "--output", str(out), *extra]
    clock = FakeClock()
    watch = cli._SourceWatch(argv, cli._probe(argv), clock, listing)
    listings = []
    real = cli._probe

    def counted(a, *rest, **kw):
        listings.append(a)
        return real(a, *rest, **kw)

    monkeypatch.setattr(cli, "_probe", counted)
    return watch, clock, listings


def test_an_unchanged_source_is_not_listed_until_the_full_listing_is_due(
    source, tmp_path, monkeypatch
):
    watch, clock, listings = _looking(source, tmp_path / "out", monkeypatch)
    for _ in range(5):
        assert watch.changed() is None
    assert len(listings) == 1  # the first look: what changed since the update listed it
    clock.now = cli.FULL_LISTING_EVERY
    assert watch.changed() is None  # listed in full, and the same
    assert len(listings) == 2


def test_a_change_made_during_the_update_is_seen_at_the_first_look(source, tmp_path):
    argv = ["watch", "--source", str(source), "--output", str(tmp_path / "out")]
    ran_on = cli._probe(argv)  # what the update lists and runs on ...
    _copy_as(next((source / "water").glob("*.png")), source / "water" / "during.png")
    watch = cli._SourceWatch(argv, ran_on, FakeClock())  # ... and the watch made after it
    assert watch.changed() is not None


@pytest.mark.parametrize(
    "change",
    ["new image", "removed image", "new class folder", "output overrides", "overrides given"],
)
def test_each_change_is_seen_at_the_next_look(source, tmp_path, monkeypatch, change):
    given = tmp_path / "my overrides.csv"
    given.write_text("path,decision,other\n")
    watch, _, listings = _looking(source, tmp_path / "out", monkeypatch, "--overrides", str(given))
    assert watch.changed() is None
    if change == "new image":
        _copy_as(next((source / "water").glob("*.png")), source / "water" / "é new [1].png")
    elif change == "removed image":
        next((source / "water").glob("*.png")).unlink()
    elif change == "new class folder":
        (source / "lake").mkdir()
        _copy_as(next((source / "water").glob("*.png")), source / "lake" / "a.png")
    elif change == "output overrides":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "overrides.csv").write_text("path,decision,other\nwater/a.png,keep,\n")
    else:
        given.write_text("path,decision,other\nwater/x.png,keep,\n")
    assert watch.changed() is not None and len(listings) == 2


def test_an_image_rewritten_in_place_is_seen_at_the_full_listing(source, tmp_path, monkeypatch):
    watch, clock, listings = _looking(source, tmp_path / "out", monkeypatch)
    assert watch.changed() is None
    path = next((source / "water").glob("*.png"))
    folder_time = os.stat(path.parent).st_mtime_ns
    path.write_bytes(path.read_bytes() + b"\0")  # same name: no folder changes
    os.utime(path.parent, ns=(folder_time, folder_time))
    assert watch.changed() is None and len(listings) == 1
    clock.now = cli.FULL_LISTING_EVERY + 1
    assert watch.changed() is not None


def test_with_change_events_a_rewrite_in_place_is_seen_at_the_next_look(
    source, tmp_path, monkeypatch
):
    listing = LiveListing(source)
    listing.scan()
    if not listing.live:
        pytest.skip("no change events on this machine (inotify): the full listing sees it")
    watch, clock, listings = _looking(source, tmp_path / "out", monkeypatch, listing=listing)
    assert watch.changed() is None and len(listings) == 1
    for _ in range(3):
        assert watch.changed() is None  # no event, no listing
    assert len(listings) == 1
    path = next((source / "water").glob("*.png"))
    folder_time = os.stat(path.parent).st_mtime_ns
    path.write_bytes(path.read_bytes() + b"\0")  # same name: no folder changes
    os.utime(path.parent, ns=(folder_time, folder_time))
    probe = watch.changed()
    assert probe is not None and len(listings) == 2
    assert listing.listed == [b"water"]  # only the folder that changed was listed again
    fresh = scan_image_folder(source)
    assert [(f.raw_path, f.size, f.mtime_ns) for f in probe.take_scan()[2].files] == [
        (f.raw_path, f.size, f.mtime_ns) for f in fresh.files
    ]
    listing.close()


def test_a_wait_between_looks_ends_early_on_a_reported_change_but_not_at_once():
    start = time.monotonic()
    asked: list[float] = []

    def ready() -> bool:
        asked.append(time.monotonic() - start)
        return True  # a change reported all along

    cli._sleep(30.0, ready=ready)
    # Asked only once EARLIEST_LOOK has passed, and the first answer ends the wait.
    assert len(asked) == 1 and asked[0] >= cli.EARLIEST_LOOK
    asked.clear()
    start = time.monotonic()
    cli._sleep(1.0, ready=lambda: asked.append(0) is not None and False)
    assert time.monotonic() - start >= 1.0  # nothing reported: the whole wait
    assert asked  # ... asked at each slice after the earliest look


def test_next_change_waits_whole_for_the_listing_to_settle(source, tmp_path, monkeypatch):
    watch, _, _ = _looking(source, tmp_path / "out", monkeypatch)
    waits, sleeps = [], []
    _copy_as(next((source / "water").glob("*.png")), source / "water" / "new one.png")
    cli._next_change(watch, 30.0, 2.0, sleeps.append, wait=waits.append)
    assert waits == [30.0] and sleeps == [2.0]  # the look's wait may end early, settle's not


def test_settle_returns_the_listing_once_it_stays_the_same(source, tmp_path, monkeypatch):
    watch, _, _ = _looking(source, tmp_path / "out", monkeypatch)
    before = sum(watch_inputs(source, tmp_path / "out").class_sizes)
    pngs = sorted((source / "water").glob("*.png"))
    arrivals = [source / "water" / f"late {i}.png" for i in range(3)]
    sleeps = []

    def sleep(seconds: float) -> None:  # a file lands during each of the first waits
        sleeps.append(seconds)
        if len(sleeps) <= len(arrivals):
            _copy_as(pngs[0], arrivals[len(sleeps) - 1])

    probe = cli._next_change(watch, 0.5, 2.0, sleep)
    assert sleeps == [0.5, 2.0, 2.0, 2.0]
    assert sum(probe.inputs.class_sizes) == before + 3


# ------------------------------------------------------------------ what a worker keeps


class FakeInstance:
    opened = 0

    def __init__(self) -> None:
        FakeInstance.opened += 1
        self.disposed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.dispose()

    def dispose(self) -> None:
        self.disposed = True


def test_a_pool_process_keeps_its_instance_and_a_thread_does_not(monkeypatch, tmp_path):
    from dedup_assets import dispatch

    FakeInstance.opened = 0
    monkeypatch.setattr(dispatch, "_instances", {})
    monkeypatch.setattr(dispatch, "open_instance", lambda home: FakeInstance())
    home = str(tmp_path)
    with dispatch._worker_instance(home) as first:
        pass
    with dispatch._worker_instance(home) as second:
        pass
    assert first is second and FakeInstance.opened == 1 and not first.disposed
    with pytest.raises(RuntimeError), dispatch._worker_instance(home) as failing:
        raise RuntimeError("a run that ended badly")
    assert failing.disposed  # dropped: the next run opens anew
    with dispatch._worker_instance(home) as third:
        pass
    assert third is not first and FakeInstance.opened == 2
    # A Dask worker runs tasks in threads: one instance per run there, closed after.
    seen = []

    def in_thread() -> None:
        with dispatch._worker_instance(home) as instance:
            seen.append(instance)

    for _ in range(2):
        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
    assert len({id(i) for i in seen}) == 2 and all(i.disposed for i in seen)


def test_a_dask_threads_instance_is_disposed_through_interrupts(monkeypatch, tmp_path):
    """`interrupt_runs` sends a KeyboardInterrupt into a Dask run's thread every half second
    until it has left its run: one that lands while its instance is disposed starts the
    disposal again, so the run's databases are closed before the command records the run
    as canceled."""
    from dedup_assets import dispatch

    class Interrupted(FakeInstance):
        def dispose(self) -> None:
            self.tries = getattr(self, "tries", 0) + 1
            if self.tries < 3:
                raise KeyboardInterrupt
            super().dispose()

    monkeypatch.setattr(dispatch, "open_instance", lambda home: Interrupted())
    seen = []

    def in_thread() -> None:
        with dispatch._worker_instance(str(tmp_path)) as instance:
            seen.append(instance)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen[0].disposed and seen[0].tries == 3


def test_a_run_that_cannot_be_marked_canceled_does_not_stop_the_others(tmp_path, monkeypatch):
    """The command records the runs it leaves unfinished as canceled as it stops; one it
    cannot (its database locked) is left STARTED for the next run to fail, and the others
    are still recorded, and the command still stops as interrupted."""
    import socket as socket_module

    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from dedup_assets.runner import HOST_TAG, PID_TAG, cancel_unfinished_runs

    instance = dg.DagsterInstance.ephemeral()
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket_module.gethostname()}
    for run_id in ("locked", "free"):
        started = DagsterRun(
            job_name="j", run_id=run_id, tags=tags, status=dg.DagsterRunStatus.STARTED
        )
        instance.add_run(started)
    real = instance.report_run_canceled

    def report(run, message):
        if run.run_id == "locked":
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(run, message)

    monkeypatch.setattr(instance, "report_run_canceled", report)
    assert cancel_unfinished_runs(instance, "interrupted") == ["free"]
    status = {r: instance.get_run_by_id(r).status for r in ("locked", "free")}
    assert status == {"locked": dg.DagsterRunStatus.STARTED, "free": dg.DagsterRunStatus.CANCELED}


@pytest.mark.parametrize("seed", range(4))
def test_settle_over_sequences_of_arrivals(source, tmp_path, monkeypatch, seed):
    """Whatever lands during which waits: nothing is returned before a look finds the
    source changed, nor until a settle wait passes with nothing landing, and what is
    returned is the source as it then is."""
    import random

    rng = random.Random(seed)
    watch, _, _ = _looking(source, tmp_path / "out", monkeypatch)
    before = sum(watch_inputs(source, tmp_path / "out").class_sizes)
    png = next((source / "water").glob("*.png"))
    # Files landing during each wait: quiet looks first, then a burst over settles.
    plan = [0] * rng.randint(0, 3) + [rng.randint(1, 3)] + [rng.randint(0, 2) for _ in range(6)]
    plan += [0]  # the source goes quiet at last
    sleeps, landed = [], [0]

    def sleep(seconds: float) -> None:
        n = plan[len(sleeps)] if len(sleeps) < len(plan) else 0
        sleeps.append((seconds, n))
        for _ in range(n):
            _copy_as(png, source / "water" / f"land {landed[0]}.png")
            landed[0] += 1

    probe = cli._next_change(watch, 0.5, 2.0, sleep)
    assert sum(probe.inputs.class_sizes) == before + landed[0]  # as the source is now
    quiet = next(i for i, n in enumerate(plan) if n)  # the looks before anything landed
    assert [s for s, _ in sleeps[: quiet + 1]] == [0.5] * (quiet + 1)
    settles = sleeps[quiet + 1 :]
    assert all(s == 2.0 for s, _ in settles)
    assert settles[-1][1] == 0 and all(n for _, n in settles[:-1])  # ends at the first quiet settle
