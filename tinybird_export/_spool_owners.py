"""Who holds a spool file: a process identity per process start, and whether it still lives.

A PID does not tell processes apart: in containers every incarnation is PID 1 (a restarted
one would take its predecessor's claims for its own), and two containers sharing a volume
see each other's PIDs as their own. A clock does not tell a live claim from a stale one
either: a wall-clock step makes every claim look old, and monotonic clocks are per boot.

So each process draws a random ``identity`` at its start (again in a forked child), and
holds an advisory lock (``flock``) on its owner file, ``.owner-<identity>``, for as long as
it lives. The kernel drops the lock when the process dies, however it dies, so another
process (in any PID namespace, on the same volume) asks the lock itself: taken, the owner
lives; free, or no owner file, it is gone and its claims and temporary files can go. The
owner file is locked before it gets its name (it is created as ``.owner-<identity>.new``
and renamed), so it is never seen unlocked while its process lives.

On a file system without locks (some network mounts) an owner renews its file's time every
minute instead, and another process counts it dead once it saw no renewal for ten minutes
of its own monotonic clock: only whether the time *changed* is compared, never its value,
so no clock step fools it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Final

import orjson

from tinybird_export import _diagnostics
from tinybird_export._spool_disk import Disk
from tinybird_export._spool_format import OWNER

STALE: Final = 600.0
"""Seconds without a renewal after which an owner on a file system without locks is dead."""
HEARTBEAT: Final = 60.0
"""How often an owner on a file system without locks renews its file."""
_ALIVE_FOR: Final = 1.0
"""Seconds an owner found alive is not asked again (a scan asks once per claimed file)."""


def new_identity() -> str:
    """A token unique to this process start (64 random bits, as 16 hex digits)."""
    return os.urandom(8).hex()


class Owners:
    """This process's identity in one spool directory, and the other owners' liveness.

    Args:
        directory: The spool directory.
        disk: Its system calls.
    """

    def __init__(self, directory: Path, disk: Disk) -> None:
        self.directory = directory
        self.identity = new_identity()
        self._disk = disk
        self._fd: int | None = None  # our owner file, locked
        self._locks = True  # whether the file system has locks (else: heartbeats)
        self._beat_at = 0.0
        self._dead: set[str] = set()
        self._alive_until: dict[str, float] = {}
        self._renewals: dict[str, tuple[int, float]] = {}  # no locks: (mtime_ns, seen at)

    @property
    def path(self) -> Path:
        """This process's owner file."""
        return self.directory / f"{OWNER}{self.identity}"

    def ensure(self) -> bool:
        """This process's owner file exists, locked (made at the first need: before its
        first claim or temporary file); whether it does.
        """
        if self._fd is not None:
            return True
        disk, new = self._disk, self.directory / f"{OWNER}{self.identity}.new"
        try:
            fd = disk.open(new, write=True, create=True)
        except OSError:
            return False
        try:
            try:
                locked = disk.try_lock(fd, exclusive=True)
            except OSError as exc:  # no locks here: liveness by heartbeats
                locked = self._locks = False
                _diagnostics.say_once(
                    f"spool-locks:{self.directory}",
                    f"the spool {self.directory} has no file locks ({exc}): a process that "
                    f"dies holding spool files leaves them for {STALE:.0f} s.",
                )
            if self._locks and not locked:
                raise OSError("the new owner file is locked by another process")
            about = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            disk.write_all(fd, orjson.dumps(about))
            disk.rename(new, self.path)
        except OSError:
            disk.close(fd)  # (unlocks)
            with contextlib.suppress(OSError):
                disk.unlink(new)
            return False
        self._fd = fd
        return True

    def heartbeat(self, now: float) -> None:
        """Renew this process's owner file, on a file system without locks."""
        if self._locks or self._fd is None or now - self._beat_at < HEARTBEAT:
            return
        self._beat_at = now
        with contextlib.suppress(OSError):
            self._disk.touch(self.path)

    def alive(self, identity: str, now: float) -> bool:
        """Whether the process ``identity`` may still hold its files (``now``: this
        process's ``time.monotonic()``). When it cannot tell, it says alive: sending a
        file twice is worse than sending it late.
        """
        if identity == self.identity:
            return True
        if identity in self._dead:
            return False
        if self._alive_until.get(identity, 0.0) > now:
            return True
        disk, path = self._disk, self.directory / f"{OWNER}{identity}"
        try:
            fd = disk.open(path)
        except FileNotFoundError:
            self._dead.add(identity)
            return False
        except OSError:
            return True
        try:
            free = disk.try_lock(fd, exclusive=False)
            if free:
                disk.unlock(fd)
        except OSError:  # no locks: has it renewed its file in STALE seconds?
            free = self._silent(identity, path, now)
        finally:
            disk.close(fd)
        if free:
            self._dead.add(identity)
            return False
        self._alive_until[identity] = now + _ALIVE_FOR
        return True

    def _silent(self, identity: str, path: Path, now: float) -> bool:
        try:
            mtime = self._disk.stat(path).st_mtime_ns
        except OSError:
            return False
        seen = self._renewals.get(identity)
        if seen is None or seen[0] != mtime:
            self._renewals[identity] = (mtime, now)
            return False
        return now - seen[1] > STALE

    def forget_in_child(self) -> None:
        """A forked child: close the parent's owner file, leaving the parent's lock held
        (closing a copy releases nothing; unlocking it would release the parent's).
        """
        if self._fd is not None:
            self._disk.close(self._fd)
            self._fd = None
