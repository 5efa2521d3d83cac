"""Ingest rate of ``tinybird-export local``: one client posting pre-built NDJSON batches.

Usage: ``python bench/local_ingest.py [--seconds 10] [--batch 10000]``. The server runs in
its own process (``python -m tinybird_export.local``) on an in-memory or file database.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time

import orjson
import urllib3

from tinybird_export.local import spawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--data", default=":memory:")
    options = parser.parse_args()
    local = spawn(options.data)
    host, token = local.url, local.token
    rows = [
        {
            "timestamp": "2026-01-01 00:00:00.000000",
            "href": f"https://shop.example/p{i % 50}",
            "event": "page_view",
        }
        for i in range(options.batch)
    ]
    raw = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    pool = urllib3.PoolManager()
    results = {}
    try:
        for encoding, body in (("identity", raw), ("gzip", gzip.compress(raw, 1))):
            headers = {"Authorization": f"Bearer {token}"}
            if encoding == "gzip":
                headers["Content-Encoding"] = "gzip"
            sent, requests = 0, 0
            started = time.perf_counter()
            while time.perf_counter() - started < options.seconds:
                response = pool.request(
                    "POST", f"{host}/v0/events?name=bench_{encoding}", body=body, headers=headers
                )
                assert response.status == 202, response.data
                sent += orjson.loads(response.data)["successful_rows"]
                requests += 1
            elapsed = time.perf_counter() - started
            results[encoding] = (sent / elapsed, requests / elapsed, len(raw) * requests / elapsed)
    finally:
        local.stop()
    print(
        f"python {sys.version.split()[0]}, batches of {options.batch:,} small events "
        f"({len(raw) / options.batch:.0f} bytes each), data {options.data}\n"
    )
    print("| body | events/s stored | requests/s | MB/s raw |")
    print("|---|---:|---:|---:|")
    for encoding, (events, reqs, raw_bytes) in results.items():
        print(f"| {encoding} | {events:,.0f} | {reqs:.1f} | {raw_bytes / 1e6:.1f} |")


if __name__ == "__main__":
    main()
