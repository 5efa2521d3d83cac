"""What an attacker's requests cost ``tinybird-export local``: each one against a server in its
own process, timed, with the server's peak RSS (Linux: ``VmHWM``).

    python bench/local_attacks.py [--engine clickhouse|sqlite]

- an announced 2 GiB body (64 KiB of it sent): time to the answer;
- a 512 MiB body actually sent, with the wrong token;
- a gzip bomb (2 GiB of zeros, about 2 MiB compressed): time to the answer;
- SIGTERM during ``SELECT count() FROM numbers(1e12)`` (or an endless recursive CTE on
  SQLite), with 10,000 rows just acknowledged (202): time to exit, rows found after restart;
- two such queries at once, and a third, cheap one meanwhile: their times.

Runs against whatever ``tinybird_export`` is importable (``PYTHONPATH`` chooses), so the same
script measures main and a branch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import signal
import socket
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path

import urllib3

from tinybird_export.cli import SQLError, query
from tinybird_export.local import spawn

ENDLESS = {
    "clickhouse": "SELECT count() FROM numbers(1e12)",
    "sqlite": "with recursive c(x) as (select 1 union all select x + 1 from c) "
    "select count(*) from c",
}


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw(url: str, head: str, body: bytes = b"", timeout: float = 120) -> tuple[str, float]:
    parts = urllib.parse.urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n")
        with contextlib.suppress(OSError):  # refused early: the connection closed
            sock.sendall(body)
        answer = b""
        try:
            while b"\r\n" not in answer:
                piece = sock.recv(4096)
                if not piece:
                    break
                answer += piece
        except OSError as exc:
            answer = f"({type(exc).__name__})".encode()
    return answer.split(b"\r\n")[0].decode(), time.monotonic() - started


def bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def post_sql(url: str, token: str, text: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        response = urllib3.request(
            "POST",
            f"{url}/v0/sql",
            body=text.encode(),
            retries=False,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
        )
        status = response.status
    except urllib3.exceptions.HTTPError:
        status = 0
    return status, round(time.monotonic() - started, 2)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--engine", default="clickhouse", choices=("clickhouse", "sqlite"))
    engine = options.parse_args().engine
    results: dict[str, object] = {"engine": engine}
    with spawn(":memory:", "--engine", engine) as server:
        pid, url, token = server.process.pid, server.url, server.token
        results["rss_at_start_mib"] = round(peak_mib(pid), 1)
        head = f"POST /v0/events?name=big HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer {token}"
        status, took = raw(url, f"{head}\nContent-Length: {2**31}", b"x" * 65536, timeout=10)
        results["announced_2GiB"] = {
            "answer": status,
            "seconds": round(took, 3),
            "peak_mib": round(peak_mib(pid), 1),
        }
        body = b"x" * (512 << 20)
        wrong = head.replace(token, "wrong")
        status, took = raw(url, f"{wrong}\nContent-Length: {len(body)}", body)
        results["unauthenticated_512MiB_sent"] = {
            "answer": status,
            "seconds": round(took, 3),
            "peak_mib": round(peak_mib(pid), 1),
        }
        del body
        packed = bomb(2 << 30)
        status, took = raw(
            url, f"{head}\nContent-Encoding: gzip\nContent-Length: {len(packed)}", packed
        )
        results["gzip_bomb_2GiB"] = {
            "compressed_bytes": len(packed),
            "answer": status,
            "seconds": round(took, 3),
            "peak_mib": round(peak_mib(pid), 1),
        }
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            started = time.monotonic()
            slow = [pool.submit(post_sql, url, token, ENDLESS[engine]) for _ in range(2)]
            time.sleep(0.5)
            quick = post_sql(url, token, "select 1")
            results["two_endless_queries"] = {
                "answers": [f.result() for f in slow],
                "wall_seconds": round(time.monotonic() - started, 2),
                "cheap_query_meanwhile": quick,
            }
    with tempfile.TemporaryDirectory() as directory:
        data = directory if engine == "clickhouse" else f"{directory}/local.sqlite3"
        server = spawn(data, "--engine", engine)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                running = pool.submit(post_sql, server.url, server.token, ENDLESS[engine])
                time.sleep(0.5)
                rows = b"".join(
                    json.dumps({"timestamp": "2024-01-01 00:00:00", "event": f"e{i}"}).encode()
                    + b"\n"
                    for i in range(10_000)
                )
                acking = time.monotonic()
                try:
                    acked: object = urllib3.request(
                        "POST",
                        f"{server.url}/v0/events?name=kept",
                        body=rows,
                        headers={"Authorization": f"Bearer {server.token}"},
                        timeout=10,
                        retries=False,
                    ).status
                except urllib3.exceptions.HTTPError as exc:  # ingestion blocked by the query
                    acked = type(exc).__name__
                acked_in = round(time.monotonic() - acking, 2)
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                try:
                    code = server.process.wait(30)
                except Exception:
                    code = None
                stopped = time.monotonic() - started
                running.result(60)
        finally:
            server.stop()
        with spawn(data, "--engine", engine) as again:
            try:
                kept = query(again.url, again.token, "select count() n from kept")["data"][0]["n"]
            except SQLError as exc:
                kept = str(exc)[:80]
        results["sigterm_during_query"] = {
            "ingest_during_query": {"answer": acked, "seconds": acked_in},
            "exit_code": code,
            "seconds_to_exit": round(stopped, 2),
            "rows_after_restart": kept,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
