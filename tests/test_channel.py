"""The channel's batching: sealed batches respect the row and byte limits, splits keep lines."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tinybird_export._channel import CUT_ALL, CUT_FULL, Batch, Channel

_lines = st.lists(st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b" ")))


def channel(rows: int, nbytes: int) -> Channel:
    limits = {
        "queue_max_events": 10**6,
        "queue_max_bytes": 10**9,
        "batch_max_rows": rows,
        "batch_max_bytes": nbytes,
        "flush_interval": 1.0,
    }
    return Channel("ds", wait=False, limits=limits)


@settings(derandomize=True, deadline=None, max_examples=200)
@given(lines=_lines, rows=st.integers(1, 20), nbytes=st.integers(1024, 4096))
def test_batches_keep_order_and_limits(lines: list[bytes], rows: int, nbytes: int) -> None:
    ch = channel(rows, nbytes)
    for line in lines:
        assert ch.offer(line) in (True, False)
    ch.cut(CUT_ALL)
    batches = list(ch.batches)
    assert b"".join(b.body for b in batches) == b"".join(line + b"\n" for line in lines)
    for batch in batches:
        assert 1 <= batch.count <= rows
        assert batch.nbytes <= nbytes
        assert batch.body.count(b"\n") == batch.count
    assert sum(b.count for b in batches) == len(lines) == ch.queued_events


@settings(derandomize=True, deadline=None, max_examples=200)
@given(lines=_lines.filter(lambda x: len(x) > 1))
def test_halves_split_on_a_line_boundary(lines: list[bytes]) -> None:
    body = b"".join(line + b"\n" for line in lines)
    first, second = Batch(bytearray(body), len(lines)).halves()
    assert first.count >= 1 and second.count >= 1
    assert first.count + second.count == len(lines)
    assert bytes(first.body) + bytes(second.body) == body
    assert first.body.endswith(b"\n") and second.body.endswith(b"\n")


def test_offer_wakes_on_first_line_and_on_a_sealed_batch() -> None:
    ch = channel(3, 1 << 20)
    assert ch.offer(b"a") is True  # arms the interval timer
    assert ch.offer(b"b") is False
    assert ch.offer(b"c") is True  # row limit: sealed
    assert ch.pending_count() == 0
    assert ch.offer(b"d") is True  # the next partial batch arms the timer again


def test_a_batch_sealed_by_bytes_starts_the_next_one_with_a_fresh_timer() -> None:
    ch = channel(1000, 1024)
    ch.offer(b"x" * 600)
    ch.pending_since -= 60  # the first partial batch is long overdue...
    assert ch.offer(b"y" * 600) is True  # ...and this line seals it by bytes
    assert ch.pending_count() == 1
    # The new partial batch waits for its own interval; only the sealed one is due.
    assert ch.due(time.monotonic(), draining=False) == CUT_FULL
