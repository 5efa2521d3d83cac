"""pytest fixture ``tinybird_server``: a running ``EventsServer``, stopped after the test.

Installed through the ``pytest11`` entry point, so any project with tinybird-export and
pytest installed can use it without a conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tinybird_export.testing import EventsServer


@pytest.fixture
def tinybird_server() -> Iterator[EventsServer]:
    """A fresh Events API test server on 127.0.0.1; its ``url`` and ``token`` configure a
    handler (``host=server.url, token=server.token``).
    """
    with EventsServer() as server:
        yield server
