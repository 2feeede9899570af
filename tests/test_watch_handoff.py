"""`dedup run` handed to the `dedup watch` serving its output (`watch_handoff`): which
command lines a watch runs for a command, and the socket between them, with the command's
side in its own process as the `dedup` command runs it. The watch itself, through the real
commands: tests/test_watch.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dedup_assets import cli, watch_handoff
from dedup_assets.watch_handoff import MAX_SOCKET_PATH, WatchServer, relayed, socket_path

RUN = ["run", "--source", "src", "--output", "out", "--thresholds", "0.95"]


def settings(argv, cwd="/work/a", env=None):
    return cli._handoff_settings(argv, cwd, env or {})


def test_settings_are_the_options_with_paths_resolved_in_the_commands_folder():
    here = settings(RUN)
    assert here == {
        "options": {
            "--output": "/work/a/out",
            "--source": "/work/a/src",
            "--thresholds": "0.95",
        },
        "env": {},
    }
    # The same folders named from elsewhere, absolutely, abbreviated, or with `=`.
    assert (
        settings(
            ["run", "--source", "../a/src", "--output=../a/out", "--thresholds", "0.95"],
            cwd="/work/b",
        )
        == here
    )
    assert (
        settings(
            ["run", "--thresholds", "0.95", "--out", "/work/a/out", "--source", "/work/a/src"],
            cwd="/",
        )
        == here
    )
    # The watch's own options and --verbose change no result.
    watch = ["watch", *RUN[1:], "--interval", "0.5", "--settle", "0", "--updates", "3"]
    assert settings([*watch, "--verbose"]) == here
    # Without --output: the default folder, in the command's folder.
    assert settings(RUN[:3] + RUN[5:])["options"]["--output"] == "/work/a/dedup_output"
    # The DEDUP_ variables count, others not.
    env = {"DEDUP_EXECUTOR": "processes", "HOME": "/root", "PATH": "/bin"}
    assert settings(RUN, env=env)["env"] == {"DEDUP_EXECUTOR": "processes"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ui", "--output", "out"],
        ["demo", "--output", "out"],
        ["run", "--output", "out"],  # no source
        ["run", "--source", "", "--output", "out"],
        [*RUN, "--force"],  # options that ask for work or checks: run here
        [*RUN, "--full"],
        [*RUN, "--retrain"],
        [*RUN, "--verify"],
        [*RUN, "--forc"],  # an abbreviation argparse takes for --force
        [*RUN, "--help"],
        [*RUN, "stray"],  # argparse refuses it
        ["run", "--source", "src", "--output"],  # argparse refuses it
    ],
)
def test_command_lines_a_watch_never_runs(argv):
    assert settings(argv) is None


def test_a_refusal_names_what_differs():
    own = settings(["watch", *RUN[1:], "--interval", "1"])
    request = {"argv": RUN, "cwd": "/work/a", "env": {}}
    assert cli._handoff_refusal(own, request) is None
    assert (
        cli._handoff_refusal(own, {**request, "argv": [*RUN, "--clean-copy-mode", "symlink"]})
        == "other options: --clean-copy-mode"
    )
    assert (
        cli._handoff_refusal(own, {**request, "cwd": "/elsewhere"})
        == "other options: --output, --source"
    )
    assert (
        cli._handoff_refusal(own, {**request, "env": {"DEDUP_SPLITS": "none"}})
        == "another environment: DEDUP_SPLITS"
    )
    assert cli._handoff_refusal(own, {**request, "argv": [*RUN, "--full"]}) == (
        "not a dedup run it runs"
    )
    assert cli._handoff_refusal(own, {}) == "not a dedup run it runs"


# ---------------------------------------------------------------------------- the socket

COMMAND = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from dedup_assets import cli
    from dedup_assets.watch_handoff import hand_over
    signal.signal(signal.SIGTERM, cli._early_stop)  # as `dedup` does
    status = hand_over(Path(sys.argv[1]), ["run"], lambda t: print(t, file=sys.stderr))
    print(f"status: {status}")
    """
)


def command(output: Path) -> subprocess.Popen:
    """The command's side (`hand_over`) in its own process, as `dedup run` calls it."""
    return subprocess.Popen(
        [sys.executable, "-c", COMMAND, str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_signals_as_a_shell_leaves_them,
    )


def _signals_as_a_shell_leaves_them() -> None:
    """SIGINT at its default in the command (this process may ignore it: test_watch.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class FakeWatch:
    """A watch's loop in a thread: each update takes the commands waiting, prints under
    `relayed` and ends with `status`; `stop_midway` closes them without an exit status."""

    def __init__(self, output: Path, refusal=lambda request: None) -> None:
        self.server = WatchServer(output, refusal)
        assert self.server.start() is None
        self.release = threading.Event()  # set: the update may end
        self.release.set()
        self.status, self.stop_midway, self.served, self.more = 0, False, 0, 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.server.wake.wait():
            handoffs = self.server.take()
            if not handoffs:
                return  # closed
            with relayed(handoffs):
                print("latent-dedup: an update")
                print("a warning", file=sys.stderr)
                for _ in range(self.more):
                    print("x" * 100)
            self.release.wait(30)
            self.served += 1
            for handoff in handoffs:
                if self.stop_midway:
                    handoff.close()
                else:
                    handoff.finish(self.status)

    def close(self) -> None:
        self.server.close()
        self.server.wake.set()
        self.thread.join(10)


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out


def test_an_accepted_update_prints_what_the_watch_prints_and_its_exit_status(output, capsys):
    watch = FakeWatch(output)
    watch.status = 3
    try:
        proc = command(output)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        watch.close()
    assert stdout == "latent-dedup: an update\nstatus: 3\n"
    assert stderr == "a warning\n"
    assert watch.served == 1
    assert "latent-dedup: an update" in capsys.readouterr().out  # the watch printed it too
    assert not socket_path(output).exists()  # removed as the watch stopped


def test_a_refused_update_runs_in_the_command_and_says_why(output):
    watch = FakeWatch(output, refusal=lambda request: f"other options: {request['argv'][0]}")
    try:
        stdout, stderr = command(output).communicate(timeout=30)
    finally:
        watch.close()
    assert stdout == "status: None\n"
    assert stderr == (
        f"dedup run: the dedup watch on {output} does not run this update (other options: run); "
        "running it here\n"
    )
    assert watch.served == 0


def test_a_watch_that_stops_during_the_update_leaves_it_to_the_command(output):
    watch = FakeWatch(output)
    watch.stop_midway = True
    try:
        stdout, stderr = command(output).communicate(timeout=30)
    finally:
        watch.close()
    assert stdout == "latent-dedup: an update\nstatus: None\n"
    assert stderr.endswith(f"pid {os.getpid()}) stopped before the update's end; running it here\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_command_stopped_during_the_update_leaves_the_watch_going(output, signum):
    watch = FakeWatch(output)
    watch.release.clear()  # the update waits
    try:
        proc = command(output)
        assert proc.stdout.readline() == "latent-dedup: an update\n"  # the watch has it
        proc.send_signal(signum)
        rest, stderr = proc.communicate(timeout=30)
        watch.release.set()
        for _ in range(100):
            if watch.served:
                break
            threading.Event().wait(0.05)
    finally:
        watch.close()
    assert rest == f"status: {128 + signum}\n"
    assert stderr.endswith(
        f"dedup run: interrupted; the update goes on in the dedup watch (pid {os.getpid()}), "
        "which serves this output\n"
    )
    assert watch.served == 1  # it ended its update, writing to a command that had gone


def test_no_watch_or_a_stale_socket_is_the_commands_own_run(output):
    stdout, stderr = command(output).communicate(timeout=30)
    assert (stdout, stderr) == ("status: None\n", "")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a watch killed: no listener
    stale.bind(str(socket_path(output)))
    stale.close()
    stdout, stderr = command(output).communicate(timeout=30)
    assert (stdout, stderr) == ("status: None\n", "")
    # A new watch takes the stale socket's place.
    watch = FakeWatch(output)
    try:
        stdout, _ = command(output).communicate(timeout=30)
    finally:
        watch.close()
    assert stdout.endswith("status: 0\n")


def test_one_watch_serves_an_output_and_a_long_path_none(output, tmp_path):
    watch = FakeWatch(output)
    try:
        assert WatchServer(output, lambda r: None).start() == (
            "another dedup watch serves this output"
        )
    finally:
        watch.close()
    deep = tmp_path / ("d" * max(1, MAX_SOCKET_PATH - len(str(tmp_path))))
    deep.mkdir()
    assert "longer than a socket's" in WatchServer(deep, lambda r: None).start()
    assert not socket_path(deep).exists()


def test_a_request_that_is_not_one_is_refused_and_the_watch_goes_on(output):
    watch = FakeWatch(output, refusal=lambda request: None)
    try:
        for garbage in (b"\n", b"[1, 2]\n", b"{not json\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(socket_path(output)))
                conn.sendall(garbage)
                reply = conn.makefile("rb").readline()
                assert reply == b"" or "refused" in json.loads(reply), garbage
        stdout, _ = command(output).communicate(timeout=30)
    finally:
        watch.close()
    assert stdout.endswith("status: 0\n")


def test_a_command_that_stops_reading_is_dropped_and_the_update_goes_on(output, monkeypatch):
    monkeypatch.setattr(watch_handoff, "SEND_TIMEOUT_S", 0.5)
    watch = FakeWatch(output)
    watch.more = 50_000  # 5 MB: more than the socket holds
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(socket_path(output)))
            conn.sendall(json.dumps({"argv": ["run"]}).encode() + b"\n")  # then never reads
            for _ in range(200):
                if watch.served:
                    break
                threading.Event().wait(0.05)
            assert watch.served == 1
    finally:
        watch.close()
