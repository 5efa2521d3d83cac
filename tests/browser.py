"""Headless Chromium (Debian's ``chromium``, never a browser a tool downloads) for the tests
of pages: ``dump_dom`` for a page's DOM once its scripts are done, and ``Browser`` to use one
as a person does (click, type, read), through the DevTools protocol.

``Browser`` speaks the protocol over ``--remote-debugging-pipe``: JSON messages ending in a
NUL byte on file descriptors 3 (commands) and 4 (answers and events), as Playwright and
Puppeteer drive Chromium. No port to find or to leave open to other local programs, and no
client library: the messages are a few lines of ``json``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def dump_dom(url: str, profile: Path, *extra: str, budget_ms: int = 10000) -> str:
    """The DOM of ``url`` once its scripts are done (``budget_ms`` of virtual time, which
    does not pass while a request is pending), as headless Chromium renders it.
    """
    done = subprocess.run(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout


class BrowserError(AssertionError):
    """The browser did not answer, or answered an error."""


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Args:
        profile: Its own profile directory.
        width: The window's width in CSS pixels.
        height: The window's height.
    """

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # bash puts the two pipes on the descriptors Chromium reads (3) and writes (4).
        script = f'exec "$0" "$@" 3<&{commands_read} 4>&{answers_write}'
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                script,
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(commands_read, answers_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._ids = iter(range(1, 1 << 30))
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        targets = self._send("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        attached = self._send("Target.attachToTarget", targetId=page, flatten=True)
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _read(self) -> None:
        pending = b""
        while chunk := os.read(self._answers, 1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put({"closed": True})

    def _send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise BrowserError(f"no answer to {method} in 30 s") from None
            if answer.get("closed"):
                raise BrowserError(f"chromium closed its pipe during {method}")
            if answer.get("id") == number:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """A protocol command to the page; its result."""
        return self._send(method, self._session, **params)

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for it to load (its scripts then run on their own)."""
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """The first truthy value of ``expression``, polled until ``timeout`` seconds (an
        element found is ``True``).
        """
        deadline = time.monotonic() + timeout
        found = f"((value) => value instanceof Node ? true : value)({expression})"
        while True:
            value = self.evaluate(found)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still falsy after {timeout} s: {expression}")
            time.sleep(0.05)  # the poll's pace, not a synchronisation: the deadline decides

    def click(self, selector: str) -> None:
        """Click the middle of the first element matching ``selector``, as a mouse does."""
        box = self.wait_for(
            f"""(() => {{
                const node = document.querySelector({json.dumps(selector)});
                if (!node) return null;
                node.scrollIntoView({{block: "center"}});
                const r = node.getBoundingClientRect();
                return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null;
            }})()"""
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def type(self, selector: str, text: str) -> None:
        """Focus the element matching ``selector``, empty it, and type ``text`` into it."""
        self.click(selector)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).select()")
        self.send("Input.insertText", text=text)

    def press_ctrl_enter(self) -> None:
        """Ctrl+Enter on the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key="Enter",
                code="Enter",
                windowsVirtualKeyCode=13,
                modifiers=2,  # Ctrl
            )

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG."""
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def problems(self) -> list[str]:
        """What the page reported: uncaught exceptions, console errors, refusals of its
        Content-Security-Policy (Chromium logs those as errors too).
        """
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            if not message.get("closed"):
                self.events.append(message)
        seen = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                seen.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") == "error":
                    seen.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url')}")
            elif (
                event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error"
            ):
                seen.append(json.dumps(params.get("args", []))[:500])
        return seen

    def close(self) -> None:
        """End Chromium."""
        with contextlib.suppress(BrowserError):
            self._send("Browser.close")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self._commands)
        self._reader.join(10)
        os.close(self._answers)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
