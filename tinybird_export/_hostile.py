"""The test server's hostile answers: huge, endless or lying bodies, and bytes trickled one
at a time. Written on the raw socket, so that nothing in ``http.server`` smooths them over.
"""

from __future__ import annotations

import http
import threading
from typing import Any, Final

from tinybird_export._server_exchange import Reply

_CHUNK: Final = 64 * 1024


class _Stopped(Exception):
    """The server is stopping: the answer ends."""


def hostile_answer(handler: Any, owner: Any, status: int, reply: Reply) -> None:
    """Write ``reply``'s hostile answer on ``handler``'s connection until the client goes
    away or the server stops (``owner.stopping``).
    """
    stopping: threading.Event = owner.stopping
    headers = [f"HTTP/1.1 {status} {_reason(status)}", "Content-Type: application/json"]
    headers += [f"{name}: {value}" for name, value in reply.headers.items()]
    if reply.endless:
        headers.append("Transfer-Encoding: chunked")
    else:
        size = reply.content_length if reply.content_length is not None else reply.body_size
        headers.append(f"Content-Length: {size}")
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    try:
        _write(handler.wfile, head, reply.trickle, stopping)
        if reply.endless:
            chunk = b"%x\r\n%s\r\n" % (_CHUNK, b"x" * _CHUNK)
            while not stopping.is_set():
                handler.wfile.write(chunk)
        else:
            sent, block = 0, b"x" * _CHUNK
            while sent < reply.body_size:
                part = block[: reply.body_size - sent]
                _write(handler.wfile, part, reply.trickle_body, stopping)
                sent += len(part)
        handler.wfile.flush()
    except (OSError, _Stopped):  # the client went away (it should), or the server stops
        pass


def _write(out: Any, data: bytes, pause: float, stopping: threading.Event) -> None:
    if not pause:
        out.write(data)
        return
    for index in range(len(data)):
        out.write(data[index : index + 1])
        out.flush()
        if stopping.wait(pause):
            raise _Stopped


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
