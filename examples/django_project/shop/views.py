"""Example views: sync, async, and one that fails."""

import asyncio
import logging

from django.http import HttpRequest, HttpResponse

log = logging.getLogger("shop")


def hello(request: HttpRequest, name: str) -> HttpResponse:
    log.info("said hello", extra={"visitor": name})
    return HttpResponse(f"hello {name}\n")


async def async_hello(request: HttpRequest, name: str) -> HttpResponse:
    await asyncio.sleep(0)  # let other requests interleave with this one
    log.info("said hello asynchronously", extra={"visitor": name})
    await asyncio.sleep(0)
    return HttpResponse(f"hello {name}\n")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("kaboom")
