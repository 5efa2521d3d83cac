"""The bytes a spool directory holds, one count shared by every process that writes there.

``spool_max_bytes`` bounds the directory, not one process: eight gunicorn workers spilling at
once must not each find room for their own batch. So the count lives in the directory, in
``.ledger``, and every change to it (a reservation before a file is written, a removal)
is made under an exclusive advisory lock on it, with the change on disk itself: a writer
reserves its file's size and creates its temporary file in one locked step, so the count
always covers every file being written, and a recount (when the spool scans) sees them.
The lock is held for a few system calls only, and never waited for long (``Disk.try_lock``).

What it can hold wrong: a process killed between its reservation and its rename leaves its
temporary file, counted until the next scan removes it; a remover that could not take the
lock leaves the count too high until the next recount. Both err on the side of the bound.
On a file system without locks each process counts alone, from a listing at most a second
old: the bound then holds per process, not for the directory.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from tinybird_export._spool_disk import Disk

LEDGER: Final = ".ledger"
_WIDTH: Final = 20
_LOCAL_RECOUNT: Final = 1.0


class Entry:
    """The count inside one locked step: read it, change it; written back at the end, or
    at once with ``save`` (a reservation must be on disk before its file is written).
    """

    def __init__(self, held: int, save: Callable[[int], None]) -> None:
        self.held = held
        self._save = save

    def save(self) -> None:
        """Write the count now; ``OSError`` if the ledger could not be written."""
        self._save(self.held)


class Ledger:
    """The directory's byte count.

    Args:
        directory: The spool directory.
        disk: Its system calls.
        recount: What the directory holds now, counted file by file (with every temporary
            file at the size it reserved); ``None`` if it cannot be counted.
    """

    def __init__(self, directory: Path, disk: Disk, recount: Callable[[], int | None]) -> None:
        self._path = directory / LEDGER
        self._disk = disk
        self._recount = recount
        self._lock = threading.Lock()  # flock does not exclude threads sharing its file
        self._fd: int | None = None
        self._shared = True  # the file system has locks
        self._counted_at = -1e9
        self.held = 0
        """The count as this process last read it (for ``stats()``)."""

    @contextlib.contextmanager
    def step(self, wait: float = 0.5) -> Iterator[Entry | None]:
        """One locked step on the count; ``None`` if the lock could not be had in ``wait``
        seconds, or the ledger cannot be used (the caller then refuses, or leaves the
        count as it is: too high, never too low).
        """
        if not self._lock.acquire(timeout=wait):
            yield None
            return
        try:
            fd = self._locked(wait)
            if fd is None and self._shared:
                yield None
                return
            entry = Entry(self._read(fd), lambda held: self._write(fd, held, raising=True))
            yield entry
            if entry.held != self.held:
                self._write(fd, entry.held)
        finally:
            if self._fd is not None and self._shared:
                self._disk.unlock(self._fd)
            self._lock.release()

    def remove(self, path: Path, size: int) -> None:
        """Unlink ``path`` and count its ``size`` off, in one locked step (a file already
        gone is no error; another ``OSError`` is raised, the count unchanged).
        """
        with self.step() as entry:
            try:
                self._disk.unlink(path)
            except FileNotFoundError:
                return
            if entry is not None:
                entry.held -= size

    def peek(self) -> None:
        """Read the count without the lock (for ``stats()`` before this process's first
        change: one read, no listing); left as it is if the ledger is missing or torn.
        """
        try:
            fd = self._disk.open(self._path)
        except OSError:
            return
        try:
            text = self._disk.read(fd, _WIDTH + 1, 0)
        except OSError:
            return
        finally:
            self._disk.close(fd)
        if len(text) == _WIDTH and text.isdigit():
            self.held = int(text)

    def recount(self) -> None:
        """Count the directory afresh, under the lock (a scan: crashed writers' leftovers
        were removed, other processes' removals may have gone uncounted).
        """
        with self.step() as entry:
            counted = self._recount() if entry is not None else None
            if entry is not None and counted is not None:
                entry.held, self._counted_at = counted, time.monotonic()

    def _locked(self, wait: float) -> int | None:
        """The ledger's descriptor, locked; ``None`` (shared) if that failed."""
        disk = self._disk
        if self._fd is None:
            try:
                self._fd = disk.open(self._path, write=True, create=True)
            except OSError:
                return None
        try:
            if disk.try_lock(self._fd, exclusive=True, wait=wait):
                return self._fd
            return None
        except OSError:  # no locks on this file system: count alone (the module docstring)
            self._shared = False
            return None

    def _read(self, fd: int | None) -> int:
        if fd is None:  # alone: a recent listing, and this process's changes since
            if time.monotonic() - self._counted_at > _LOCAL_RECOUNT:
                self.held, self._counted_at = self._counted(), time.monotonic()
            return self.held
        try:
            text = self._disk.read(fd, _WIDTH + 1, 0)
        except OSError:
            text = b""
        if len(text) == _WIDTH and text.isdigit():
            self.held = int(text)
        else:  # new, or torn by a crash: count the directory
            self.held = self._counted()
            self._write(fd, self.held)
        return self.held

    def _counted(self) -> int:
        counted = self._recount()
        return self.held if counted is None else counted

    def _write(self, fd: int | None, held: int, *, raising: bool = False) -> None:
        held = max(held, 0)
        if fd is not None:
            try:
                self._disk.pwrite(fd, b"%0*d" % (_WIDTH, held), 0)
            except OSError:
                if raising:
                    raise
                return  # a removal not counted off: too high until the next recount
        self.held = held

    def forget_in_child(self) -> None:
        """A forked child: close the parent's descriptor (the child opens its own: a lock
        on a shared descriptor would not exclude the parent).
        """
        if self._fd is not None:
            self._disk.close(self._fd)
            self._fd = None
