"""The local server against a real browser (Debian's ``chromium``, headless): a page from
another origin, which even knows the token, tries what pages can do without a preflight (a
form POST of ``text/plain`` and of a urlencoded query, ``fetch`` in ``no-cors`` mode, an
image) and a CORS read of ``/tokens``; and a DNS-rebinding name for the server. Nothing is
written, no query runs, the token is never read.

Chromium runs once per test with ``--dump-dom``: the page records what it saw in its DOM, and
the server side says what arrived. That needs no driver (Playwright, a DevTools client) and
no browser download: only the Debian package, which ``.ci/run`` installs.
"""

from __future__ import annotations

import html
import http.server
import json
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local_helpers import ENGINES, EVENT, datasource_names
from tinybird_export import _http_guard
from tinybird_export.local import LocalServer

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)",
)

PAGE = """<!doctype html>
<html><body>
<iframe name="sink1"></iframe><iframe name="sink2"></iframe>
<form id="events" method="POST" enctype="text/plain" target="sink1" action="{local}/v0/events?name=forged_form&token={token}">
  <input type="hidden" name='{{"event":"forged","pad":"' value='"}}'>
</form>
<form id="sql" method="POST" target="sink2" action="{local}/v0/sql?token={token}">
  <input type="hidden" name="q" value="{query}">
</form>
<pre id="out">started</pre>
<script>
const local = {local_json}, token = {token_json}, query = {query_json};
const out = [];
const note = (what) => out.push(what);
const loaded = (name) => new Promise((done) => {{
  document.querySelector(`iframe[name=${{name}}]`).addEventListener("load", () => done(), {{once: true}});
}});
async function attack() {{
  const forms = [loaded("sink1"), loaded("sink2")];
  document.getElementById("events").submit();
  document.getElementById("sql").submit();
  await Promise.all(forms);
  note("forms posted");
  await fetch(`${{local}}/v0/events?name=forged_fetch&token=${{token}}`, {{
    method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
    body: JSON.stringify({event_json}) + "\\n",
  }}).then(() => note("no-cors events sent"), (e) => note("no-cors events failed " + e));
  await fetch(`${{local}}/v0/sql?token=${{token}}&q=${{encodeURIComponent(query)}}`, {{mode: "no-cors"}})
    .then(() => note("no-cors sql sent"), (e) => note("no-cors sql failed " + e));
  await fetch(`${{local}}/tokens`).then((r) => r.text())
    .then((t) => note("tokens READ " + t), (e) => note("tokens unreadable " + e));
  await new Promise((done) => {{
    const image = new Image();
    image.onload = image.onerror = () => done();
    image.src = `${{local}}/v0/sql?token=${{token}}&q=${{encodeURIComponent(query)}}`;
  }});
  note("image requested");
}}
attack().finally(() => {{ note("done"); document.getElementById("out").textContent = out.join("\\n"); }});
</script>
</body></html>
"""


def chromium(url: str, profile: Path, *extra: str) -> str:
    """The DOM of ``url`` once its scripts are done, as headless Chromium renders it."""
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
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


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A second loopback server, on another port: the attacker's origin. Pages are put in
    the dict it yields, by path.
    """
    pages: dict[str, str] = {}

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The server's Host/Origin verdicts of refusal, as they are made: proof that the
    browser's requests arrived, and were refused there."""
    seen: list[str] = []
    real = _http_guard.refusal

    def recording(*args: Any, **kwargs: Any) -> str | None:
        reason = real(*args, **kwargs)
        if reason is not None:
            seen.append(reason)
        return reason

    monkeypatch.setattr(_http_guard, "refusal", recording)
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_page_from_another_origin_writes_and_runs_nothing(
    engine: str, tmp_path: Path, attacker: tuple[str, dict[str, str]], refusals: list[str]
) -> None:
    """A page on another origin, in real Chromium, writes no event or file and reads no token."""
    origin, pages = attacker
    target = tmp_path / "bashrc"
    with LocalServer(tmp_path / "data", engine=engine) as local:
        query = f"SELECT 'echo pwned' INTO OUTFILE '{target}' APPEND FORMAT TSV"
        if engine == "sqlite":  # the SQLite engine has no INTO OUTFILE: a write instead
            query = f"ATTACH DATABASE '{target}' AS pwned"
        pages["/attack.html"] = PAGE.format(
            local=local.url,
            token=local.token,
            query=html.escape(query),
            local_json=json.dumps(local.url),
            token_json=json.dumps(local.token),
            query_json=json.dumps(query),
            event_json=json.dumps(EVENT),
        )
        dom = chromium(f"{origin}/attack.html", tmp_path / "profile")
        datasources = datasource_names(local)
    seen = re.search(r'<pre id="out">(.*?)</pre>', dom, re.DOTALL)
    report = seen.group(1) if seen else ""
    assert "done" in report, dom  # the page ran to its end
    assert "forms posted" in report and "no-cors events sent" in report, report
    assert "tokens unreadable" in report and local.token not in report, report
    assert not target.exists()
    assert not [name for name in datasources if name.startswith("forged")], datasources
    cross = [r for r in refusals if r.startswith("cross-origin")]
    assert len(cross) >= 4, refusals  # two forms, two fetches (and the CORS one, at least)


@pytest.mark.timeout(120)
def test_a_dns_rebinding_name_gets_nothing(tmp_path: Path, refusals: list[str]) -> None:
    """The browser resolves ``rebound.test`` to 127.0.0.1, as a rebinding attacker's DNS
    would: the page it loads from the server is a refusal, without the token."""
    with LocalServer() as local:
        port = urllib.parse.urlsplit(local.url).port
        dom = chromium(
            f"http://rebound.test:{port}/tokens",
            tmp_path / "profile",
            "--host-resolver-rules=MAP rebound.test 127.0.0.1",
        )
        token = local.token
    assert "DNS rebinding" in dom and token not in dom, dom
    assert any("rebound.test" in r for r in refusals), refusals
