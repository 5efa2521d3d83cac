"""An opt-in disk spool: batches that cannot be delivered now outlive the memory bound, the
exit budget and the process.

One file per batch, named so that the oldest sorts first and that a process can pick the
files of its host and data source without opening the others::

    <time_ns>-<host hash>-<datasource>-<pid>-<n>.tbspool

A file is a header line (format version, data source, host, event count, raw size, SHA-256
of the body, the writing process and channel) and the gzip-compressed NDJSON body. The
token is never written. It is written to a temporary name, fsynced, renamed and its
directory fsynced: a file either exists whole or not at all.

Several processes may share a directory (gunicorn workers, a restart that overlaps the old
process): a sender claims a file by renaming it to ``<name>.claimed-<pid>`` (atomic; the
loser of a race gets ``FileNotFoundError``) and removes it once the server acknowledged it.
A claim whose process is gone is released by the next process that scans. A file that
fails its checksum is moved to ``corrupt/``, counted, and never sent. Files for a host or
data source that no producer of this process sends to are left alone, and reported once.

Only sender threads and the exit drain call this module: never the caller's thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import math
import os
import signal
import threading
import time
import zlib
from pathlib import Path
from typing import Final

import orjson

from tinybird_export import _diagnostics

FORMAT: Final = 1
SUFFIX: Final = ".tbspool"
_CLAIMED: Final = ".claimed-"
_STALE_CLAIM: Final = 600.0  # seconds: a claim this old is released even if its pid lives
_LISTING_TTL: Final = 1.0
_FAILPOINT_ENV: Final = "TINYBIRD_SPOOL_FAILPOINT"  # tests' crash injection: "<point>:<n>"


class SpoolError(Exception):
    """A spool file that cannot be used (bad header, checksum, I/O)."""


@dataclasses.dataclass(frozen=True)
class SpooledBatch:
    """A claimed spool file: its body (gzip) and what its header says."""

    path: Path
    name: str
    body: bytes
    count: int
    raw_bytes: int
    owner: tuple[int, int]  # (pid, channel id) that wrote it

    def own(self, channel_id: int) -> bool:
        """Whether this process's channel ``channel_id`` wrote it."""
        return self.owner == (os.getpid(), channel_id)


def host_key(host: str) -> str:
    """A file-name-safe key for a host URL."""
    return hashlib.sha256(host.encode()).hexdigest()[:12]


class Spool:
    """One spool directory, as this process sees it.

    Args:
        directory: Where the files live (created, mode 0700).
        max_bytes: What the directory may hold at most; past it, writes are refused and
            the memory policy applies (the newest events are dropped).
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._failpoints = _failpoints()
        self.corrupt = 0
        self._reported: set[str] = set()
        self._listed: dict[tuple[str, str], tuple[float, bool]] = {}
        self._scanned_at = -math.inf
        self._bytes = self._scan()
        self._counted_at = time.monotonic()

    # -- writing (a sender spilling, or the exit drain) -----------------------------------

    def write(
        self,
        ndjson: bytes | bytearray,
        count: int,
        host: str,
        datasource: str,
        owner: tuple[int, int],
        *,
        replacing: str = "",
    ) -> Path | None:
        """Store one batch: its file, or ``None`` if the spool is full or the disk refused.

        ``replacing`` (a half of a spooled batch) is the file name to use instead of a new
        one, so that the half keeps the batch's place in the order; the bound does not
        apply (the halves replace a file already counted).
        """
        body = _gzip(ndjson)
        header = orjson.dumps(
            {
                "v": FORMAT,
                "datasource": datasource,
                "host": host,
                "count": count,
                "raw_bytes": len(ndjson),
                "sha256": hashlib.sha256(body).hexdigest(),
                "owner": list(owner),
            }
        )
        data = header + b"\n" + body
        if time.monotonic() - self._counted_at > _LISTING_TTL:
            held = _held_bytes(self.directory)  # other processes write here too
            with self._lock:
                self._bytes, self._counted_at = held, time.monotonic()
        with self._lock:
            if not replacing and self._bytes + len(data) > self.max_bytes:
                return None
            self._bytes += len(data)
        serial = f"{os.getpid()}-{next(self._counter)}"
        name = replacing or f"{time.time_ns():020d}-{host_key(host)}-{datasource}-{serial}"
        final = self.directory / (name + SUFFIX)
        temporary = self.directory / f".tmp-{name}-{serial}"  # unique, even for a half
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                half = len(data) // 2
                os.write(fd, data[:half])
                self.failpoint("write")  # killed with half a temporary file
                os.write(fd, data[half:])
                os.fsync(fd)
            finally:
                os.close(fd)
            self.failpoint("rename")  # killed with a whole temporary file
            os.rename(temporary, final)
        except OSError as exc:
            with self._lock:
                self._bytes = max(0, self._bytes - len(data))
            temporary.unlink(missing_ok=True)
            _diagnostics.say_once(
                f"spool-write:{self.directory}",
                f"cannot write to the spool {self.directory} ({exc}); batches that cannot be "
                "sent are kept in memory, then dropped as the memory bound says.",
            )
            return None
        # Renamed: the file is in place, so the batch is written (reporting it unwritten
        # would keep it in memory too and write it again). A directory that refuses fsync
        # (some network file systems) only weakens durability across a power loss.
        with contextlib.suppress(OSError):
            self._fsync_directory()
        self._listed[(host_key(host), datasource)] = (time.monotonic(), True)
        return final

    # -- reading (a sender resending) -------------------------------------------------------

    def pending(self, host: str, datasource: str) -> list[str]:
        """Unclaimed file names for ``host`` and ``datasource``, oldest first."""
        key = host_key(host)
        names = sorted(
            name
            for name in _listing(self.directory)
            if name.endswith(SUFFIX) and _key_of(name) == (key, datasource)
        )
        with self._lock:
            self._listed[(key, datasource)] = (time.monotonic(), bool(names))
        return names

    def has_pending(self, host: str, datasource: str) -> bool:
        """Whether files wait for ``host`` and ``datasource``: from a listing at most a
        second old (other processes write too), or fresh after this one wrote.
        """
        key = (host_key(host), datasource)
        listed_at, found = self._listed.get(key, (-math.inf, False))
        now = time.monotonic()
        if now - listed_at < _LISTING_TTL:
            return found
        if now - self._scanned_at > _STALE_CLAIM / 10:
            held = self._scan()  # release the claims of processes that died since
            with self._lock:
                self._bytes, self._counted_at = held, time.monotonic()
        return bool(self.pending(host, datasource))

    def claim(self, host: str, datasource: str) -> SpooledBatch | None:
        """The oldest file for ``host`` and ``datasource``, claimed; ``None`` if none."""
        for name in self.pending(host, datasource):
            path = self.directory / name
            claimed = self.directory / f"{name}{_CLAIMED}{os.getpid()}"
            try:
                # A claim's age (for _STALE_CLAIM) counts from now, not from the write: a
                # rename keeps the mtime, and a file spooled during a long outage would
                # otherwise look stale to the next scan while it is being sent.
                os.utime(path)
                os.rename(path, claimed)
            except FileNotFoundError:  # another process claimed it first
                continue
            except OSError as exc:  # not ours to take (another user's file, a read-only mount)
                _diagnostics.say_once(
                    f"spool-claim:{self.directory}",
                    f"cannot claim spool files in {self.directory} ({exc}); they are left "
                    "for a process that can.",
                )
                return None
            try:
                batch = self._read(claimed, name, host, datasource)
            except SpoolError as exc:
                self._quarantine(claimed, name, exc)
                continue
            self.failpoint("resend")  # killed holding a claim
            return batch
        return None

    def done(self, batch: SpooledBatch) -> None:
        """The server acknowledged it (or refused it for good): remove it."""
        try:
            size = batch.path.stat().st_size
            batch.path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._bytes = max(0, self._bytes - size)

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
        # "<name>-a" and "<name>-b" sort where the batch did, in order, and so do the
        # halves of a half.
        stem = batch.name.removesuffix(SUFFIX)
        first = self.write(
            b"".join(lines[:middle]), middle, host, datasource, batch.owner, replacing=stem + "-a"
        )
        if first is None:
            return False
        second = b"".join(lines[middle:])
        rest = len(lines) - middle
        if self.write(second, rest, host, datasource, batch.owner, replacing=stem + "-b"):
            return True
        with contextlib.suppress(OSError):  # all or nothing: the caller drops the batch
            size = first.stat().st_size
            first.unlink()
            with self._lock:
                self._bytes = max(0, self._bytes - size)
        return False

    def keep_claimed(self, batch: SpooledBatch) -> None:
        """Renew a claim held across retries: a claim's age counts from its last renewal,
        and other processes release claims older than ``_STALE_CLAIM``.
        """
        with contextlib.suppress(OSError):
            os.utime(batch.path)

    def release(self, batch: SpooledBatch) -> None:
        """Give a claimed file back (its attempt failed; it is retried later)."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(batch.path, self.directory / batch.name)

    def held_bytes(self) -> int:
        """Bytes the spool holds, as this process last counted them."""
        return self._bytes

    def report_unmatched(self, lanes: set[tuple[str, str]]) -> None:
        """Say once which files no producer of this process will send (host, data source
        unknown here): they are kept for a process that does.
        """
        known = {(host_key(host), datasource) for host, datasource in lanes}
        others: dict[str, int] = {}
        for name in _listing(self.directory):
            if not name.endswith(SUFFIX):
                continue
            parts = name.split("-")
            if len(parts) >= 5 and (parts[1], _datasource_of(name)) not in known:
                others[_datasource_of(name)] = others.get(_datasource_of(name), 0) + 1
        for datasource, count in others.items():
            if datasource not in self._reported:
                self._reported.add(datasource)
                _diagnostics.say(
                    f"the spool {self.directory} holds {count} batch file(s) for data source "
                    f"{datasource!r} on a host that no producer of this process sends to: "
                    "they are kept for one that does."
                )

    # -- helpers -----------------------------------------------------------------------------

    def _read(self, path: Path, name: str, host: str, datasource: str) -> SpooledBatch:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"unreadable: {exc}") from None
        line, _, body = data.partition(b"\n")
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise SpoolError("bad header") from None
        if not isinstance(header, dict) or header.get("v") != FORMAT:
            raise SpoolError("unknown format")
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            raise SpoolError("checksum mismatch")
        if header.get("host") != host or header.get("datasource") != datasource:
            raise SpoolError("header does not match its name")
        owner = header.get("owner") or [0, 0]
        return SpooledBatch(
            path, name, body, int(header["count"]), int(header["raw_bytes"]), (owner[0], owner[1])
        )

    def _quarantine(self, path: Path, name: str, exc: SpoolError) -> None:
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        try:
            size = path.stat().st_size
            os.rename(path, corrupt / name)
        except OSError:
            return
        with self._lock:
            self._bytes = max(0, self._bytes - size)
            self.corrupt += 1
        _diagnostics.say(
            f"spool file {name} failed its check ({exc}): moved to {corrupt}, not sent "
            "(counted in stats().spool_corrupt)."
        )

    def _scan(self) -> int:
        """The bytes held, releasing claims whose process is gone (a crash) and removing
        temporary files a crash left (old ones only: another process may be writing one).
        """
        first_scan = self._scanned_at == -math.inf
        self._scanned_at = time.monotonic()
        now = time.time()
        for name in _listing(self.directory):
            path = self.directory / name
            try:
                age = now - path.stat().st_mtime
                if _CLAIMED in name:
                    original, _, pid = name.rpartition(_CLAIMED)
                    if not _alive(int(pid), first_scan) or age > _STALE_CLAIM:
                        os.rename(path, self.directory / original)
                elif name.startswith(".tmp-") and age > _STALE_CLAIM / 10:
                    path.unlink()
            except (OSError, ValueError):
                continue
        return _held_bytes(self.directory)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def failpoint(self, point: str) -> None:
        """The tests' crash injection (``TINYBIRD_SPOOL_FAILPOINT``); nothing otherwise."""
        remaining = self._failpoints.get(point)
        if remaining is None:
            return
        if remaining <= 1:
            os.kill(os.getpid(), signal.SIGKILL)
        self._failpoints[point] = remaining - 1


def _failpoints() -> dict[str, int]:
    """Crash injection for the tests: ``TINYBIRD_SPOOL_FAILPOINT=write:3`` kills the
    process with SIGKILL the third time it reaches the ``write`` point.
    """
    point, _, count = os.environ.get(_FAILPOINT_ENV, "").partition(":")
    return {point: int(count)} if point and count.isdigit() else {}


def _listing(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(directory) if entry.is_file()]
    except OSError:
        return []


def _held_bytes(directory: Path) -> int:
    """What the directory's batch files take, claimed ones included (they stay on disk
    until acknowledged), whichever process wrote them.
    """
    total = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(SUFFIX) or _CLAIMED in entry.name:
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
    return total


def _key_of(name: str) -> tuple[str, str]:
    # <time>-<host key>-<datasource>-<pid>-<n>.tbspool; data source names have no '-'.
    parts = name.split("-")
    return (parts[1], parts[2]) if len(parts) >= 5 else ("", "")


def _datasource_of(name: str) -> str:
    return _key_of(name)[1]


def _alive(pid: int, first_scan: bool) -> bool:
    """Whether the process that holds a claim may still be sending it."""
    if pid == os.getpid():
        # This process's claims are held by its senders until released; at its first
        # scan it has none, so a claim in its name is a previous process's (pid reuse).
        return not first_scan
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gzip(data: bytes | bytearray) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()
