"""Spool files the server acknowledged but the directory would not let go of.

Removing an acknowledged file can fail (a read-only remount, EIO): the file must then never
be sent again, nor waited for by a flush, and must go once the directory lets it. This
process marks it acknowledged in place (its state byte: a read-only directory still lets
the writer write its own file), keeps its name as settled (the listing no longer counts it
as pending), and retries the removal; a file already marked that a claim finds is removed,
or remembered, the same way. If this process ends first, the next one finds the mark (or,
unmarked, may send the whole batch again: deduplicate on ``event_id``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from tinybird_export import _diagnostics
from tinybird_export._spool_disk import Disk, why
from tinybird_export._spool_format import ACKNOWLEDGED, SpooledBatch
from tinybird_export._spool_ledger import Ledger


class Removals:
    """The acknowledged files of one spool directory still to remove (this process's).

    Args:
        directory: The spool's directory (for messages).
        disk: Its system calls.
        ledger: The directory's byte count, which a removal decreases.
    """

    def __init__(self, directory: Path, disk: Disk, ledger: Ledger) -> None:
        self._directory = directory
        self._disk = disk
        self._ledger = ledger
        self._lock = threading.Lock()
        self._unremoved: dict[Path, tuple[str, int]] = {}  # acknowledged: (name, size)
        self._settled: set[str] = set()  # their names: no longer waited for

    @property
    def owed(self) -> bool:
        """Whether a removal waits for the directory to allow it."""
        return bool(self._unremoved)

    def settled(self) -> set[str]:
        """The names of acknowledged files still on disk (never pending, never sent)."""
        with self._lock:
            return set(self._settled)

    def acknowledged(self, batch: SpooledBatch) -> None:
        """The server acknowledged (or refused for good) ``batch``: remove its file, or mark
        it acknowledged in place and remove it once the directory lets it.
        """
        try:
            self._ledger.remove(batch.path, batch.size)
        except OSError as exc:
            self._mark(batch, exc)

    def found_marked(self, path: Path, name: str, size: int) -> None:
        """A claim found a file marked acknowledged (sent by a process that could not remove
        it): remove it now, or once the directory lets it; it is never sent again.
        """
        try:
            self._ledger.remove(path, size)
        except OSError:
            self._remember(path, name, size)

    def retry(self) -> None:
        """Try the owed removals again, in order, until the directory refuses one."""
        with self._lock:
            unremoved = list(self._unremoved.items())
        for path, (name, size) in unremoved:
            try:
                self._ledger.remove(path, size)
            except OSError:
                return  # still refused: next time
            with self._lock:
                del self._unremoved[path]
                self._settled.discard(name)

    def _mark(self, batch: SpooledBatch, exc: OSError) -> None:
        """Acknowledged, not removable: mark it so in place, remember to remove it, say so."""
        marked = False
        try:
            fd = self._disk.open(batch.path, write=True)
            try:
                self._disk.pwrite(fd, ACKNOWLEDGED, 0)
                self._disk.fsync(fd)
                marked = True
            finally:
                self._disk.close(fd)
        except OSError:
            pass
        self._remember(batch.path, batch.name, batch.size)
        then = (
            "it is marked sent, and removed once the directory lets it"
            if marked
            else "it is removed once the directory lets it; if this process ends before, "
            "the next one may send it again (the whole batch: deduplicate on event_id)"
        )
        _diagnostics.say_once(
            f"spool-remove:{self._directory}",
            f"cannot remove an acknowledged spool file in {self._directory} ({why(exc)}): {then}.",
        )

    def _remember(self, path: Path, name: str, size: int) -> None:
        with self._lock:
            self._unremoved[path] = (name, size)
            self._settled.add(name)
