"""A 400 for a batch: one bad line drops that line alone, not its whole batch.

The Events API answers 400 for a whole request when one of its NDJSON lines is not a JSON
object, and inserts nothing (its docs: "The request is invalid. The body will contain more
information ... No data has been inserted"). How the body names the line is not
documented; the test and local servers of this package, like Tinybird's own (issue 24),
say ``line N`` (1-based). So, decided here, applied by ``_delivery``:

- **The answer names a line** (``line N`` or ``row N``, within the batch): that line alone
  is dropped (``http_400``, the server's words quoted once) and the rest is sent again.
- **It does not**: the batch is searched by halves. A half that is accepted says the 400
  was about lines (*confirmed*); a refused half is halved again, down to the one bad line.
  Before anything is confirmed, a refused half waits behind the other half (*parked*):
  if that one is refused too, the 400 is about the request itself (a data source name it
  refuses, a proxy's answer), not a line: both are dropped whole, and the data source's
  later 400s are dropped at once, without a search, until a request of it is accepted.
  A request-level 400 costs two requests more, once; a bad line among ``n`` costs at most
  ``2 log2(n) + 2`` (``budget``: 30 for 10,000 events), then what is still refused is
  dropped whole. Requests count against the rate limit like any other.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Final

from tinybird_export._batch import Batch, Probe

_NAMED_LINE: Final = re.compile(r"\b(?:line|row)\s+(\d{1,9})\b", re.IGNORECASE)


class Act(enum.Enum):
    """What to do with a batch (or a piece of one) about a 400."""

    SEND = "send"  # as any batch
    DROP = "drop"  # drop it whole (http_400)
    DROP_LINE = "drop_line"  # drop the named line, send the rest
    SPLIT = "split"  # replace it by its halves
    PARK = "park"  # send it again behind the other half


def named_line(error: str, count: int) -> int | None:
    """The 0-based line a 400's text names (``line 3``, ``row 3``: 1-based), if it is one
    of the batch's ``count``.
    """
    found = _NAMED_LINE.search(error)
    if found is None:
        return None
    number = int(found.group(1))
    return number - 1 if 1 <= number <= count else None


def before_sending(batch: Batch) -> Act:
    """A piece of a search, before its request: SEND, or what its search already knows
    (DROP: the search found the 400 is about the request; SPLIT or DROP: it was refused,
    and the other half's acceptance says it holds a bad line).
    """
    probe = batch.probe
    if probe is None:
        return Act.SEND
    if probe.aborted:
        return Act.DROP
    if batch.parked and probe.confirmed:
        return Act.SPLIT if batch.count > 1 else Act.DROP
    return Act.SEND


def after_400(batch: Batch, error: str, *, search_allowed: bool) -> tuple[Act, int | None]:
    """What a 400 for ``batch`` means: the act, and the line for DROP_LINE. Starts or
    advances the batch's search (``batch.probe``); ``search_allowed``: the data source's
    earlier search did not find its 400s to be about the request.
    """
    count = batch.count
    line = named_line(error, count) if count > 1 else None
    probe = batch.probe
    if probe is None:
        if count < 2 or not (search_allowed or line is not None):
            return Act.DROP, None
        probe = batch.probe = Probe(budget=2 * math.ceil(math.log2(count)) + 2, error=error)
        if line is None:
            return Act.SPLIT, None  # the first request of the search was this one
    if probe.aborted or probe.budget <= 0:
        return Act.DROP, None
    probe.budget -= 1
    if line is not None:
        probe.confirmed = True
        return Act.DROP_LINE, line
    if probe.confirmed:
        return (Act.SPLIT if count > 1 else Act.DROP), None
    probe.failures += 1
    if probe.failures >= 2:  # both halves refused, nothing accepted: the request is at fault
        probe.aborted = True
        return Act.DROP, None
    return Act.PARK, None
