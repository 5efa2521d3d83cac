"""What a spool directory holds, per lane, as this process last listed it.

The directory is listed at most once per ``LISTING_TTL`` (other processes write too), and
each lane's (host key, data source's) unclaimed batch names are kept sorted, oldest first:
a sender takes them one by one (``next``) instead of listing the directory for each file,
so draining N files costs one listing per second and a sort, not N listings.

Each lane also counts the batches on disk, claimed by anyone or not (``present``, by the
name of the batch they come from: a claim and a 413's halves count for their batch): what a
flush waits for. This process's own changes (a file written, one removed) update it at once;
other processes' show at the next listing.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from tinybird_export._spool_disk import Disk
from tinybird_export._spool_format import CLAIMED, SUFFIX, base_of, lane_of

LISTING_TTL: Final = 1.0
"""Seconds a listing of the directory is used for."""

Key = tuple[str, str]
"""A lane in the directory: (host key, data source)."""


class Lane:
    """One lane in the last listing."""

    def __init__(self) -> None:
        self.unclaimed: collections.deque[str] = collections.deque()  # oldest first
        self.present: collections.Counter[str] = collections.Counter()  # batches, claimed too


class Listing:
    """The directory's batch files by lane.

    Args:
        directory: The spool directory.
        disk: Its system calls.
        settled: Names of files this process resolved but could not remove (not waited for).
        other: Called with each name that is not a batch file (receipts, leftovers).
    """

    def __init__(
        self,
        directory: Path,
        disk: Disk,
        settled: Callable[[], set[str]],
        other: Callable[[str], None],
    ) -> None:
        self._directory = directory
        self._disk = disk
        self._settled = settled
        self._other = other
        self._lock = threading.Lock()  # the lanes
        self._listing = threading.Lock()  # one listing at a time
        self._lanes: dict[Key, Lane] = {}
        self.listed_at = -math.inf

    def due(self, now: float) -> bool:
        """Whether the last listing is too old to use."""
        return now - self.listed_at > LISTING_TTL

    def lane(self, key: Key, *, fresh: bool = False) -> Lane:
        """The lane's state (listing first if ``fresh`` and the listing is old)."""
        if fresh and self.due(time.monotonic()):
            self.list()
        return self._lanes.get(key) or Lane()

    def lanes(self) -> dict[Key, Lane]:
        """Every lane with files, as last listed."""
        with self._lock:
            return dict(self._lanes)

    def list(self) -> None:
        """List the directory once (an unreadable one lists as empty)."""
        with self._listing:
            now = time.monotonic()
            try:
                names = self._disk.listdir(self._directory)
            except OSError:
                names = []
            settled = self._settled()
            lanes: dict[Key, Lane] = {}
            for name in names:
                if name.endswith(SUFFIX):
                    lane = lanes.setdefault(lane_of(name), Lane())
                    lane.unclaimed.append(name)
                elif CLAIMED in name and name.split(CLAIMED)[0].endswith(SUFFIX):
                    lane = lanes.setdefault(lane_of(name), Lane())
                else:
                    self._other(name)
                    continue
                if name.split(CLAIMED)[0] not in settled:
                    lane.present[base_of(name)] += 1
            for lane in lanes.values():
                lane.unclaimed = collections.deque(sorted(lane.unclaimed))
            with self._lock:
                self._lanes, self.listed_at = lanes, now

    def next(self, key: Key) -> str | None:
        """The lane's oldest unclaimed name, listing again once if it has none."""
        for attempt in range(2):
            with self._lock:
                lane = self._lanes.get(key)
                if lane is not None and lane.unclaimed:
                    return lane.unclaimed.popleft()
            if attempt or time.monotonic() - self.listed_at < LISTING_TTL / 10:
                return None
            self.list()
        return None

    def put_back(self, key: Key, name: str) -> None:
        """``name`` is unclaimed again, first in its lane."""
        with self._lock:
            self._lanes.setdefault(key, Lane()).unclaimed.appendleft(name)

    def added(self, name: str, *, newest: bool) -> None:
        """This process wrote ``name``: the newest of its lane, or (a half) somewhere in the
        order, found at the next listing.
        """
        with self._lock:
            lane = self._lanes.setdefault(lane_of(name), Lane())
            lane.present[base_of(name)] += 1
            if newest:
                lane.unclaimed.append(name)
            else:
                self.listed_at = -math.inf

    def gone(self, name: str) -> None:
        """This process removed ``name`` (or set it aside, or resolved it)."""
        with self._lock:
            lane = self._lanes.get(lane_of(name))
            if lane is not None:
                base = base_of(name)
                lane.present[base] -= 1
                if lane.present[base] <= 0:
                    del lane.present[base]

    def reorder(self) -> None:
        """A file went back to its lane: its place in the order comes with the next listing."""
        with self._lock:
            self.listed_at = -math.inf

    def present(self, key: Key, batches: Iterable[str]) -> bool:
        """Whether any of ``batches`` is still on disk, as far as this process knows."""
        lane = self._lanes.get(key)
        return lane is not None and any(base in lane.present for base in batches)
