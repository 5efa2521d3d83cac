"""The local server's page at ``/``, in a real browser (Debian's ``chromium``, headless), on
both engines: the data sources with their counts, events per minute, the newest events, a
trace's waterfall and the SQL box, with the token from the URL's fragment only; and without
it, nothing.

What the page shows is read from its DOM: ``--dump-dom`` for what it shows on opening (its
first refresh, which Chromium's virtual time waits for), and the DevTools protocol
(``browser.Browser``) to click and type as a person does, each wait a poll with a deadline.
The server side records every request line it parsed and its own request log: the token is
in neither.
"""

from __future__ import annotations

import datetime
import html.parser
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.browser import CHROMIUM, Browser, dump_dom
from tests.helpers import wait_until
from tests.local_helpers import ENGINES, ndjson, post
from tinybird_export.local import LocalServer, _base_url
from tinybird_export.local import _http as local_http

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)",
    ),
    pytest.mark.timeout(120),
]
MINUTES = 5
PER_MINUTE = (3, 9, 27, 6, 15)  # simple_events in each of the last five minutes
QUARANTINED = 2


class Elements(html.parser.HTMLParser):
    """Every element's tag, attributes and text, from a dumped DOM."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node: dict[str, Any] = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        node["inside"] = [n.get("id") for n in self._open if n.get("id")]
        self.found.append(node)
        if tag not in ("meta", "link", "input", "br", "img", "rect", "line", "circle"):
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for node in self._open:
            node["text"] += data

    def select(self, **attrs: str) -> list[dict[str, Any]]:
        return [n for n in self.found if all(n.get(k) == v for k, v in attrs.items())]

    def within(self, element_id: str) -> list[dict[str, Any]]:
        return [n for n in self.found if element_id in n["inside"]]

    def one(self, **attrs: str) -> dict[str, Any]:
        matches = self.select(**attrs)
        assert len(matches) == 1, (attrs, matches)
        return matches[0]


def utc(minutes_ago: float = 0) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def fill(local: LocalServer) -> None:
    """simple_events over the last five minutes, two rows that go to quarantine, logs."""
    rows = []
    for minutes_ago, count in zip(range(MINUTES - 1, -1, -1), PER_MINUTE, strict=True):
        rows += [
            {"timestamp": utc(minutes_ago), "event": "page_view", "href": f"https://x/{i}"}
            for i in range(count)
        ]
    rows += [{"timestamp": "not a time", "event": "bad"}] * QUARANTINED
    assert post(local, "simple_events", ndjson(*rows), wait="true")[0] == 200
    logs = [  # log 0 the newest, a millisecond apart
        {"timestamp": utc(i / 60_000), "event": f"log {i}", "event_id": str(i), "level": "INFO"}
        for i in range(4)
    ]
    logs = [{**log, "logger": "x"} for log in logs]
    assert post(local, "app_logs", ndjson(*logs), wait="true")[0] == 200


@pytest.fixture
def request_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request line the local server parsed (with its query string)."""
    seen: list[str] = []
    real = local_http.Handler.parse_request

    def recording(handler: local_http.Handler) -> bool:
        parsed = real(handler)
        seen.append(handler.requestline)
        return parsed

    monkeypatch.setattr(local_http.Handler, "parse_request", recording)
    return seen


@pytest.fixture(params=ENGINES)
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LocalServer, io.StringIO]]:
    """A local server on ``engine`` with its request log in a string."""
    log = io.StringIO()
    with LocalServer(tmp_path / "data", engine=request.param, request_log=log) as local:
        yield local, log


def test_the_printed_url_opens_the_page_with_counts_and_a_chart(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path, request_lines: list[str]
) -> None:
    """The printed URL opens the page ready: counts, quarantine, a chart, the newest events; the
    token in no request line or log line."""
    local, log = served
    fill(local)
    assert local.page_url == f"{local.url}/#token={local.token}"
    assert local.url.startswith("http://localhost:")
    dom = Elements(dump_dom(local.page_url, tmp_path / "profile"))

    assert dom.one(id="no-token").get("hidden") is not None
    assert dom.one(id="workspace").get("hidden") is None
    events = dom.one(tag="tr", **{"data-datasource": "simple_events"})
    assert events["data-rows"] == str(sum(PER_MINUTE))
    assert events["data-quarantined"] == str(QUARANTINED)
    assert "warn" in dom.select(tag="td", **{"class": "number quarantined warn"})[0]["class"]
    assert dom.one(tag="tr", **{"data-datasource": "app_logs"})["data-rows"] == "4"
    assert dom.one(tag="tr", **{"data-datasource": "traces"})["data-rows"] == "0"

    chart = dom.one(id="chart-svg")
    assert chart["data-datasources"].split(",") == ["simple_events", "app_logs"]
    assert chart["data-events"] == str(sum(PER_MINUTE) + 4)
    bars = dom.one(tag="g", **{"data-datasource": "simple_events"})
    assert bars["data-total"] == str(sum(PER_MINUTE))
    counts = sorted(int(r["data-count"]) for r in dom.found if r["tag"] == "rect")
    assert sum(counts) == sum(PER_MINUTE) + 4 and max(counts) >= max(PER_MINUTE)

    # The newest events of the data source written last (app_logs), newest first.
    assert dom.one(id="events-name")["text"] == "app_logs"
    newest = [row["text"] for row in dom.within("events") if row["tag"] == "tr"][1:]
    assert [re.search(r"log \d", text).group() for text in newest] == [f"log {i}" for i in range(4)]  # type: ignore[union-attr]

    assert all(local.token not in line for line in request_lines), request_lines
    paths = {line.split()[1] for line in request_lines}
    assert {"/", "/app.js", "/v0/datasources", "/v0/sql"} <= paths
    local.stop()  # the log's last lines are written
    assert local.token not in log.getvalue() and "GET    /v0/datasources" in log.getvalue()


@pytest.mark.parametrize("fragment", ["", "#token=p.local.0000", "#other=1"])
def test_without_the_token_the_page_shows_no_data(
    fragment: str, tmp_path: Path, request_lines: list[str]
) -> None:
    """Without the token (or with a refused one) the page asks for no data, shows none, and says
    where the token is."""
    with LocalServer() as local:
        fill(local)
        before = len(request_lines)
        dom = Elements(dump_dom(f"{local.url}/{fragment}", tmp_path / "profile"))
    assert dom.one(id="workspace").get("hidden") is not None
    no_token = dom.one(id="no-token")
    assert no_token.get("hidden") is None
    assert "tinybird-export local" in no_token["text"] and "#token=" in no_token["text"]
    if fragment.startswith("#token"):
        assert "refused this token" in no_token["text"]
    assert not dom.select(tag="tr", **{"data-datasource": "simple_events"})
    assert not [n for n in dom.found if n.get("id") == "chart-svg"]
    assert local.token not in str(dom.found)
    asked = [line for line in request_lines[before:] if " /v0/" in line]
    if fragment.startswith("#token"):  # asked once, refused (403), nothing more
        assert len(asked) == 1 and asked[0].startswith("GET /v0/datasources "), asked
    else:
        assert asked == []


def send_spans(local: LocalServer, shape: str) -> list[str]:
    """A request's spans through TinybirdSpanExporter (real OTel SDK spans): a root, two
    children, a grandchild that fails. Their trace ids.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tinybird_export.otel import TinybirdSpanExporter

    exporter = TinybirdSpanExporter(host=local.url, token=local.token, shape=shape)
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    ids = []
    for _ in range(2):
        with tracer.start_as_current_span("POST /checkout") as root:
            ids.append(format(root.get_span_context().trace_id, "032x"))
            with tracer.start_as_current_span("cart.load"):
                pass
            with (
                tracer.start_as_current_span("payment"),
                tracer.start_as_current_span("charge card") as charge,
            ):
                charge.set_status(trace.Status(trace.StatusCode.ERROR, "declined"))
    assert exporter.force_flush(10_000)
    provider.shutdown()
    return ids


WATERFALL = """[...document.querySelectorAll('#waterfall .span-row[data-span-id]')].map(
    (row) => [row.querySelector('.span-label').textContent, Number(row.dataset.depth),
              row.querySelector('rect').getAttribute('class')])"""


@pytest.mark.parametrize(("shape", "datasource"), [("flat", "traces"), ("otel", "otel_traces")])
def test_a_click_on_a_trace_shows_its_spans_as_a_waterfall(
    served: tuple[LocalServer, io.StringIO], shape: str, datasource: str, tmp_path: Path
) -> None:
    """A click on a trace id shows its spans in tree order, each at its depth, a failure in red, for
    both span shapes."""
    local, _ = served
    trace_ids = send_spans(local, shape)
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        browser.click(f'#datasources tr[data-datasource="{datasource}"] button')
        browser.wait_for(f"document.querySelector('#events-name').textContent === '{datasource}'")
        browser.click(f'#events button.trace[data-trace="{trace_ids[0]}"]')
        spans = browser.wait_for(
            f"(() => {{ const r = {WATERFALL}; return r.length === 4 && r; }})()"
        )
        assert browser.evaluate("document.querySelector('#trace-id').textContent") == trace_ids[0]
        assert browser.problems() == []
    assert spans == [
        ["POST /checkout shop", 0, "bar"],
        ["cart.load shop", 1, "bar"],
        ["payment shop", 1, "bar"],
        ["charge card shop", 2, "bar error"],
    ]


def test_a_refresh_that_finds_the_same_rows_leaves_the_table_alone(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path, request_lines: list[str]
) -> None:
    """A refresh that reads the same newest rows keeps the table's elements, so that a click
    pressed on a trace's button is not released on its replacement (the page used to rebuild
    the table every two seconds); a new row still rebuilds it."""
    local, _ = served
    fill(local)
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        browser.wait_for("document.querySelector('#events-name').textContent === 'app_logs'")
        browser.wait_for("document.querySelectorAll('#events tbody tr').length === 4")
        browser.evaluate("document.querySelector('#events tbody tr').dataset.kept = 'yes'")
        # A refresh reads the data sources first, then the newest rows: once a second refresh
        # has begun since the mark, a whole one has read and shown the rows again.
        begun = sum("/v0/datasources" in line for line in request_lines)
        assert wait_until(
            lambda: sum("/v0/datasources" in line for line in request_lines) >= begun + 2,
            timeout=20,
        )
        kept = "document.querySelector('#events tbody tr').dataset.kept === 'yes'"
        assert browser.evaluate(kept) is True
        newest = {"timestamp": utc(-0.01), "event": "log new", "event_id": "9", "level": "INFO"}
        newest |= {"logger": "x"}
        assert post(local, "app_logs", ndjson(newest), wait="true")[0] == 200
        browser.wait_for("document.querySelectorAll('#events tbody tr').length === 5")
        assert browser.evaluate(kept) is False
        assert browser.problems() == []


def test_the_sql_box_answers_as_tb_sql_and_refuses_what_the_server_refuses(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path, request_lines: list[str]
) -> None:
    """The SQL box answers through POST /v0/sql (the token never in its URL) and shows the server's
    read-only refusal."""
    local, _ = served
    fill(local)
    result = "[...document.querySelectorAll('#sql-result tbody tr')].map((r) => r.textContent)"
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        browser.wait_for("document.querySelector('#chart-svg')")
        query = "select event, count() c from simple_events group by event order by event"
        browser.type("#sql", query)
        browser.press_ctrl_enter()
        rows = browser.wait_for(f"(() => {{ const r = {result}; return r.length && r; }})()")
        assert rows == [f"page_view{sum(PER_MINUTE)}"]
        assert "1 row " in browser.evaluate("document.querySelector('#sql-status').textContent")

        browser.type("#sql", "drop table simple_events")
        browser.click("#sql-form button[type=submit]")
        refusal = browser.wait_for(
            "document.querySelector('#sql-status.failed') && "
            "document.querySelector('#sql-status').textContent"
        )
        assert "read-only" in refusal or "not allowed" in refusal.lower(), refusal
        refused = "status of 403 (Forbidden)"  # the drop's answer: the only problem
        assert [p for p in browser.problems() if refused not in p] == []
    assert local.store.datasources()  # still there
    sql_lines = [line for line in request_lines if "/v0/sql" in line]
    assert sql_lines and all(line.startswith("POST /v0/sql HTTP") for line in sql_lines)


def test_event_text_is_shown_as_text_never_run(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path
) -> None:
    """An application's users write what it logs: markup in an event stays text."""
    local, _ = served
    attack = '<img src=x onerror="document.title=`pwned`"><script>document.title="pwned"</script>'
    row = {"timestamp": utc(), "event": attack, "href": "javascript:alert(1)", "session_id": attack}
    assert post(local, "simple_events", ndjson(row), wait="true")[0] == 200
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        shown = browser.wait_for(
            "[...document.querySelectorAll('#events td')].map((c) => c.textContent).join(' ')"
        )
        assert attack in shown
        assert browser.evaluate("document.title") == "tinybird-export local"
        assert (
            browser.evaluate("document.querySelectorAll('#events img, #events script').length") == 0
        )
        browser.type("#sql", f"select '{attack}' markup")
        browser.press_ctrl_enter()
        browser.wait_for("document.querySelector('#sql-result tbody td')")
        assert (
            browser.evaluate("document.querySelector('#sql-result tbody td').textContent") == attack
        )
        assert browser.evaluate("document.title") == "tinybird-export local"
        assert browser.problems() == []


def test_a_name_in_any_alphabet_does_not_stop_the_page(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path
) -> None:
    """Events name their own columns (the guessed schema keeps letters of any alphabet): one
    event whose time column is ``horodatage_é`` must not stop the page's refresh for every
    data source (the page refused to quote the name, and each refresh failed).
    """
    local, _ = served
    fill(local)
    row = {"horodatage_é": utc(), "événement": "ouvert"}
    assert post(local, "journal", ndjson(row), wait="true")[0] == 200
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        shown = browser.wait_for(
            "document.querySelector('#events-name').textContent === 'journal' && "
            "[...document.querySelectorAll('#events td')].map((c) => c.textContent).join(' ')"
        )
        assert "ouvert" in shown
        assert browser.wait_for("document.querySelectorAll('#chart rect').length") > 0
        assert "failed" not in str(browser.evaluate("document.querySelector('#status').className"))
        assert browser.problems() == []


def test_a_small_data_source_gets_a_scale_of_its_own(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path
) -> None:
    """Stacked under simple_events, app_logs' four rows are a sliver: a click on it in the
    legend draws it alone (and shows its newest events); another click, all again."""
    local, _ = served
    fill(local)
    chart = "document.querySelector('#chart-svg')"
    with Browser(tmp_path / "profile") as browser:
        browser.open(local.page_url)
        browser.wait_for(chart)
        browser.click('#legend li[data-datasource="app_logs"] button')
        alone = browser.wait_for(
            f"{chart}.dataset.datasources === 'app_logs' && [{chart}.dataset.events, "
            "document.querySelector('#events-name').textContent]"
        )
        assert alone == ["4", "app_logs"]
        browser.click('#legend li[data-datasource="app_logs"] button')
        assert browser.wait_for(
            f"{chart}.dataset.datasources.includes(',') && {chart}.dataset.events"
        )
        assert browser.problems() == []


class TestTheURL:
    """``http://localhost:PORT``: the name Tinybird's Forward CLI takes for a local server
    (tinybird 5.0.3, tb/modules/common.py ``format_host``: ``"localhost" in host``)."""

    def test_on_loopback_it_is_localhost(self) -> None:
        """Bound to 127.0.0.1, the server's URL is http://localhost:PORT, and answers there."""
        with LocalServer() as local:
            port = local.url.rsplit(":", 1)[1]
            assert local.url == f"http://localhost:{port}"
            answer = urllib3.request("GET", f"{local.url}/v0/health", retries=False)
            assert answer.status == 200

    def test_otherwise_the_address_it_listens_on(self) -> None:
        """On another address the URL names it (IPv6 in brackets)."""
        assert _base_url("::1", 7181) == "http://[::1]:7181"
        assert _base_url("0.0.0.0", 7181) == "http://0.0.0.0:7181"
        assert _base_url("127.0.0.1", 7181) == "http://localhost:7181"

    def test_the_readme_and_the_docs_show_the_url_it_prints(self) -> None:
        """The README's export line and the docs show the URL the server prints for port 7181."""
        root = Path(__file__).parent.parent
        readme = (root / "README.md").read_text()
        assert f"export TINYBIRD_HOST={_base_url('127.0.0.1', 7181)}\n" in readme
        docs = (root / "docs" / "local.md").read_text()
        assert "tinybird-export local    " in docs and "# http://localhost:7181," in docs
        assert "http://127.0.0.1:7181" not in readme + docs


class TestSecurity:
    """The page adds public files, and weakens nothing: every check of the security layer
    still refuses another origin, the page's files hold no data, the data needs the token.
    """

    @pytest.fixture
    def local(self) -> Iterator[LocalServer]:
        with LocalServer() as server:
            fill(server)
            yield server

    def get(self, local: LocalServer, path: str, **headers: str) -> urllib3.BaseHTTPResponse:
        return urllib3.request("GET", f"{local.url}{path}", headers=headers, retries=False)

    @pytest.mark.parametrize("path", ["/", "/app.js", "/app.css", "/chart.js", "/favicon.svg"])
    def test_the_files_are_public_and_hold_no_data(self, local: LocalServer, path: str) -> None:
        """The page's files answer without the token, hold no data, and carry the page's headers
        (CSP, no framing, no CORS)."""
        answer = self.get(local, path)
        assert answer.status == 200
        assert local.token.encode() not in answer.data and b"page_view" not in answer.data
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]

    def test_the_page_has_no_inline_script_or_style(self, local: LocalServer) -> None:
        """The page's HTML loads one module script: no inline script, style or handler."""
        page = self.get(local, "/").data.decode()
        assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="/app.js">']
        assert "<style" not in page and not re.search(r"<[^>]*\s(style|on\w+)=", page)

    @pytest.mark.parametrize(
        "headers",
        [
            {"Host": "attacker.example"},
            {"Host": "rebound.test:7181"},
            {"Origin": "http://attacker.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ],
    )
    def test_other_origins_get_not_even_the_page(
        self, local: LocalServer, headers: dict[str, str]
    ) -> None:
        """A foreign Host, a foreign or null Origin, a cross-site or same-site fetch get a 403, not
        the page."""
        for path in ("/", "/app.js"):
            answer = self.get(local, path, **headers)
            assert answer.status == 403 and b"<html" not in answer.data, (path, answer.data)

    def test_the_data_still_needs_the_token(self, local: LocalServer) -> None:
        """From the page's own origin, the data still needs the token."""
        own = {"Origin": local.url, "Sec-Fetch-Site": "same-origin"}
        assert self.get(local, "/v0/datasources", **own).status == 403
        answer = self.get(local, "/v0/datasources", **own, Authorization=f"Bearer {local.token}")
        assert answer.status == 200

    def test_the_page_is_only_read(self, local: LocalServer) -> None:
        """POST, PUT and DELETE to the page do nothing."""
        for method in ("POST", "PUT", "DELETE"):
            answer = urllib3.request(method, f"{local.url}/", body=b"x", retries=False)
            assert answer.status in (403, 404), (method, answer.status)


def test_a_token_pasted_in_the_page_opens_it(
    served: tuple[LocalServer, io.StringIO], tmp_path: Path
) -> None:
    """Pasting the token in the page's form opens it (the token goes in the fragment)."""
    local, _ = served
    fill(local)
    with Browser(tmp_path / "profile") as browser:
        browser.open(f"{local.url}/")
        browser.wait_for("!document.querySelector('#no-token').hidden")
        browser.type("#token-input", local.token)
        browser.click("#token-form button")
        browser.wait_for("document.querySelector('#chart-svg')")
        assert browser.evaluate("location.hash") == f"#token={local.token}"
        assert browser.problems() == []
