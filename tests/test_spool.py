"""The disk spool: safe on disk, shared by processes, bounded, and proven by crash
injection (SIGKILL at points hypothesis chooses) and by outages and restarts."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.helpers import child_env, run_python, talk_to_python
from tests.spool_helpers import FaultyDisk
from tinybird_export._spool import SUFFIX, Refusal, Spool
from tinybird_export.testing import EventsServer, Reply

HOST = "https://api.tinybird.co"
BOOKKEEPING = (".ledger", ".owner-")  # the shared count, and this process's lock
OTHER = ("0123456789abcdef", 2)  # a batch of another process's channel
ANOTHER = ("fedcba9876543210", 4)


def lines(count: int, start: int = 0) -> bytes:
    return b"".join(b'{"event_id":"e%d"}\n' % i for i in range(start, start + count))


def one_line(size: int) -> bytes:
    """One incompressible line of ``size`` bytes, its newline included."""
    return bytes(b if b != 10 else 11 for b in os.urandom(size - 1)) + b"\n"


class TestOnDisk:
    def test_a_batch_round_trips_and_is_removed_once_sent(self, tmp_path: Path) -> None:
        """A spooled batch comes back oldest first, and is removed once done."""
        spool = Spool(str(tmp_path), 1 << 20)
        assert isinstance(spool.write(lines(3), 3, HOST, "app_logs", (spool.identity, 7)), Path)
        assert isinstance(spool.write(lines(2, 3), 2, HOST, "app_logs", (spool.identity, 7)), Path)
        first = spool.claim(HOST, "app_logs")
        assert first is not None and gzip.decompress(first.body) == lines(3)
        assert spool.owns(first, 7) and not spool.owns(first, 8)
        spool.done(first)
        second = spool.claim(HOST, "app_logs")
        assert second is not None and second.count == 2  # oldest first
        spool.release(second)  # a failed attempt: it goes back, and is claimed again
        again = spool.claim(HOST, "app_logs")
        assert again is not None and again.name == second.name
        spool.done(again)
        assert spool.claim(HOST, "app_logs") is None
        assert spool.held_bytes() == 0
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(BOOKKEEPING)] == []

    def test_each_file_has_its_header_and_never_the_token(self, tmp_path: Path) -> None:
        """Each file has its header, mode 0600, and never the token."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(1), 1, HOST, "app_logs", OTHER)
        (path,) = tmp_path.glob(f"*{SUFFIX}")
        state, header_line = path.read_bytes()[:1], path.read_bytes()[1:].partition(b"\n")[0]
        header = orjson.loads(header_line)
        assert state == b"P"  # pending
        assert {k: header[k] for k in ("v", "datasource", "host", "count")} == {
            "v": 2,
            "datasource": "app_logs",
            "host": HOST,
            "count": 1,
        }
        assert len(header["sha256"]) == 64
        assert oct(path.stat().st_mode & 0o777) == "0o600"

    def test_a_file_that_fails_its_checksum_is_moved_aside_not_sent(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A file failing its checksum goes to corrupt/, counted, never sent."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(2), 2, HOST, "app_logs", OTHER)
        spool.write(lines(1, 2), 1, HOST, "app_logs", OTHER)
        oldest = sorted(tmp_path.glob(f"*{SUFFIX}"))[0]
        data = bytearray(oldest.read_bytes())
        data[-5] ^= 0xFF  # a flipped bit in the body
        oldest.write_bytes(bytes(data))
        claimed = spool.claim(HOST, "app_logs")
        assert claimed is not None and claimed.count == 1  # the good one
        assert spool.corrupt == 1
        assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [oldest.name]
        assert "failed its check" in capsys.readouterr().err

    def test_a_claim_is_atomic_between_processes(self, tmp_path: Path) -> None:
        """Two processes cannot claim one file: not while its claimer lives."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(1), 1, HOST, "app_logs", OTHER)
        code = f"""
            import sys
            from tinybird_export._spool import Spool
            other = Spool({str(tmp_path)!r}, 1 << 20)
            print(other.claim({HOST!r}, "app_logs") is not None, flush=True)
            sys.stdin.readline()  # holds the claim until told
        """
        with talk_to_python(["-c", textwrap.dedent(code)], {}) as other:
            assert other.stdout is not None and other.stdin is not None
            assert other.stdout.readline().strip() == "True"
            assert spool.claim(HOST, "app_logs") is None  # the other process holds it
            other.stdin.write("\n")
            other.stdin.flush()
            other.communicate(timeout=30)

    def test_a_dead_processes_claim_is_released_at_the_next_scan(self, tmp_path: Path) -> None:
        """A dead process's claim is released by the next process's scan."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(1), 1, HOST, "app_logs", OTHER)
        run_python(
            f"""
            import os
            from tinybird_export._spool import Spool
            Spool({str(tmp_path)!r}, 1 << 20).claim({HOST!r}, "app_logs")
            os._exit(0)  # dies holding the claim
        """
        )
        assert spool.claim(HOST, "app_logs") is not None  # its first scan released it
        assert Spool(str(tmp_path), 1 << 20).claim(HOST, "app_logs") is None  # and holds it

    def test_a_forked_child_is_another_owner_and_never_frees_its_parents_claims(
        self, tmp_path: Path
    ) -> None:
        """After fork the child draws its own identity; dropping its copy of the parent's
        locked owner file leaves the parent's lock held, so the child leaves the parent's
        claim alone and claims the next file."""
        result = run_python(
            f"""
            import os, time
            from tinybird_export._spool import Spool
            parent = Spool({str(tmp_path)!r}, 1 << 20)
            for n in range(2):
                parent.write(b'{{"n":%d}}\\n' % n, 1, "h", "ds", (parent.identity, 1))
            held = parent.claim("h", "ds")
            pid = os.fork()
            if pid == 0:
                parent.forget_in_child()  # what the package's fork hook does
                child = Spool({str(tmp_path)!r}, 1 << 20)
                got = child.claim("h", "ds")
                ok = child.identity != parent.identity and got is not None and got.name != held.name
                ok = ok and child.owners.alive(parent.identity, time.monotonic())
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            print(os.waitstatus_to_exitcode(status), held.path.exists())
        """
        )
        assert result.stdout.split() == ["0", "True"], result.stderr

    def test_the_bound_refuses_writes_past_it(self, tmp_path: Path) -> None:
        """spool_max_bytes refuses the writes that would pass it."""
        spool = Spool(str(tmp_path), 2 * 1024 * 1024)
        payload = one_line(600_000)  # incompressible
        written = [spool.write(payload, 1, HOST, "app_logs", OTHER) for _ in range(5)]
        assert [isinstance(path, Path) for path in written] == [True, True, True, False, False]
        assert spool.held_bytes() <= 2 * 1024 * 1024

    def test_the_bound_counts_what_other_processes_wrote_and_claimed(self, tmp_path: Path) -> None:
        """gunicorn workers share one directory: each one's bound is the directory's."""
        mine = Spool(str(tmp_path), 2 * 1024 * 1024)
        theirs = Spool(str(tmp_path), 2 * 1024 * 1024)  # as another process sees it
        payload = one_line(600_000)
        assert all(
            isinstance(theirs.write(payload, 1, HOST, "app_logs", OTHER), Path) for _ in range(3)
        )
        claimed = theirs.claim(HOST, "app_logs")  # in flight: still on disk
        assert claimed is not None
        full = mine.write(payload, 1, HOST, "app_logs", ANOTHER)  # the directory is full
        assert isinstance(full, Refusal) and full.reason == "spool_full"
        theirs.done(claimed)
        assert isinstance(mine.write(payload, 1, HOST, "app_logs", ANOTHER), Path)
        assert 0 < mine.held_bytes() <= 2 * 1024 * 1024

    def test_a_directory_that_refuses_fsync_after_the_rename_still_has_the_file(
        self, tmp_path: Path
    ) -> None:
        """Reported unwritten, the batch would stay in memory and be written again."""
        disk = FaultyDisk()
        spool = Spool(str(tmp_path), 1 << 20, disk)
        disk.fail("fsync", errno.EIO, on=str(tmp_path))  # the directory's (a file's is an fd)
        path = spool.write(lines(2), 2, HOST, "app_logs", OTHER)
        assert isinstance(path, Path) and path.exists()
        assert spool.held_bytes() == path.stat().st_size

    def test_a_claim_of_a_file_spooled_long_ago_is_not_taken_by_another_process(
        self, tmp_path: Path
    ) -> None:
        """An outage longer than any claim age: a live claimer's claim is its own."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(1), 1, HOST, "app_logs", OTHER)
        (path,) = tmp_path.glob(f"*{SUFFIX}")
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
        assert spool.claim(HOST, "app_logs") is not None  # this process sends it
        result = run_python(
            f"""
            from tinybird_export._spool import Spool
            other = Spool({str(tmp_path)!r}, 1 << 20)  # scans at its first claim
            print(other.claim({HOST!r}, "app_logs") is None)
        """
        )
        assert result.stdout.strip() == "True", result.stderr

    def test_a_413_splits_a_spooled_batch_in_its_place(self, tmp_path: Path) -> None:
        """A spooled batch's halves take its place in the order."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(5), 5, HOST, "app_logs", (spool.identity, 7))
        spool.write(lines(1, 5), 1, HOST, "app_logs", (spool.identity, 7))
        big = spool.claim(HOST, "app_logs")
        assert big is not None and spool.split(big, HOST, "app_logs")
        spool.done(big)
        order = []
        while (got := spool.claim(HOST, "app_logs")) is not None:
            assert spool.owns(got, 7)  # the halves keep their writer
            order.append(gzip.decompress(got.body))
            spool.done(got)
        assert order == [lines(2), lines(3, 2), lines(1, 5)]
        one = spool.write(lines(1), 1, HOST, "app_logs", OTHER)
        single = spool.claim(HOST, "app_logs")
        assert isinstance(one, Path) and single is not None
        assert not spool.split(single, HOST, "app_logs")

    def test_files_for_other_hosts_or_data_sources_are_kept_and_reported_once(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Files nobody here sends are kept, and said once."""
        spool = Spool(str(tmp_path), 1 << 20)
        spool.write(lines(1), 1, "https://other.example", "gone", OTHER)
        spool.report_unmatched({(HOST, "app_logs")})
        spool.report_unmatched({(HOST, "app_logs")})
        assert capsys.readouterr().err.count("'gone'") == 1
        assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1


def run_script(script: Path, args: list[str], env: dict[str, str], timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, str(script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


OUTAGE_CHILD = """
import logging, resource, sys, time
from tinybird_export import TinybirdHandler
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
handler = TinybirdHandler(spool_dir=sys.argv[1], queue_max_bytes=1 << 20,
                          batch_max_bytes=256 * 1024, max_event_bytes=64 * 1024,
                          flush_interval=0.05)
log.addHandler(handler)
for i in range(500):  # under the bound: before the first 503, nothing is spilled
    log.info("warm %s", "x" * 400)
handler.flush(2)
before = rss()
for i in range(30_000):  # about 14 MB: 14 times the memory bound
    log.info("%06d %s", i, "x" * 400)
    if i % 500 == 0:
        time.sleep(0.1)  # pacing the producer (~2 MB/s): the sender spills as memory fills
grown = rss() - before
mid = handler.stats()
print(mid.spooled, mid.dropped, grown, flush=True)
sys.stdin.readline()  # the test brings the endpoint back
deadline = time.monotonic() + 60
while (s := handler.stats()).spooled or s.queued or s.in_flight:  # memory, then the spool
    assert time.monotonic() < deadline, s
    handler.flush(1)
end = handler.stats()
print(end.sent, end.unspooled, end.spooled, end.dropped, flush=True)
"""


class TestOutageAndRestart:
    @pytest.mark.timeout(180)
    def test_an_outage_ten_times_the_memory_bound_loses_nothing(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """An outage of 14 times the memory bound: all spooled, then sent in order."""
        server.respond(Reply(status=503))
        script = tmp_path / "outage.py"
        script.write_text(OUTAGE_CHILD)
        with talk_to_python([str(script), str(tmp_path / "spool")], child_env(server)) as proc:
            assert proc.stdout is not None and proc.stdin is not None
            spooled, dropped, grown = map(int, proc.stdout.readline().split())
            server.respond(Reply())
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        sent, unspooled, left, dropped_end = map(int, out.split())
        assert spooled > 20_000 and dropped == 0, (spooled, dropped)
        assert grown < (1 << 20) + 40 * (1 << 20), grown  # the memory bound plus a constant
        assert (sent, left, dropped_end) == (30_500, 0, 0), out
        assert unspooled >= spooled  # and more were spooled after that first count
        events = [e["event"] for e in server.events() if not e["event"].startswith("warm")]
        assert events == [f"{i:06d} {'x' * 400}" for i in range(30_000)]  # in order

    def test_a_restart_during_an_outage_delivers_the_old_processes_events(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """The next process sends what the last one spooled at exit."""
        spool_dir, script = self.spool_during_an_outage(server, tmp_path)
        up = run_script(script, [spool_dir, "0", "30"], child_env(server))
        assert up.stdout.strip() == "500", up.stderr
        assert sorted(e["event"] for e in server.events()) == sorted(f"old {i}" for i in range(500))

    def test_a_spooled_batch_the_server_finds_too_large_is_split_not_dropped(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """The new endpoint's cap is under the batch written during the outage: 413."""
        spool_dir, script = self.spool_during_an_outage(server, tmp_path)
        server.max_body_bytes = 40_000  # about 150 of these events
        up = run_script(script, [spool_dir, "0", "30"], child_env(server))
        assert up.stdout.strip() == "500", up.stderr
        assert [e["event"] for e in server.events()] == [f"old {i}" for i in range(500)]
        assert any(r.status == 413 for r in server.requests), "the cap was never hit"

    @staticmethod
    def spool_during_an_outage(server: EventsServer, tmp_path: Path) -> tuple[str, Path]:
        """500 events spooled by a process that exits while the endpoint answers 503."""
        script = tmp_path / "app.py"
        script.write_text(
            textwrap.dedent("""
            import logging, sys, time
            from tinybird_export import TinybirdHandler
            log = logging.getLogger("app"); log.propagate = False
            handler = TinybirdHandler(spool_dir=sys.argv[1], flush_interval=0.05)
            log.addHandler(handler)
            for i in range(int(sys.argv[2])):
                log.warning("old %d", i)
            deadline = time.monotonic() + float(sys.argv[3])
            while time.monotonic() < deadline and handler.stats().unspooled < 500:
                time.sleep(0.05)  # the new process sends the spool in the background
            print(handler.stats().unspooled)
        """)
        )
        spool_dir = str(tmp_path / "spool")
        server.respond(Reply(status=503))  # the endpoint is down while the old process exits
        started = time.monotonic()
        down = run_script(script, [spool_dir, "500", "0"], child_env(server))
        exit_seconds = time.monotonic() - started
        assert down.returncode == 0, down.stderr
        assert "500 event(s) not delivered at exit were spooled to" in down.stderr, down.stderr
        assert exit_seconds < 1 + 1.5, exit_seconds  # not the 5 s exit budget (+ start-up)
        assert server.events() == []
        server.respond(Reply())
        return spool_dir, script


def spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if SUFFIX in p.name) if directory.exists() else []


def ids_in(paths: list[Path]) -> set[str]:
    ids = set()
    for path in paths:
        _, _, body = path.read_bytes().partition(b"\n")
        for line in gzip.decompress(body).splitlines():
            ids.add(orjson.loads(line)["event_id"])
    return ids


CRASH_CHILD = """
import logging, sys, time
from tinybird_export import TinybirdHandler
log = logging.getLogger("app"); log.propagate = False; log.setLevel(logging.INFO)
handler = TinybirdHandler(spool_dir=sys.argv[1], queue_max_bytes=48 * 1024,
                          batch_max_bytes=8 * 1024, max_event_bytes=4096,
                          flush_interval=0.02, exit_timeout=1, timeout=2)
log.addHandler(handler)
for i in range(int(sys.argv[2])):
    log.info("%05d %s", i, "x" * 120)
    if i % 40 == 0:
        time.sleep(0.005)  # pacing the producer
deadline = time.monotonic() + float(sys.argv[3])
while handler.stats().spool_bytes and time.monotonic() < deadline:
    handler.flush(0.2)  # the endpoint is back: the spool drains (also a previous process's)
"""


class TestCrashInjection:
    @pytest.mark.timeout(900)
    def test_sigkill_anywhere_loses_nothing_spooled_and_sends_nothing_partial(
        self, server: EventsServer, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """Kill with SIGKILL while writing a spool file, while renaming it, while resending
        it (before the request, or after its answer), or during the exit drain (hypothesis
        picks where and when), then start a new
        process on the same directory: everything acknowledged or spooled arrives, nothing
        partial does, and duplicates are whole batches sent twice."""
        counts = {"examples": 0, "sigkills": 0, "duplicated_rows": 0, "spooled_at_crash": 0}

        # No shrinking: each example is two processes, and a failure shows its case as is.
        @settings(
            derandomize=True,
            deadline=None,
            max_examples=50,
            database=None,
            phases=[Phase.generate],
        )
        @given(
            point=st.sampled_from(["write", "rename", "resend", "acked", "exit"]),
            nth=st.integers(1, 6),
            failures=st.integers(0, 40),
            count=st.integers(100, 900),
        )
        def crash_then_recover(point: str, nth: int, failures: int, count: int) -> None:
            spool_dir = tmp_path_factory.mktemp("crash")
            script = spool_dir / "app.py"
            script.write_text(CRASH_CHILD)
            directory = spool_dir / "spool"
            before = len(server.requests)
            server.reset()
            server.script(*[Reply(status=503)] * failures)  # an outage, then back
            crashed = run_script(
                script,
                [str(directory), str(count), "1"],
                {**child_env(server), "TINYBIRD_SPOOL_FAILPOINT": f"{point}:{nth}"},
            )
            server.reset()  # the endpoint is back for the next process
            on_disk = ids_in(spool_files(directory))  # whole files: what was spooled
            acknowledged = {
                e["event_id"] for r in server.requests[before:] if r.status == 202 for e in r.rows
            }
            recovered = run_script(script, [str(directory), "0", "20"], child_env(server))
            assert recovered.returncode == 0, recovered.stderr
            assert not spool_files(directory), "the next process sends the whole spool"
            requests = server.requests[before:]
            assert {r.status for r in requests} <= {202, 503}  # never a malformed body
            batches = [tuple(e["event_id"] for e in r.rows) for r in requests if r.status == 202]
            delivered = [event_id for batch in batches for event_id in batch]
            assert on_disk <= set(delivered)
            assert acknowledged <= set(delivered)
            seen: set[str] = set()
            for batch in batches:  # a duplicate only ever comes from a whole batch resent
                assert not seen.intersection(batch) or batches.count(batch) > 1
                seen.update(batch)
            counts["examples"] += 1
            counts["sigkills"] += crashed.returncode == -9
            counts["duplicated_rows"] += len(delivered) - len(set(delivered))
            counts["spooled_at_crash"] += len(on_disk)

        crash_then_recover()
        print(f"crash injection: {counts}")
        assert counts["examples"] >= 50
        assert counts["sigkills"] >= 10  # the failpoints were reached
