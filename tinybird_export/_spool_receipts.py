"""Receipts: how a process tells another what became of the spool files it wrote.

When a process sends (or drops) a file another live process wrote (gunicorn workers sharing
a directory, an overlapping restart), it leaves the writer a receipt,
``.receipt-<writer identity>-<batch>``: the writer's channel, the event count and the
outcome. The writer reads its receipts when it lists the directory, and its channel's
counters follow (from ``spooled`` to ``sent``, or to a drop reason), so its ``stats()`` and
its ``flush()`` are true whichever process sent its events. A dead writer gets none (a
restart's predecessor has no counters left), and a scan removes the receipts of the dead.

A receipt is written to a temporary name and renamed, so a writer never reads half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import orjson

from tinybird_export._spool_disk import Disk
from tinybird_export._spool_format import RECEIPT, SUFFIX, SpooledBatch, temporary_name

_KEPT: Final = 10_000
"""Receipts read and kept for channels that have not taken them (the oldest go first)."""


@dataclasses.dataclass(frozen=True)
class Receipt:
    """Another process resolved one of this process's files: what became of its events."""

    serial: int  # the writing channel
    count: int
    outcome: str  # "sent", or a drop reason
    quarantined: int


class Receipts:
    """The receipts this process owes others, and those left for it.

    Args:
        directory: The spool directory.
        disk: Its system calls.
        identity: This process's identity.
    """

    def __init__(self, directory: Path, disk: Disk, identity: str) -> None:
        self._directory = directory
        self._disk = disk
        self._identity = identity
        self._lock = threading.Lock()  # the lists
        self._writing = threading.Lock()  # one writer at a time
        self._owed: list[tuple[SpooledBatch, str, int]] = []
        self._read: list[Receipt] = []

    def owe(self, batch: SpooledBatch, outcome: str, quarantined: int) -> None:
        """This process resolved ``batch``, which another process wrote."""
        if batch.owner[0] != self._identity:
            with self._lock:
                self._owed.append((batch, outcome, quarantined))

    def leave(self, alive: Callable[[str], bool], wait: float = 0.0) -> None:
        """Write the receipts owed to writers that live. One thread at a time: the exit
        waits (``wait``) for a sender writing some, which the interpreter would cut short.
        """
        if not (self._writing.acquire(timeout=wait) if wait else self._writing.acquire(False)):
            return
        try:
            with self._lock:
                owed, self._owed = self._owed, []
            for batch, outcome, quarantined in owed:
                writer, serial = batch.owner
                if alive(writer):
                    self._write(batch, writer, serial, outcome, quarantined)
        finally:
            self._writing.release()

    def _write(
        self, batch: SpooledBatch, writer: str, serial: int, outcome: str, quarantined: int
    ) -> None:
        stem = batch.name.removesuffix(SUFFIX)
        data = orjson.dumps(
            {"serial": serial, "count": batch.count, "outcome": outcome, "q": quarantined}
        )
        final = self._directory / f"{RECEIPT}{writer}-{stem}"
        temporary = self._directory / temporary_name(self._identity, 0, f"r{stem}")
        disk = self._disk
        try:
            fd = disk.create(temporary)
            try:
                disk.write_all(fd, data)
            finally:
                disk.close(fd)
            disk.rename(temporary, final)
        except OSError:  # the writer's count stays as it was (its events stay "spooled")
            with contextlib.suppress(OSError):
                disk.unlink(temporary)

    def mine(self, name: str) -> bool:
        """Whether ``name`` is a receipt left for this process."""
        return name.startswith(f"{RECEIPT}{self._identity}-")

    def read(self, name: str) -> None:
        """Read and remove the receipt ``name``, for ``take``."""
        path = self._directory / name
        disk = self._disk
        try:
            fd = disk.open(path)
            try:
                data = disk.read(fd, 4096, 0)
            finally:
                disk.close(fd)
            disk.unlink(path)
        except OSError:
            return
        try:
            fields = orjson.loads(data)
            serial, count, outcome = fields["serial"], fields["count"], fields["outcome"]
            receipt = Receipt(int(serial), int(count), str(outcome), int(fields["q"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        with self._lock:
            self._read.append(receipt)
            del self._read[:-_KEPT]  # for channels gone since: the oldest go

    def take(self, serials: set[int]) -> list[Receipt]:
        """The receipts read for this process's channels ``serials``."""
        with self._lock:
            mine = [r for r in self._read if r.serial in serials]
            self._read = [r for r in self._read if r.serial not in serials]
        return mine

    @property
    def owed(self) -> bool:
        """Whether receipts wait to be written."""
        return bool(self._owed)
