"""Helpers of the disk spool's tests: a directory made read-only for real (also as root), a
small file system that fills up, processes that run as PID 1, and a child that sends the
spool and takes commands on stdin."""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import child_env
from tinybird_export._spool import SUFFIX
from tinybird_export._spool_disk import Disk
from tinybird_export.testing import EventsServer, Reply


class ReadOnly:
    """Makes a directory refuse every change of its entries (create, rename, unlink) until
    ``off()``: by its mode for a normal user, and with the immutable attribute as root (root
    ignores modes). The files inside stay writable, as in a directory whose mode changed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.on_now = False

    def on(self) -> None:
        """Refuse changes from now on."""
        if os.geteuid() == 0:
            if shutil.which("chattr") is None:
                pytest.skip("cannot make a directory read-only as root: no chattr")
            done = subprocess.run(
                ["chattr", "+i", str(self.directory)], capture_output=True, check=False
            )
            if done.returncode:
                pytest.skip(f"cannot make a directory read-only as root: {done.stderr!r}")
        else:
            self.directory.chmod(0o500)
        self.on_now = True
        with contextlib.suppress(OSError):  # the proof that it holds
            (self.directory / "probe").touch()
            self.off()
            pytest.fail("the directory is still writable")

    def off(self) -> None:
        """Writable again."""
        if not self.on_now:
            return
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.directory)], check=True)
        else:
            self.directory.chmod(0o700)
        self.on_now = False


@functools.cache
def can_unshare(*flags: str) -> bool:
    """Whether this machine lets us run a process in new namespaces (``unshare``)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", *flags, "true"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def in_pid_namespace(args: list[str]) -> list[str]:
    """``args`` run as PID 1 of a new PID namespace, as every container's first process."""
    return ["unshare", "--pid", "--fork", "--kill-child", *args]


def spool_files(directory: Path) -> list[Path]:
    """Batch files of a spool directory (claimed or not), oldest first."""
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if SUFFIX in p.name)


def events_in(paths: list[Path]) -> list[str]:
    """The ``event`` of every line of spool files."""
    found = []
    for path in paths:
        _, _, body = path.read_bytes().partition(b"\n")
        found += [orjson.loads(line)["event"] for line in gzip.decompress(body).splitlines()]
    return found


WRITER = """
import logging, sys
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
handler = TinybirdHandler(spool_dir=sys.argv[1], batch_max_rows=int(sys.argv[3]),
                          flush_interval=0.05)
log.addHandler(handler)
for i in range(int(sys.argv[2])):
    log.warning("%s %d", sys.argv[4], i)
"""


def spool_at_exit(
    server: EventsServer,
    directory: Path,
    count: int,
    rows: int = 50,
    word: str = "old",
    *,
    pid_1: bool = False,
) -> None:
    """``count`` events ("old 0"...) written to the spool by a process that exits while the
    endpoint answers 503, in files of ``rows`` events (run as PID 1 with ``pid_1``)."""
    server.respond(Reply(status=503))
    args = [sys.executable, "-c", textwrap.dedent(WRITER), str(directory), str(count), str(rows)]
    result = subprocess.run(
        [*(in_pid_namespace([]) if pid_1 else []), *args, word],
        env={**os.environ, **child_env(server)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{count} event(s) not delivered at exit were spooled" in result.stderr, result.stderr
    server.reset()


DRIVEN = """
import json, logging, os, sys, time
if os.environ.get("CLOCK_STEP"):  # this process's clock is ahead of the others' (a step)
    step, wall, wall_ns = float(os.environ["CLOCK_STEP"]), time.time, time.time_ns
    time.time = lambda: wall() + step
    time.time_ns = lambda: wall_ns() + int(step * 1e9)
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
handler = TinybirdHandler(spool_dir=sys.argv[1], flush_interval=0.05, **settings)
log.addHandler(handler)
print("ready", flush=True)
for command in sys.stdin:
    word, _, arg = command.strip().partition(" ")
    if word == "log":
        count, _, text = arg.partition(" ")
        for i in range(int(count)):
            log.info("%s %d", text, i)
        print("logged", flush=True)
    elif word == "flush":
        print(handler.flush(float(arg)), flush=True)
    elif word == "stats":
        s = handler.stats()
        print(json.dumps({"sent": s.sent, "spooled": s.spooled, "unspooled": s.unspooled,
                          "dropped": s.dropped_by_reason, "queued": s.queued,
                          "emitted": s.emitted, "corrupt": s.spool_corrupt}), flush=True)
    elif word == "wait_unspooled":
        deadline = time.monotonic() + 20
        while handler.stats().unspooled < int(arg) and time.monotonic() < deadline:
            time.sleep(0.01)
        print(handler.stats().unspooled, flush=True)
    elif word == "exit":
        break
"""


class Driven:
    """A child process with a handler on ``spool_dir``, driven line by line."""

    def __init__(
        self,
        server: EventsServer,
        spool_dir: Path,
        settings: dict[str, Any] | None = None,
        *,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        args = [sys.executable, "-c", DRIVEN, str(spool_dir), orjson.dumps(settings or {}).decode()]
        self.proc = subprocess.Popen(
            [*(prefix or []), *args],
            env={**os.environ, **child_env(server), **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self.read() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            pytest.fail(f"the child did not start: {err}")

    def read(self) -> str:
        """The child's next line of output."""
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        """Send one command, return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stats(self) -> dict[str, Any]:
        """The handler's stats, as the child sees them."""
        answer: dict[str, Any] = orjson.loads(self.ask("stats"))
        return answer

    def exit(self, timeout: float = 60) -> tuple[int, str]:
        """Let it exit; its status and stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        """Stop it if it still runs (a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@contextlib.contextmanager
def driven(
    server: EventsServer, spool_dir: Path, settings: dict[str, Any] | None = None, **kwargs: Any
) -> Iterator[Driven]:
    """A ``Driven`` child, killed if the test fails before it exits."""
    child = Driven(server, spool_dir, settings, **kwargs)
    try:
        yield child
    finally:
        child.kill()


def in_mount_namespace(args: list[str]) -> list[str]:
    """``args`` run in a new mount namespace (a file system mounted there is its own)."""
    return ["unshare", "--mount", "--propagation", "private", *args]


FILLER = """
import atexit, json, logging, os, sys

def report():
    s = handler.stats()
    print(json.dumps({"emitted": s.emitted, "spooled": s.spooled, "dropped": s.dropped_by_reason}))

atexit.register(report)  # before the package's drain registers: runs after it
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
handler = TinybirdHandler(spool_dir=sys.argv[1], batch_max_rows=int(sys.argv[3]),
                          spool_max_bytes=int(sys.argv[4]), flush_interval=0.05, exit_timeout=2)
log.addHandler(handler)
for i in range(int(sys.argv[2])):
    log.warning("old %d %s", i, os.urandom(100).hex())  # barely compressible
"""
"""A process that spools ``argv[2]`` events at exit (its endpoint refuses), in files of
``argv[3]`` events, with ``spool_max_bytes`` ``argv[4]``; it prints its stats after the
exit drain."""

FULL_DISK = """
import json, os, subprocess, sys
directory, size, count, rows, filler = sys.argv[1:6]
os.makedirs(directory, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory], check=True)
wrote = subprocess.run([sys.executable, "-c", filler, directory, count, rows, str(1 << 30)],
                       capture_output=True, text=True, timeout=120)
print(json.dumps({"stats": wrote.stdout, "err": wrote.stderr}), flush=True)
sys.stdin.readline()  # the endpoint is back
sent = subprocess.run([sys.executable, "-c", "import tinybird_export as t, sys; "
                       "h = t.TinybirdHandler(spool_dir=sys.argv[1]); print(h.flush(30)); "
                       "print(h.stats().spool_corrupt)", directory],
                      capture_output=True, text=True, timeout=120)
flushed, corrupt = sent.stdout.split()
print(json.dumps({"flushed": flushed == "True", "corrupt": int(corrupt), "err": sent.stderr}))
"""
"""In a mount namespace: a small tmpfs as the spool, filled by one process at exit, then
sent by the next."""


class FaultyDisk(Disk):
    """A disk whose chosen calls fail as a real one does: ``fail("rename", errno.EROFS)``
    makes every rename raise that error (``on`` narrows it to paths containing a text,
    ``times`` to the next N calls), until ``heal()``."""

    def __init__(self) -> None:
        self.faults: list[tuple[str, int, str, list[int]]] = []
        self.calls: collections.Counter[str] = collections.Counter()

    def fail(self, operation: str, code: int, *, on: str = "", times: int = -1) -> None:
        """Make ``operation`` raise ``OSError(code)`` from now on."""
        self.faults.append((operation, code, on, [times]))

    def heal(self) -> None:
        """Every call works again."""
        self.faults.clear()

    def check(self, operation: str, path: str | Path | int) -> None:
        """Raise the fault set for ``operation`` on ``path``, if any."""
        self.calls[operation] += 1
        for name, code, on, left in self.faults:
            if name == operation and on in str(path) and left[0] != 0:
                left[0] -= 1
                raise OSError(code, os.strerror(code), str(path))
