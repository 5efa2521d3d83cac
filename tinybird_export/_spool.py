"""An opt-in disk spool: batches that cannot be delivered now outlive the memory bound, the
exit budget and the process.

One file per batch (``_spool_format``: its names, header and checks). Each is written to a
temporary name whose size was reserved in the directory's shared count (``_spool_ledger``),
written whole (a short write is finished or fails), fsynced, renamed, and its directory
fsynced: a file exists whole or not at all, and a disk that fills up leaves no part of one.

Several processes may share a directory (gunicorn workers, a restart that overlaps the old
process, containers on one volume): a sender claims a file by renaming it to
``<name>.claimed-<identity>`` (atomic; the loser of a race gets ``FileNotFoundError``) and
removes it once the server acknowledged it. Identities and liveness are ``_spool_owners``'s:
a dead process's claims and temporary files are released by the next scan, a live one's
never, whatever the clocks say. When another process sends (or sets aside) a file whose
writer lives, it leaves the writer a receipt, so the writer's ``stats()`` follow its events.

Every ``OSError`` is handled where it happens (a read-only directory, EIO, ENOSPC): a write
is refused and says why (``write`` returns its ``Refusal``), a claim gives up, and a file
acknowledged but not removable is marked acknowledged in place and removed once the
directory lets it (``_spool_removals``); nothing here raises into a sender or the exit
drain. A file that fails its checks is moved to ``corrupt/``, counted, and never sent. Files
for a host or data source that no producer of this process sends to are left alone, and
reported once.

The directory is listed once per second at most, and its batch names kept sorted per lane,
so that draining N files costs O(N log N), not one listing per file; a sender claims as many
consecutive small files as fit in one request (``claim``). Only sender threads, the exit
drain and ``flush()`` call this module: never the caller's thread of a logging call.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

from tinybird_export import _diagnostics
from tinybird_export._spool_disk import Disk, Failpoints, why
from tinybird_export._spool_format import (
    CLAIMED,
    SUFFIX,
    Acknowledged,
    SpooledBatch,
    SpoolError,
    batch_name,
    encode,
    gzip,
    host_key,
    read,
    temporary_name,
)
from tinybird_export._spool_ledger import Ledger
from tinybird_export._spool_listing import LISTING_TTL, Key, Listing
from tinybird_export._spool_owners import Owners
from tinybird_export._spool_receipts import Receipt, Receipts
from tinybird_export._spool_removals import Removals
from tinybird_export._spool_upkeep import SCAN_EVERY, count_held, scan

__all__ = [
    "LISTING_TTL",
    "SUFFIX",
    "Receipt",
    "Refusal",
    "Spool",
    "SpoolError",
    "SpooledBatch",
    "host_key",
]

_FULL: Final = (errno.ENOSPC, errno.EDQUOT)


class Refusal(NamedTuple):
    """Why the spool refused one write: returned by that call, never kept on the spool
    (lanes write at once: a later write must not answer for an earlier one).

    Attributes:
        reason: The drop reason: ``spool_full`` or ``spool_error``.
        why: What the disk (or the bound) said.
    """

    reason: str
    why: str


class Spool:
    """One spool directory, as this process sees it.

    Args:
        directory: Where the files live (created, mode 0700).
        max_bytes: What the directory may hold at most, shared by every process that writes
            there; past it, writes are refused and the memory policy applies.
        disk: Its system calls (a test's faults).
    """

    def __init__(self, directory: str, max_bytes: int, disk: Disk | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.disk = disk or Disk()
        self.owners = Owners(self.directory, self.disk)
        self.ledger = Ledger(
            self.directory, self.disk, lambda: count_held(self.directory, self.disk)
        )
        self.corrupt = 0
        self._lock = threading.Lock()  # the corrupt files' counter
        self._counter = itertools.count()
        self._failpoints = Failpoints()
        self._reported: set[str] = set()
        self._scanned_at = self._removals_at = -math.inf
        self.removals = Removals(self.directory, self.disk, self.ledger)
        self.receipts = Receipts(self.directory, self.disk, self.identity)
        self.listing = Listing(self.directory, self.disk, self.removals.settled, self._other)
        try:
            self.disk.mkdir(self.directory)
        except OSError as exc:
            self._cannot("write", exc)
        self.ledger.peek()  # what stats() says until the first scan: one read, no listing

    @property
    def identity(self) -> str:
        """This process's identity in the directory (not its PID)."""
        return self.owners.identity

    def owns(self, batch: SpooledBatch, serial: int) -> bool:
        """Whether this process's channel ``serial`` wrote ``batch``."""
        return batch.owner == (self.identity, serial)

    # -- writing (a sender spilling, or the exit drain) -----------------------------------

    def write(
        self,
        ndjson: bytes | bytearray,
        count: int,
        host: str,
        datasource: str,
        owner: tuple[str, int],
        *,
        replacing: str = "",
    ) -> Path | Refusal:
        """Store one batch whole: its file, or why the spool is full or the disk refused.

        ``replacing`` (a half of a spooled batch) is the stem to use instead of a new one,
        so that the half keeps the batch's place in the order; the bound does not refuse it
        (the halves replace a file already counted).
        """
        if not self.owners.ensure():
            return Refusal("spool_error", "its owner file cannot be written")
        data = encode(ndjson, count, host, datasource, owner)
        size = len(data)
        stem = replacing or batch_name(
            time.time_ns(), host, datasource, self.identity, next(self._counter)
        )
        temporary = self.directory / temporary_name(self.identity, size, stem)
        with self.ledger.step() as entry:
            if entry is None:
                return Refusal("spool_error", "its ledger is locked by another process")
            if not replacing and entry.held + size > self.max_bytes:
                return Refusal("spool_full", f"spool_max_bytes ({self.max_bytes}) reached")
            try:
                entry.held += size  # reserved: a recount counts the temporary file at this size
                entry.save()
                fd = self.disk.create(temporary)
            except OSError as exc:
                entry.held -= size
                return self._refuse_error(exc)
        final = self.directory / (stem + SUFFIX)
        try:
            try:
                self.disk.write_all(fd, data[: size // 2])
                self.failpoint("write")  # killed with half a temporary file
                self.disk.write_all(fd, data[size // 2 :])
                self.disk.fsync(fd)
            finally:
                self.disk.close(fd)
            self.failpoint("rename")  # killed with a whole temporary file
            self.disk.rename(temporary, final)
        except OSError as exc:
            self._remove(temporary, size)
            return self._refuse_error(exc)
        with contextlib.suppress(OSError):  # renamed: written; only a power loss undoes it
            self.disk.fsync_directory(self.directory)
        self.listing.added(final.name, newest=not replacing)
        return final

    def _refuse_error(self, exc: OSError) -> Refusal:
        self._cannot("write", exc)
        return Refusal("spool_full" if exc.errno in _FULL else "spool_error", why(exc))

    # -- reading (a sender resending) -------------------------------------------------------

    def has_pending(self, host: str, datasource: str) -> bool:
        """Whether unclaimed files wait for ``host`` and ``datasource``, from a listing at
        most a second old.
        """
        self.maintain()
        return bool(self.listing.lane((host_key(host), datasource)).unclaimed)

    def pending(self, host: str, datasource: str) -> list[str]:
        """Unclaimed file names for ``host`` and ``datasource``, oldest first."""
        return list(self.listing.lane((host_key(host), datasource), fresh=True).unclaimed)

    def claim(self, host: str, datasource: str) -> SpooledBatch | None:
        """The oldest file for ``host`` and ``datasource``, claimed; ``None`` if none."""
        got = self.claim_many(host, datasource, 1, 1)
        return got[0] if got else None

    def claim_many(
        self, host: str, datasource: str, max_rows: int, max_bytes: int
    ) -> list[SpooledBatch]:
        """The oldest files for the lane, claimed, as many consecutive ones as fit in one
        request of ``max_rows`` and ``max_bytes`` (at least one); ``[]`` if none.
        """
        self.maintain()
        if not self.owners.ensure():
            return []
        key: Key = (host_key(host), datasource)
        got: list[SpooledBatch] = []
        rows = raw = 0
        while (name := self.listing.next(key)) is not None:
            path = self.directory / name
            claimed = self.directory / f"{name}{CLAIMED}{self.identity}"
            try:
                self.disk.rename(path, claimed)
            except FileNotFoundError:  # another process claimed it first
                continue
            except OSError as exc:  # a read-only directory, another user's file
                self.listing.put_back(key, name)
                self._cannot("claim", exc)
                break
            try:
                batch = read(self.disk, claimed, name, host, datasource)
            except Acknowledged:  # sent by a process that could not remove it: never again
                self.removals.found_marked(claimed, name, self._size(claimed))
                continue
            except SpoolError as exc:
                self._quarantine(claimed, name, exc)
                continue
            except OSError as exc:  # unreadable now (EIO): another process may read it
                self._give_back(key, claimed, name)
                self._cannot("claim", exc)
                break
            if got and (rows + batch.count > max_rows or raw + batch.raw_bytes > max_bytes):
                self._give_back(key, claimed, name)
                break
            got.append(batch)
            rows, raw = rows + batch.count, raw + batch.raw_bytes
            self.failpoint("resend")  # killed holding a claim
            if rows >= max_rows or raw >= max_bytes:
                break
        return got

    def combine(self, batches: list[SpooledBatch]) -> bytes:
        """One gzip body for the claimed ``batches`` (one file's own, or several's lines in
        order, compressed as one stream).
        """
        if len(batches) == 1:
            return batches[0].body
        return gzip(b"".join(zlib.decompress(batch.body, 31) for batch in batches))

    def done(self, batch: SpooledBatch) -> None:
        """The server acknowledged it (or refused it for good): remove it. A file that
        cannot be removed now is marked acknowledged in place, never sent again, and
        removed once the directory lets it (``Removals``).
        """
        self.removals.acknowledged(batch)
        self.listing.gone(batch.name)

    def release(self, batch: SpooledBatch) -> None:
        """Give a claimed file back, for this process later or another one (exit)."""
        try:
            self.disk.rename(batch.path, self.directory / batch.name)
        except OSError:
            return  # still claimed: released by the next process's scan once this one ends
        self.listing.reorder()

    def split(self, batch: SpooledBatch, host: str, datasource: str) -> bool:
        """413 for a claimed file: write its two halves in its place in the order (the
        caller then removes it); ``False`` if it holds one event or the disk refused.
        """
        if batch.count < 2:
            return False
        try:
            lines = zlib.decompress(batch.body, 31).splitlines(keepends=True)
        except zlib.error:
            return False
        middle = len(lines) // 2
        # "<stem>-a" and "<stem>-b" sort where the batch did, in order, and so do the
        # halves of a half.
        stem = batch.name.removesuffix(SUFFIX)
        first = self.write(
            b"".join(lines[:middle]), middle, host, datasource, batch.owner, replacing=stem + "-a"
        )
        if isinstance(first, Refusal):
            return False
        second = b"".join(lines[middle:])
        rest = len(lines) - middle
        written = self.write(second, rest, host, datasource, batch.owner, replacing=stem + "-b")
        if not isinstance(written, Refusal):
            return True
        self._remove(first, self._size(first))  # all or nothing: the caller drops the batch
        self.listing.gone(first.name)
        return False

    # -- upkeep, and what flush() waits for --------------------------------------------------

    def maintain(self) -> None:
        """What a sender does between requests: list the directory if the listing is old,
        scan it every minute, retry removals, leave receipts, renew this process's owner.
        """
        now = time.monotonic()
        if now - self._scanned_at > SCAN_EVERY:
            self._scanned_at = now
            scan(self.directory, self.disk, self.identity, self._alive, self.ledger)
        if self.listing.due(now):
            self.listing.list()
        if self.removals.owed and now - self._removals_at > LISTING_TTL:
            self._removals_at = now
            self.removals.retry()
        if self.receipts.owed:
            self.receipts.leave(self._alive)
        self.owners.heartbeat(now)

    def settle(self) -> None:
        """At exit: retry the removals owed, and leave the receipts owed."""
        self.removals.retry()
        self.receipts.leave(self._alive, wait=1.0)

    def backlog(self, host: str, datasource: str) -> frozenset[str]:
        """The batches on disk for the lane now (claimed by anyone, or not), from a listing
        at most a second old: what a flush waits for.
        """
        return frozenset(self.listing.lane((host_key(host), datasource), fresh=True).present)

    def remaining(self, host: str, datasource: str, batches: Iterable[str]) -> bool:
        """Whether any of ``batches`` (a ``backlog``) is still on disk, unresolved, as the
        last listing and this process's own removals say (no disk access).
        """
        return self.listing.present((host_key(host), datasource), batches)

    def take_receipts(self, serials: set[int]) -> list[Receipt]:
        """The receipts read for the channels ``serials`` of this process."""
        return self.receipts.take(serials)

    def note_outcome(self, batch: SpooledBatch, outcome: str, quarantined: int = 0) -> None:
        """This process resolved another's file: leave it a receipt (at the next upkeep)."""
        self.receipts.owe(batch, outcome, quarantined)

    def held_bytes(self) -> int:
        """Bytes the directory holds, as this process last counted them."""
        return self.ledger.held

    def report_unmatched(self, lanes: set[tuple[str, str]]) -> None:
        """Say once which files no producer of this process will send (host, data source
        unknown here): they are kept for a process that does.
        """
        known = {(host_key(host), datasource) for host, datasource in lanes}
        self.listing.lane(("", ""), fresh=True)
        others = {
            key[1]: len(lane.present)
            for key, lane in self.listing.lanes().items()
            if key not in known and lane.present
        }
        for datasource, count in others.items():
            if datasource not in self._reported:
                self._reported.add(datasource)
                _diagnostics.say(
                    f"the spool {self.directory} holds {count} batch file(s) for data source "
                    f"{datasource!r} on a host that no producer of this process sends to: "
                    "they are kept for one that does."
                )

    def forget_in_child(self) -> None:
        """A forked child: let go of the parent's descriptors (the child has its own
        spool, identity and locks).
        """
        self.owners.forget_in_child()
        self.ledger.forget_in_child()

    # -- helpers -----------------------------------------------------------------------------

    def _give_back(self, key: Key, claimed: Path, name: str) -> None:
        try:
            self.disk.rename(claimed, self.directory / name)
        except OSError:
            return
        self.listing.put_back(key, name)

    def _other(self, name: str) -> None:
        """A listed name that is not a batch file: a receipt for this process is read."""
        if self.receipts.mine(name):
            self.receipts.read(name)

    def _alive(self, identity: str) -> bool:
        return self.owners.alive(identity, time.monotonic())

    def _remove(self, path: Path, size: int) -> None:
        """Unlink ``path``, counting its ``size`` off the ledger; never raises."""
        with contextlib.suppress(OSError):
            self.ledger.remove(path, size)

    def _size(self, path: Path) -> int:
        try:
            return self.disk.stat(path).st_size
        except OSError:
            return 0

    def _quarantine(self, path: Path, name: str, exc: SpoolError) -> None:
        """Set a corrupt file aside in ``corrupt/`` (outside the bound), counted, said."""
        corrupt = self.directory / "corrupt"
        size = self._size(path)
        with self._lock:
            self.corrupt += 1
        try:
            self.disk.mkdir(corrupt)
            with self.ledger.step() as entry:
                self.disk.rename(path, corrupt / name)
                if entry is not None:
                    entry.held -= size
            where = f"moved to {corrupt}"
        except OSError as err:  # left claimed: the next process sets it aside
            where = f"left in place ({why(err)})"
        self.listing.gone(name)
        _diagnostics.say(
            f"spool file {name} failed its check ({exc}): {where}, not sent (counted in "
            "stats().spool_corrupt)."
        )

    def _cannot(self, what: str, exc: OSError) -> None:
        """Say once per directory that it refuses writes, or claims."""
        if what == "write":
            text = (
                f"cannot write to the spool {self.directory} ({why(exc)}); batches that cannot "
                "be sent are kept in memory, then dropped as the memory bound says."
            )
        else:
            text = (
                f"cannot claim files in the spool {self.directory} ({why(exc)}); they are left "
                "for later, or for a process that can."
            )
        _diagnostics.say_once(f"spool-{what}:{self.directory}", text)

    def failpoint(self, point: str) -> None:
        """The tests' crash injection (``_spool_disk.Failpoints``); nothing otherwise."""
        self._failpoints.reach(point)
