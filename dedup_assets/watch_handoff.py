"""`dedup run` handed to a `dedup watch` that serves the same output with the same settings.

A watch keeps its imports, its workers, its open instance and what it read from the
output; a new `dedup run` process pays for all of that again before it looks at a new
image (about 3 s of a EuroSAT run with 1% new images, against about 1.2 s for the same
update in a running watch). So a watch listens on a Unix socket in its output folder
(`OutputLayout.watch_socket`), and `dedup run` with the same source, output, options and DEDUP_*
environment asks it for the update instead of running it: the watch lists the source at
once (no --interval, no --settle), runs the update as its own, and relays what it prints
and its exit status; the command prints them as if it had run it. With other settings the
watch refuses and the command runs here, as it would without a watch (waiting for the
output's lock is `dedup run`'s own rule). The command never depends on the watch: no
socket, a stale one, a refusal, or a watch that stops before the update's end, and it
runs the update itself.

The protocol is JSON lines. The command sends one request (`argv`, `cwd`, `env`, `pid`);
the watch answers `{"refused": why}`, or `{"accepted": pid}` then `{"out": text}` and
`{"err": text}` as it prints, and `{"exit": status}` last. No Dagster import here: the
command's side runs before its heavy imports.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

from dedup_assets.core.data.layout import OutputLayout

MAX_SOCKET_PATH = 100
"""Bytes a Unix socket's path may take (108 on Linux, 104 on macOS, with the final NUL):
a watch whose output path is longer serves no command, and says so."""
REPLY_TIMEOUT_S = 5.0
"""Seconds the command waits for the watch's accepting or refusing its request."""
SEND_TIMEOUT_S = 10.0
"""Seconds the watch waits to hand a line to a command that does not read it (suspended,
say) before it drops that command; the update goes on."""
ENV_PREFIX = "DEDUP_"
"""Environment variables that change a run's settings: a handed-over run needs the same."""


def socket_path(output: Path | str) -> Path:
    """Where the watch of `output` listens (`OutputLayout.watch_socket`)."""
    return OutputLayout(Path(output)).watch_socket


def settings_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that change a run's settings (`ENV_PREFIX`)."""
    env = os.environ if env is None else env
    return {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIX)}


class Handoff:
    """A command's update, accepted: send it what the watch prints, then its exit status."""

    def __init__(self, conn: socket.socket, pid: int | None = None) -> None:
        self.conn, self.pid = conn, pid  # the command's process
        self.open = True

    def send(self, message: dict[str, Any]) -> None:
        if not self.open:
            return
        try:
            self.conn.sendall(json.dumps(message).encode() + b"\n")
        except OSError:  # the command was stopped (Ctrl-C): the update goes on without it
            self.close()

    def finish(self, status: int) -> None:
        self.send({"exit": status})
        self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            with suppress(OSError):
                self.conn.close()


class WatchServer:
    """The watch's side: a thread accepting commands on `socket_path(output)`. `refusal`
    tells why a request's settings are not the watch's (None: they are). Accepted requests
    wait in `pending` (and set `wake`) until the watch's loop takes them (`take`)."""

    def __init__(self, output: Path, refusal: Callable[[dict], str | None]) -> None:
        self.path = socket_path(output)
        self.refusal = refusal
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[Handoff] = []
        self._sock: socket.socket | None = None
        self._closed = False

    def start(self) -> str | None:
        """Listen; None once listening, else why not (another live watch, a long path)."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            return f"its output's path is longer than a socket's ({MAX_SOCKET_PATH} bytes)"
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                return "another dedup watch serves this output"
            self.path.unlink(missing_ok=True)  # a watch that ended without removing it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fsencode(self.path))
            sock.listen(8)
        except OSError as exc:
            sock.close()
            return f"its socket could not be made ({exc.strerror or exc})"
        self._sock = sock
        threading.Thread(target=self._accept, name="dedup-watch-handoff", daemon=True).start()
        return None

    def _accept(self) -> None:
        while not self._closed and self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            try:
                self._answer(conn)
            except Exception:  # noqa: BLE001 - a bad request never stops the watch
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(REPLY_TIMEOUT_S)
        with conn.makefile("rb") as lines:
            request = json.loads(lines.readline() or b"null")
        conn.settimeout(SEND_TIMEOUT_S)  # a command that stops reading never stalls the watch
        why = "not a request" if not isinstance(request, dict) else self.refusal(request)
        pid = request.get("pid") if isinstance(request, dict) else None
        handoff = Handoff(conn, pid if isinstance(pid, int) else None)
        with self._lock:
            if why is None and self._closed:
                why = "the watch is stopping"
            if why is None:
                handoff.send({"accepted": os.getpid()})
                self._pending.append(handoff)
                self.wake.set()
                return
        handoff.send({"refused": why})
        handoff.close()

    def requested(self) -> bool:
        """Whether a command waits for an update."""
        with self._lock:
            return any(h.open for h in self._pending)

    def take(self) -> list[Handoff]:
        """The commands waiting, for the update that starts now."""
        with self._lock:
            taken, self._pending = [h for h in self._pending if h.open], []
            self.wake.clear()
            return taken

    def close(self) -> None:
        """Stop listening and remove the socket; commands still waiting run their own."""
        with self._lock:
            self._closed = True
            waiting, self._pending = self._pending, []
        for handoff in waiting:
            handoff.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    """Whether something listens at the socket `path` now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fsencode(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class _Relay:
    """A stream that writes to `stream` and to each open handoff as `kind` messages."""

    def __init__(self, stream: TextIO, kind: str, handoffs: list[Handoff]) -> None:
        self.stream, self.kind, self.handoffs = stream, kind, handoffs
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        if text:
            with self._lock:
                for handoff in self.handoffs:
                    handoff.send({self.kind: text})
        return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def relayed(handoffs: list[Handoff]) -> Iterator[None]:
    """sys.stdout and sys.stderr copied to `handoffs` while inside (nothing when empty)."""
    if not handoffs:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Relay(out, "out", handoffs), _Relay(err, "err", handoffs)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def hand_over(output: Path, argv: list[str], say: Callable[[str], None]) -> int | None:
    """The command's side: ask the watch serving `output` to run `argv`'s update, print
    what it prints, and return its exit status; None when the command must run it itself
    (no watch, a refusal, a watch that stopped first). `say` tells the user why not, where
    a watch was there to ask."""
    path = socket_path(output)
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    accepted: int | None = None
    try:
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            conn.connect(os.fsencode(path))
        except OSError:
            return None  # a watch that ended without removing its socket
        request = {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": settings_environment(),
            "pid": os.getpid(),
        }
        conn.sendall(json.dumps(request).encode() + b"\n")
        with conn.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                if "refused" in message:
                    say(
                        f"dedup run: the dedup watch on {output} does not run this update "
                        f"({message['refused']}); running it here"
                    )
                    return None
                if "accepted" in message:
                    accepted = int(message["accepted"])
                    conn.settimeout(None)  # an update takes what it takes
                elif "out" in message:
                    sys.stdout.write(message["out"])
                    sys.stdout.flush()
                elif "err" in message:
                    sys.stderr.write(message["err"])
                    sys.stderr.flush()
                elif "exit" in message:
                    return int(message["exit"])
        if accepted is not None:
            say(
                f"dedup run: the dedup watch on {output} (pid {accepted}) stopped before the "
                "update's end; running it here"
            )
        return None
    except KeyboardInterrupt as exc:
        if accepted is None:
            raise
        say(
            f"dedup run: interrupted; the update goes on in the dedup watch (pid {accepted}), "
            "which serves this output"
        )
        return int(getattr(exc, "exit_status", 130))
    except (OSError, ValueError) as exc:  # a timeout, a broken reply: run it here
        if accepted is None:
            say(f"dedup run: the dedup watch on {output} did not answer ({exc}); running it here")
            return None
        say(f"dedup run: the dedup watch on {output} stopped answering ({exc}); running it here")
        return None
    finally:
        conn.close()
