r"""The disk spool's file format and names: what a batch file holds, and how it is checked.

A batch file is one state byte, a header line and the gzip-compressed NDJSON body::

    P{"v":2,"datasource":…,"host":…,"count":…,"raw_bytes":…,"sha256":…,"owner":[…,…]}⏎<gzip>

The state byte is ``P`` (pending) until the server acknowledged the batch; when the file
cannot be removed then (a read-only directory still lets a process write its own files),
it is overwritten with ``A`` in place, and a file marked so is removed by the next process
that meets it, never sent again. The token is never written.

A file is trusted only once every field of its header has the right type and range, its
name agrees with its host and data source, its body matches its SHA-256, and the body,
inflated in bounded pieces, holds exactly ``raw_bytes`` bytes in ``count`` lines: a header
that passes the checksum but says something else is corrupt, and so is a file larger than
any batch can be (it is never read whole).

Names sort oldest first, and let a process pick its host's and data source's files without
opening the others (data source names have no ``-``)::

    <time_ns>-<host key>-<datasource>-<identity>-<n>.tbspool     a batch
    <batch name>.claimed-<identity>                              claimed by a sender
    <batch stem>-a.tbspool, <batch stem>-b.tbspool               a 413's halves, in its place
    .tmp-<identity>-<bytes>-<stem>                               being written
    .owner-<identity>                                            a process (see _spool_owners)
    .receipt-<identity>-<stem>                                   another process sent its file

``identity`` is a random token drawn at each process start (``_spool_owners``), not a PID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from pathlib import Path
from typing import Final, NamedTuple, TypeGuard

import orjson

from tinybird_export._spool_disk import Disk

FORMAT: Final = 2
SUFFIX: Final = ".tbspool"
CLAIMED: Final = ".claimed-"
TEMPORARY: Final = ".tmp-"
OWNER: Final = ".owner-"
RECEIPT: Final = ".receipt-"
PENDING: Final = b"P"
ACKNOWLEDGED: Final = b"A"

MAX_RAW_BYTES: Final = 100 * 1000 * 1000
"""No batch holds more (the Events API's largest request cap): a larger file is corrupt."""
MAX_FILE_BYTES: Final = MAX_RAW_BYTES + MAX_RAW_BYTES // 100 + 64 * 1024
"""A file's largest size: the body (gzip adds at most ~0.1% to incompressible data) and its
header."""
_MAX_HEADER: Final = 8 * 1024
_PIECE: Final = 1024 * 1024
_IDENTITY = re.compile(r"[0-9a-f]{16}\Z")


class SpoolError(Exception):
    """A spool file that cannot be used (bad header, checksum, size, I/O)."""


@dataclasses.dataclass(frozen=True)
class SpooledBatch:
    """A claimed spool file: its body (gzip) and what its checked header says."""

    path: Path
    name: str
    body: bytes
    count: int
    raw_bytes: int
    owner: tuple[str, int]  # (identity of the writing process, its channel's serial)
    size: int  # bytes on disk


class Acknowledged(Exception):
    """The file is marked acknowledged (``A``): remove it, never send it."""


def host_key(host: str) -> str:
    """A file-name-safe key for a host URL."""
    return hashlib.sha256(host.encode()).hexdigest()[:12]


def batch_name(time_ns: int, host: str, datasource: str, identity: str, serial: int) -> str:
    """A new batch file's stem (without ``SUFFIX``)."""
    return f"{time_ns:020d}-{host_key(host)}-{datasource}-{identity}-{serial}"


def lane_of(name: str) -> tuple[str, str]:
    """(host key, data source) of a batch file's name; ``("", "")`` if it is not one."""
    parts = name.split("-", 5)
    return (parts[1], parts[2]) if len(parts) >= 5 else ("", "")


def base_of(name: str) -> str:
    """The name of the batch a file comes from (a half's, a claimed file's): its first five
    parts, so that a batch, its claim and its halves share it.
    """
    return "-".join(name.split(CLAIMED, maxsplit=1)[0].removesuffix(SUFFIX).split("-")[:5])


def claimed_by(name: str) -> str:
    """The identity holding a claimed file ("" for an unclaimed or odd name)."""
    _, _, identity = name.partition(CLAIMED)
    return identity if is_identity(identity) else ""


def is_identity(text: str) -> bool:
    """Whether ``text`` is a process identity (16 hex digits)."""
    return _IDENTITY.match(text) is not None


def temporary_name(identity: str, size: int, stem: str) -> str:
    """A temporary file's name: its writer and the bytes it reserved in the ledger."""
    return f"{TEMPORARY}{identity}-{size}-{stem}"


def temporary_parts(name: str) -> tuple[str, int] | None:
    """(writer identity, reserved bytes) of a temporary file's name; ``None`` if odd."""
    identity, _, rest = name.removeprefix(TEMPORARY).partition("-")
    size, _, _ = rest.partition("-")
    if not is_identity(identity) or not size.isdigit():
        return None
    return identity, int(size)


def encode(
    ndjson: bytes | bytearray, count: int, host: str, datasource: str, owner: tuple[str, int]
) -> bytes:
    """A whole batch file: state byte, header line, gzip body."""
    body = gzip(ndjson)
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
    return PENDING + header + b"\n" + body


def read(disk: Disk, path: Path, name: str, host: str, datasource: str) -> SpooledBatch:
    """Read and check a batch file in bounded pieces.

    Raises:
        Acknowledged: It is marked sent: remove it.
        SpoolError: It is corrupt (or unreadable): set it aside.
        OSError: Not from here: reading failed (handled as unreadable by the caller).
    """
    fd = disk.open(path)
    try:
        size = disk.size(fd)
        if size > MAX_FILE_BYTES:
            raise SpoolError(f"{size} bytes, larger than any batch")
        head = disk.read(fd, _MAX_HEADER, 0)
        state, (line, newline, _) = head[:1], head[1:].partition(b"\n")
        if state == ACKNOWLEDGED:
            raise Acknowledged
        if state != PENDING or not newline:
            raise SpoolError("bad header (or an older format)")
        start = len(line) + 2
        header = _checked_header(line, host, datasource)
        body = bytearray()
        digest = hashlib.sha256()
        while len(body) < size - start:
            piece = disk.read(fd, _PIECE, start + len(body))
            if not piece:
                break
            digest.update(piece)
            body += piece
    finally:
        disk.close(fd)
    if digest.hexdigest() != header.sha256:
        raise SpoolError("checksum mismatch")
    count, raw_bytes = inflated_size(bytes(body))
    if (count, raw_bytes) != (header.lines, header.raw_bytes):
        raise SpoolError(
            f"header says {header.lines} line(s) in {header.raw_bytes} bytes, body holds "
            f"{count} in {raw_bytes}"
        )
    return SpooledBatch(path, name, bytes(body), count, raw_bytes, header.owner, size)


class _Header(NamedTuple):
    lines: int
    raw_bytes: int
    sha256: str
    owner: tuple[str, int]


def _checked_header(line: bytes, host: str, datasource: str) -> _Header:
    """The header's fields, each of the right type and range, agreeing with the name."""
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise SpoolError("bad header") from None
    if not isinstance(header, dict) or header.get("v") != FORMAT:
        raise SpoolError("unknown format")
    if header.get("host") != host or header.get("datasource") != datasource:
        raise SpoolError("header does not match its name")
    count, raw, sha, owner = (header.get(k) for k in ("count", "raw_bytes", "sha256", "owner"))
    if not (_integer(count, 1, MAX_RAW_BYTES) and _integer(raw, 1, MAX_RAW_BYTES)):
        raise SpoolError(f"bad count or size ({count!r}, {raw!r})")
    if not isinstance(sha, str) or len(sha) != 64:
        raise SpoolError("bad checksum field")
    if not (
        isinstance(owner, list)
        and len(owner) == 2
        and isinstance(owner[0], str)
        and is_identity(owner[0])
        and _integer(owner[1], 0, 2**63)
    ):
        raise SpoolError(f"bad owner {owner!r}")
    return _Header(count, raw, sha, (owner[0], owner[1]))


def _integer(value: object, low: int, high: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def inflated_size(body: bytes) -> tuple[int, int]:
    """(lines, raw bytes) of a gzip body, inflated in bounded pieces (a body that inflates
    past ``MAX_RAW_BYTES``, holds a second stream or ends early is corrupt).
    """
    inflater = zlib.decompressobj(31)
    lines = raw = 0
    data = body
    try:
        while True:
            piece = inflater.decompress(data, _PIECE)
            lines, raw = lines + piece.count(b"\n"), raw + len(piece)
            if raw > MAX_RAW_BYTES:
                raise SpoolError("the body inflates past any batch")
            data = inflater.unconsumed_tail
            if inflater.eof or not (data or piece):
                break
        if not inflater.eof or inflater.unused_data:
            raise SpoolError("the body is not one whole gzip stream")
    except zlib.error as exc:
        raise SpoolError(f"the body does not inflate ({exc})") from None
    return lines, raw


def gzip(data: bytes | bytearray) -> bytes:
    """``data`` as one gzip stream (level 1: the spool is written while an outage lasts)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()
