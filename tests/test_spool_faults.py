"""The disk spool when its disk misbehaves, for real: a directory that turns read-only during
a drain, a full file system, processes that all run as PID 1, writers that race for the
bound, a clock that steps, and a restart that logs nothing."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import child_env, closed_port_url, talk_to_python, wait_until
from tests.spool_helpers import (
    FILLER,
    FULL_DISK,
    ReadOnly,
    can_unshare,
    driven,
    in_mount_namespace,
    in_pid_namespace,
    spool_at_exit,
    spool_files,
)
from tinybird_export._spool import Spool
from tinybird_export.testing import EventsServer, Reply

ONE_FILE_PER_REQUEST = {"batch_max_rows": 50}  # spool_at_exit writes files of 50 events
# A request the server holds must not time out before the test releases it: the client would
# send it again (at least once), and the server would accept both copies. 60 s, not the
# default 10 s, rules that out on a loaded machine (the tests' timeout is 120 s).
HELD_UNTIL_RELEASED = {"timeout": 60.0}


@pytest.fixture
def read_only() -> Iterator[list[ReadOnly]]:
    """Directories a test made read-only are writable again after it (tmp cleanup)."""
    made: list[ReadOnly] = []
    yield made
    for directory in made:
        directory.off()


def in_flight(server: EventsServer) -> bool:
    """Wait until a request is held unanswered (the one in flight), however early it came.

    Every earlier request was answered (and recorded) before its process went on, so an
    arrival not yet recorded is one the server holds. A count taken when this is called
    would miss a request that arrived first, and wait instead for the client's resend
    after its read timeout: two copies in flight, both accepted by ``release()``.
    """
    return server.wait_for(lambda: server.arrivals > len(server.requests), 20)


def count_of(server: EventsServer, prefix: str) -> int:
    """How many events starting with ``prefix`` arrived."""
    return sum(1 for e in server.events() if e["event"].startswith(prefix))


def old_events(server: EventsServer) -> collections.Counter[str]:
    """How many times each spooled event ("old N") arrived."""
    return collections.Counter(e["event"] for e in server.events() if e["event"].startswith("old "))


class TestReadOnlyBlip:
    @pytest.mark.timeout(120)
    def test_a_read_only_blip_during_a_drain_never_wedges_the_data_source(
        self, server: EventsServer, tmp_path: Path, read_only: list[ReadOnly]
    ) -> None:
        """The directory turns read-only while a spool file is in flight: the file is not
        sent twice, new events keep flowing during the blip and after it, flush() is True
        once the files left are sent, and the exit is clean."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 500)
        blip = ReadOnly(spool_dir)
        read_only.append(blip)
        server.respond(Reply(hang=True))  # the first spool file waits in flight
        with driven(server, spool_dir, {**ONE_FILE_PER_REQUEST, **HELD_UNTIL_RELEASED}) as child:
            assert in_flight(server)
            blip.on()
            server.release()  # acknowledged: its removal fails
            assert child.ask("wait_unspooled 50") != "0"
            assert child.ask("log 100 during") == "logged"
            assert wait_until(lambda: count_of(server, "during ") == 100, 10)  # memory flows
            assert child.ask("flush 0.5") == "False"  # the files it cannot claim yet: truthful
            blip.off()
            assert child.ask("log 1000 after") == "logged"
            assert child.ask("flush 10") == "True"
            stats = child.stats()
            status, err = child.exit()
        assert status == 0 and "Traceback" not in err, err
        events = [e["event"] for e in server.events()]
        assert sorted(e for e in events if e.startswith("during ")) == sorted(
            f"during {i}" for i in range(100)
        )
        assert sorted(e for e in events if e.startswith("after ")) == sorted(
            f"after {i}" for i in range(1000)
        )
        assert stats["dropped"] == {}, stats
        with driven(server, spool_dir) as later:  # whatever is left is sent, once
            assert later.ask("flush 20") == "True"
            later.exit()
        assert old_events(server) == {f"old {i}": 1 for i in range(500)}
        assert spool_files(spool_dir) == []

    @pytest.mark.timeout(120)
    def test_an_acknowledged_file_is_never_resent_by_a_restart_during_the_blip(
        self, server: EventsServer, tmp_path: Path, read_only: list[ReadOnly]
    ) -> None:
        """The process exits while the directory is still read-only (its exit drain says
        what it could not do, without a traceback); the next process sends the rest, and
        never the file already acknowledged."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 500)
        blip = ReadOnly(spool_dir)
        read_only.append(blip)
        server.respond(Reply(hang=True))
        with driven(server, spool_dir, {**ONE_FILE_PER_REQUEST, **HELD_UNTIL_RELEASED}) as child:
            assert in_flight(server)
            blip.on()
            server.release()
            assert child.ask("wait_unspooled 50") != "0"
            status, err = child.exit()
        assert status == 0 and "Traceback" not in err, err
        blip.off()
        with driven(server, spool_dir) as later:
            assert later.ask("flush 20") == "True"
            later.exit()
        assert old_events(server) == {f"old {i}": 1 for i in range(500)}
        assert wait_until(lambda: spool_files(spool_dir) == [], 5)


class TestRestart:
    def test_a_restarted_process_that_logs_nothing_sends_the_spool_before_flush_is_true(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """Its flush(30) returns True once the previous process's spooled events arrived."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 500)
        with driven(server, spool_dir) as child:
            assert child.ask("flush 30") == "True"
            arrived = old_events(server)
            child.exit()
        assert arrived == {f"old {i}": 1 for i in range(500)}
        assert spool_files(spool_dir) == []

    def test_a_restarted_process_that_exits_at_once_sends_the_spool_at_exit(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """Its exit drain sends the spool (the endpoint answers), within the exit budget."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 500)
        with driven(server, spool_dir) as child:
            status, err = child.exit()
        assert status == 0 and err == "", err
        assert old_events(server) == {f"old {i}": 1 for i in range(500)}
        assert spool_files(spool_dir) == []

    def test_many_small_files_are_sent_in_few_requests_in_order(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """2,000 files of one event each (a service that spilled at every exit): a handful
        of requests, in the order they were written."""
        spool_dir = tmp_path / "spool"
        writer = Spool(str(spool_dir), 1 << 30)
        for i in range(2000):
            line = orjson.dumps({"event": f"old {i}"}) + b"\n"
            assert writer.write(line, 1, server.url, "app_logs", (writer.identity, 0))
        with driven(server, spool_dir) as child:
            assert child.ask("flush 60") == "True"
            child.exit()
        assert [e["event"] for e in server.events()] == [f"old {i}" for i in range(2000)]
        assert len(server.requests) <= 10, len(server.requests)
        assert spool_files(spool_dir) == []


class TestIdentity:
    @pytest.mark.skipif(not can_unshare("--pid", "--fork"), reason="needs PID namespaces")
    def test_a_restarted_pid_1_does_not_take_its_predecessors_files_for_its_own(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """Every incarnation of a container is PID 1: the next one sends the previous one's
        files as another's (its spooled count never goes negative), and its flush() is
        True only once its own events arrived."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 67, pid_1=True)
        with driven(server, spool_dir, prefix=in_pid_namespace([])) as child:
            assert child.ask("log 10 own") == "logged"
            assert child.ask("flush 10") == "True"
            own = sorted(e["event"] for e in server.events() if e["event"].startswith("own "))
            stats = child.stats()
            child.exit()
        assert own == sorted(f"own {i}" for i in range(10))
        assert stats["spooled"] == 0 and stats["sent"] == 10, stats
        assert stats["unspooled"] == 67, stats
        assert old_events(server) == {f"old {i}": 1 for i in range(67)}

    @pytest.mark.skipif(not can_unshare("--pid", "--fork"), reason="needs PID namespaces")
    def test_two_pid_1_containers_on_one_volume_never_send_one_file_twice(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """Two containers share the spool volume, both PID 1: a file one of them claimed is
        not taken by the other while it lives."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 200)
        server.respond(Reply(hang=True))
        with driven(server, spool_dir, HELD_UNTIL_RELEASED, prefix=in_pid_namespace([])) as first:
            assert in_flight(server)
            with driven(server, spool_dir, prefix=in_pid_namespace([])) as second:
                second.ask("flush 1")  # its scan ran, and it sent what it could claim
                server.release()
                assert first.ask("flush 20") == "True"
                assert second.ask("flush 20") == "True"
                second.exit()
            first.exit()
        assert old_events(server) == {f"old {i}": 1 for i in range(200)}

    def test_a_clock_step_never_makes_a_live_claim_look_stale(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """The second process's clock is an hour ahead (a step): the first one's claim, in
        flight, is still its own."""
        spool_dir = tmp_path / "spool"
        spool_at_exit(server, spool_dir, 200)
        server.respond(Reply(hang=True))
        with driven(server, spool_dir, HELD_UNTIL_RELEASED) as first:
            assert in_flight(server)
            with driven(server, spool_dir, env={"CLOCK_STEP": "3600"}) as stepped:
                stepped.ask("flush 1")
                server.release()
                assert first.ask("flush 20") == "True"
                assert stepped.ask("flush 20") == "True"
                stepped.exit()
            first.exit()
        assert old_events(server) == {f"old {i}": 1 for i in range(200)}


class TestSharing:
    def test_the_writers_spooled_count_follows_its_files_sent_by_another_process(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """A process spilled during an outage and is still paused; another one sends its
        files: the writer's stats move them from spooled to sent."""
        spool_dir = tmp_path / "spool"
        server.respond(Reply(status=503, headers={"Retry-After": "40"}))
        settings = {
            "queue_max_bytes": 64 * 1024,
            "batch_max_bytes": 16 * 1024,
            "max_event_bytes": 4096,
            "batch_max_rows": 50,
        }
        with driven(server, spool_dir, settings) as writer:
            for _ in range(20):
                assert writer.ask("log 100 old") == "logged"
                assert writer.ask("flush 0.05") == "False"  # paused: the sender spills
            assert wait_until(lambda: writer.stats()["spooled"] >= 1000, 20), writer.stats()
            spooled = writer.stats()["spooled"]
            server.reset()
            with driven(server, spool_dir) as sender:
                assert sender.ask("flush 20") == "True"
                sender.exit()
            on_disk = {p.name for p in spool_files(spool_dir)}
            assert wait_until(lambda: writer.stats()["spooled"] == 0, 20), (
                writer.stats(),
                on_disk,
            )
            stats = writer.stats()
            writer.exit()
        assert stats["emitted"] == 2000 and stats["sent"] >= spooled, (spooled, stats)


class TestFullDisk:
    @pytest.mark.skipif(not can_unshare("--mount"), reason="needs mount namespaces")
    @pytest.mark.timeout(180)
    def test_a_full_disk_leaves_whole_files_and_says_what_it_could_not_keep(
        self, server: EventsServer, tmp_path: Path
    ) -> None:
        """A 256 KiB file system fills at exit: what is on disk is whole (the next process
        sends it all, nothing corrupt), and what did not fit is dropped under a reason."""
        directory = tmp_path / "small"
        server.respond(Reply(status=503))  # down while the first process exits
        args = [str(directory), "256k", "3000", "200", FILLER]
        with talk_to_python(
            ["-c", FULL_DISK, *args], child_env(server), prefix=in_mount_namespace([])
        ) as driver:
            assert driver.stdout is not None and driver.stdin is not None
            writer = orjson.loads(driver.stdout.readline())
            server.reset()  # back for the next one
            driver.stdin.write("\n")
            driver.stdin.flush()
            out, err = driver.communicate(timeout=150)
        assert driver.returncode == 0, err
        sender = orjson.loads(out)
        assert (sender["flushed"], sender["corrupt"]) == (True, 0), sender  # all whole
        stats = orjson.loads(writer["stats"])
        arrived = len(server.events())
        assert stats["spooled"] == arrived > 0, (stats, arrived)
        assert stats["emitted"] == 3000
        assert stats["spooled"] + sum(stats["dropped"].values()) == 3000
        assert set(stats["dropped"]) == {"spool_full"}, stats
        assert "could not be spooled" in writer["err"], writer["err"]

    @pytest.mark.timeout(180)
    def test_writers_racing_at_exit_stay_within_spool_max_bytes(self, tmp_path: Path) -> None:
        """Eight processes spill at exit into one directory at the same moment: together
        they never pass spool_max_bytes, and each says what it could not keep."""
        directory, bound = tmp_path / "spool", 1 << 20  # each one has 0.7 MiB to spool
        args = [str(directory), "6000", "200", str(bound)]
        env = {**os.environ, "TINYBIRD_HOST": closed_port_url(), "TINYBIRD_TOKEN": "t"}
        env["TINYBIRD_DATASOURCE"] = "app_logs"
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", FILLER, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        outputs = [writer.communicate(timeout=120) for writer in writers]
        held = sum(path.stat().st_size for path in spool_files(directory))
        assert held <= bound, f"{held / bound:.2f}x the bound"
        for out, err in outputs:
            stats = orjson.loads(out)
            assert stats["spooled"] + sum(stats["dropped"].values()) == 6000, (stats, err)
