"""The system calls the disk spool makes, in one place: whole writes, bounded reads, locks.

Every call the spool makes on its directory goes through a ``Disk``, so that a test can make
any one of them fail the way a disk does (a read-only remount, EIO, ENOSPC, a short write):
``tests`` subclass it and override ``check``. The spool treats every ``OSError`` from here as
an answer, never as a bug: it is handled where it happens (see ``_spool``).

Two helpers carry the crash-safety rules:

- ``write_all`` writes every byte or raises: ``os.write`` may write fewer bytes than asked
  (a disk filling up), and a count it returns is never ignored;
- ``try_lock`` takes an advisory ``flock`` without ever blocking for long: a process stopped
  (SIGSTOP, a frozen function) while holding one must not stop the others' senders.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Final

_LOCK_WAIT: Final = 0.5
_FAILPOINT_ENV: Final = "TINYBIRD_SPOOL_FAILPOINT"  # "<point>:<n>"
"""Seconds a sender waits at most for another process's lock on the spool's ledger."""


class Failpoints:
    """The tests' crash injection: ``TINYBIRD_SPOOL_FAILPOINT=write:3`` kills the process
    with SIGKILL the third time the spool reaches its ``write`` point (a crash with half a
    temporary file); nothing without it.
    """

    def __init__(self) -> None:
        point, _, count = os.environ.get(_FAILPOINT_ENV, "").partition(":")
        self._remaining = {point: int(count)} if point and count.isdigit() else {}

    def reach(self, point: str) -> None:
        """The spool reached ``point``: the process dies there if the test says so."""
        remaining = self._remaining.get(point)
        if remaining is None:
            return
        if remaining <= 1:
            os.kill(os.getpid(), signal.SIGKILL)
        self._remaining[point] = remaining - 1


def why(exc: OSError) -> str:
    """What the disk said, for a message: its ``strerror``, else the error itself."""
    return exc.strerror or str(exc) or type(exc).__name__


class Disk:
    """The spool's system calls (``os`` and ``fcntl``), each first passing ``check``."""

    def check(self, operation: str, path: str | Path | int) -> None:
        """A test's fault injection: raise ``OSError`` here to make ``operation`` fail."""

    def listdir(self, directory: Path) -> list[str]:
        """The names of the regular files in ``directory``."""
        self.check("listdir", directory)
        with os.scandir(directory) as entries:
            return [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]

    def mkdir(self, path: Path) -> None:
        """Create ``path`` (mode 0700) and its parents, if missing."""
        self.check("mkdir", path)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def create(self, path: Path) -> int:
        """A new file, for writing only; ``FileExistsError`` if ``path`` exists."""
        self.check("create", path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, 0o600)

    def open(self, path: Path, *, write: bool = False, create: bool = False) -> int:
        """An existing file (or a new one with ``create``), to read (and write)."""
        self.check("open", path)
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        return os.open(path, flags, 0o600)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """One ``os.write``: how many bytes it took (maybe fewer than given)."""
        self.check("write", fd)
        return os.write(fd, data)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte of ``data``, or raise: ``OSError(ENOSPC)`` when the disk takes
        no more (a write that makes no progress).
        """
        view = memoryview(data)
        while view:
            written = self.write(fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write ``data`` at ``offset`` (a few bytes: the ledger, a state byte), whole."""
        self.check("pwrite", fd)
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def read(self, fd: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        self.check("read", fd)
        return os.pread(fd, size, offset)

    def size(self, fd: int) -> int:
        """The open file's size."""
        self.check("stat", fd)
        return os.fstat(fd).st_size

    def stat(self, path: Path) -> os.stat_result:
        """``path``'s status (not following a symlink)."""
        self.check("stat", path)
        return os.stat(path, follow_symlinks=False)

    def fsync(self, fd: int) -> None:
        """Flush an open file to the disk."""
        self.check("fsync", fd)
        os.fsync(fd)

    def fsync_directory(self, directory: Path) -> None:
        """Make the directory's entries (a rename) durable."""
        self.check("fsync", directory)
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, fd: int) -> None:
        """Close ``fd``; never raises (a failed close leaves nothing to do)."""
        with contextlib.suppress(OSError):
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        """Rename atomically (the loser of a race for ``source`` gets ENOENT)."""
        self.check("rename", source)
        os.rename(source, target)

    def unlink(self, path: Path) -> None:
        """Remove a file."""
        self.check("unlink", path)
        os.unlink(path)

    def touch(self, path: Path) -> None:
        """Set ``path``'s times to now (a heartbeat)."""
        self.check("utime", path)
        os.utime(path)

    def try_lock(self, fd: int, *, exclusive: bool, wait: float = 0.0) -> bool:
        """Take an advisory lock on ``fd`` (``flock``): whether it was taken within
        ``wait`` seconds. ``OSError`` if the file system has no locks (``ENOLCK``...).
        """
        self.check("lock", fd)
        operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + min(wait, _LOCK_WAIT)
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, operation)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(pause)  # another process holds it for a few system calls
            pause = min(pause * 2, 0.01)

    def unlock(self, fd: int) -> None:
        """Release the lock on ``fd``; never raises."""
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
