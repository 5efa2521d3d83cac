"""A spool directory's upkeep: what crashes leave behind, and the recount of its bytes.

Every minute (and at its first need) a process scans the directory: a claim, a temporary
file, an owner file or a receipt whose process is gone (``_spool_owners``: its lock is free)
is released or removed, whatever its times say; then the shared byte count is recounted
from the files (``_spool_ledger``). Only a leftover that names no owner (a crash between
creating an owner file and naming it) is judged by its age: an hour, either way, so that a
file dated in the future by a clock step goes too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tinybird_export._spool_disk import Disk
from tinybird_export._spool_format import (
    CLAIMED,
    OWNER,
    RECEIPT,
    SUFFIX,
    TEMPORARY,
    claimed_by,
    temporary_parts,
)
from tinybird_export._spool_ledger import Ledger

SCAN_EVERY: Final = 60.0
"""Seconds between scans."""
_NO_OWNER: Final = 3600.0
"""A leftover naming no owner this old (or dated this far ahead) is removed."""


def scan(
    directory: Path, disk: Disk, identity: str, alive: Callable[[str], bool], ledger: Ledger
) -> None:
    """Release the claims of processes that are gone, remove their temporary files, owner
    files and receipts, and recount the ledger.
    """
    try:
        names = disk.listdir(directory)
    except OSError:
        return
    for name in sorted(names, key=lambda n: n.startswith(OWNER)):  # owners last
        path = directory / name
        try:
            if CLAIMED in name:
                holder = claimed_by(name)
                if holder != identity and not (holder and alive(holder)):
                    disk.rename(path, directory / name.split(CLAIMED)[0])
            elif name.startswith(TEMPORARY):
                parts = temporary_parts(name)
                if parts is None:
                    _remove_if_old(disk, path)
                elif parts[0] != identity and not alive(parts[0]):
                    ledger.remove(path, parts[1])
            elif name.startswith((OWNER, RECEIPT)):
                holder = name.removeprefix(OWNER).removeprefix(RECEIPT)[:16]
                if name.endswith(".new"):
                    _remove_if_old(disk, path)
                elif holder != identity and not alive(holder):
                    disk.unlink(path)
        except OSError:
            continue
    ledger.recount()


def _remove_if_old(disk: Disk, path: Path) -> None:
    age = time.time() - disk.stat(path).st_mtime
    if abs(age) > _NO_OWNER:
        disk.unlink(path)


def count_held(directory: Path, disk: Disk) -> int | None:
    """The bytes the directory holds: batch files (claimed too) and temporary files at the
    size they reserved, whichever process wrote them; ``None`` if it cannot be listed.
    """
    try:
        names = disk.listdir(directory)
    except OSError:
        return None
    total = 0
    for name in names:
        parts = temporary_parts(name) if name.startswith(TEMPORARY) else None
        if parts is not None:
            total += parts[1]
        elif SUFFIX in name:
            try:
                total += disk.stat(directory / name).st_size
            except OSError:
                continue
    return total
