"""A 400 for one bad line drops that line alone: named by the server, or found by halving
the batch within a bounded number of requests; a 400 about the request itself (every
request refused) costs two requests more, once, and never a storm."""

from __future__ import annotations

import math

import pytest

from tests.helpers import Post, RecordingTransport, accepted, answered, unit_config, unit_process
from tinybird_export._bad_line import named_line
from tinybird_export._client import Attempt
from tinybird_export._process import Process
from tinybird_export._producer import Producer


def producer(process: Process, **settings: object) -> Producer:
    """A producer of ``process`` (no threads: flush sends on this thread)."""
    return Producer(unit_config(**settings), "unit", process=process)


def refusing(bad: set[bytes], *, name: bool) -> RecordingTransport:
    """A server that refuses a request holding a line in ``bad`` with 400, naming the line
    (1-based) or not, and accepts the others."""

    def answer(post: Post) -> Attempt:
        for number, line in enumerate(post.body.splitlines(), 1):
            if line in bad:
                return answered(400, error=f"line {number} is not a JSON object" if name else "")
        return accepted()

    return RecordingTransport(default=answer)


def lines(count: int) -> list[bytes]:
    return [b'{"n":%d}' % i for i in range(count)]


def send_all(sender: Producer, count: int) -> None:
    for line in lines(count):
        sender.offer(line)


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("line 3 is not a JSON object", 10, 2),
        ("malformed JSON on line 1: unexpected character", 10, 0),
        ("Error at row 10", 10, 9),
        ("line 11 is not a JSON object", 10, None),  # not one of the batch's
        ("line 0", 10, None),
        ("invalid data source name", 10, None),
        ("timeline 3 missing", 10, None),
    ],
)
def test_the_line_a_400_names(text: str, count: int, expected: int | None) -> None:
    """Only a line number within the batch counts as naming a line."""
    assert named_line(text, count) == expected


def test_a_named_bad_line_is_dropped_alone_and_the_rest_sent() -> None:
    """The server names line 500 of 1,000: that one is dropped (http_400), the 999 others
    are sent again in order, in one more request (all 1,000 were dropped)."""
    bad = lines(1000)[499]
    transport = refusing({bad}, name=True)
    sender = producer(unit_process(transport), batch_max_rows=1000)
    send_all(sender, 1000)
    assert sender.flush(10) is False  # one was dropped
    assert len(transport.posts) == 2
    assert transport.posts[1].body.splitlines() == [line for line in lines(1000) if line != bad]
    stats = sender.stats()
    assert (stats.sent, stats.dropped_by_reason) == (999, {"http_400": 1})
    assert stats.accounted() and stats.requests == 2


def test_a_bad_line_the_server_does_not_name_is_found_by_halving() -> None:
    """The 400 says nothing of the line: halving finds it within 2 log2(n) + 2 requests
    more, drops it alone, and delivers the 999 others once each."""
    bad = lines(1000)[613]
    transport = refusing({bad}, name=False)
    sender = producer(unit_process(transport), batch_max_rows=1000)
    send_all(sender, 1000)
    assert sender.flush(10) is False
    delivered = [line for post in transport.posts[1:] for line in post.body.splitlines()]
    accepted_lines = [
        line
        for post in transport.posts
        if bad not in post.body.splitlines()
        for line in post.body.splitlines()
    ]
    assert sorted(accepted_lines) == sorted(line for line in lines(1000) if line != bad)
    assert bad in delivered  # it was tried alone, at most
    assert len(transport.posts) <= 1 + 2 * math.ceil(math.log2(1000)) + 2
    stats = sender.stats()
    assert (stats.sent, stats.dropped_by_reason) == (999, {"http_400": 1})
    assert stats.accounted()


def test_a_400_about_the_request_costs_two_requests_once() -> None:
    """Every request refused (a 400 about the request, not a line): the first batch costs
    its halves' two requests, then the data source's later batches are dropped at once,
    until a request of it is accepted."""
    transport = RecordingTransport(default=answered(400, error="invalid data source name"))
    sender = producer(unit_process(transport), batch_max_rows=100)
    send_all(sender, 100)
    assert sender.flush(10) is False
    assert len(transport.posts) == 3  # the batch, then each half once
    send_all(sender, 100)
    assert sender.flush(10) is False
    assert len(transport.posts) == 4  # dropped whole at once
    assert sender.stats().dropped_by_reason == {"http_400": 200}
    transport.default = accepted()
    send_all(sender, 10)
    assert sender.flush(10) is True  # accepted: later 400s are searched again


def test_many_bad_lines_cost_a_bounded_number_of_requests() -> None:
    """Every line bad and named, one at a time: the search stops at its budget and drops
    the rest whole; bounded, however many bad lines."""
    transport = refusing(set(lines(10_000)), name=True)
    sender = producer(unit_process(transport), batch_max_rows=10_000)
    send_all(sender, 10_000)
    assert sender.flush(30) is False
    assert len(transport.posts) <= 1 + 2 * math.ceil(math.log2(10_000)) + 2
    stats = sender.stats()
    assert stats.dropped_by_reason == {"http_400": 10_000} and stats.accounted()


def test_two_bad_lines_not_named_in_one_half_are_both_found() -> None:
    """Two bad lines in one half of a batch, not named: both are found, the others sent."""
    bad = {lines(64)[3], lines(64)[9]}
    transport = refusing(bad, name=False)
    sender = producer(unit_process(transport), batch_max_rows=64)
    send_all(sender, 64)
    assert sender.flush(10) is False
    stats = sender.stats()
    assert (stats.sent, stats.dropped_by_reason) == (62, {"http_400": 2})
