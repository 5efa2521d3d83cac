"""An asyncio program logging and sending its own events, flushed without blocking the loop.

Run it against the embedded local server (one command, from the repository root)::

    .venv/bin/python examples/asyncio_app.py

``logger.info`` and ``events.send`` only encode and queue, so coroutines call them directly;
``await handler.aflush(timeout)`` and ``await events.aclose()`` wait on a thread while the
loop keeps serving the other tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

from tinybird_export import TinybirdEvents, TinybirdHandler

# The examples' data sources (examples/datasources): what a workspace needs for them.
EXAMPLE_DATASOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasources")

if __name__ == "__main__" and not os.environ.get("TINYBIRD_TOKEN"):
    from tinybird_export.local import spawn

    # Strict, as a Forward workspace: the example sends only to data sources it declares.
    with spawn(":memory:", "--strict", "--datasources", EXAMPLE_DATASOURCES) as local:
        run = subprocess.run([sys.executable, __file__], env=local.env(), check=False)
        sys.exit(run.returncode)

log = logging.getLogger("crawler")


async def crawl(page: int, events: TinybirdEvents) -> None:
    await asyncio.sleep(0.01 * (page % 3))  # stands for the page's own I/O
    log.info("crawled", extra={"page": page})
    events.send({"event": "page_crawled", "href": f"https://shop.example/p/{page}"})


async def main() -> None:
    handler = TinybirdHandler(datasource="asyncio_logs")
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    async with TinybirdEvents(datasource="asyncio_events") as events:  # aclose() on exit
        await asyncio.gather(*(crawl(page, events) for page in range(20)))
        delivered = await handler.aflush(timeout=10)
    print(f"log events acknowledged: {delivered}; page events: {events.stats().sent} sent")
    await handler.aclose()

    from tinybird_export.cli import query

    host, token = os.environ["TINYBIRD_HOST"], os.environ["TINYBIRD_TOKEN"]
    for table in ("asyncio_logs", "asyncio_events"):
        rows = query(host, token, f"select count() n from {table}")["data"]
        print(f"select count() from {table}: {rows[0]['n']}")  # type: ignore[index]


if __name__ == "__main__":
    asyncio.run(main())
