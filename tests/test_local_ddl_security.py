"""A data source's definition as an attacker writes it: a ``.datasource`` file in a cloned
project (``--datasources DIR``) or a Data Sources API call with the token. On the ClickHouse
engine its pieces become a ``CREATE TABLE`` run on the writer's connection (not read-only): they
must not read or write files on the developer's machine, nor run a second statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local_helpers import api, ndjson, needs_clickhouse, post, raw_sql
from tinybird_export.local import LocalServer
from tinybird_export.local._datafile import DatafileError

pytestmark = needs_clickhouse

SECRET = "s3cr3t-of-the-developer"
# Data Sources API fields (besides name) that reach outside ({f}: a file to write, {s}: one to
# read, {d}: a directory).
DEFINITIONS = [
    {"schema": "`a` String, `b` String DEFAULT file('{s}')"},
    {"schema": "`a` String DEFAULT dictGetString('d', 'a', 1)"},
    {"schema": "`a` String", "engine": "File(RawBLOB, '{s}') --"},
    {"schema": "`a` String", "engine": "File(TSV, '{f}') --"},
    {"schema": "`a` String", "engine": "URL('http://127.0.0.1:9/x', TSV) --"},
    {
        "schema": "`a` String",
        "engine_sorting_key": "a) SETTINGS allow_nullable_key = 1; "
        "SELECT 'echo pwned' INTO OUTFILE '{f}' --",
    },
    {"schema": "`a` String, `d` DateTime", "engine_ttl": "d; SELECT 1 INTO OUTFILE '{f}'"},
    {"schema": "`a` String", "engine_partition_key": "(SELECT count() FROM system.one)"},
    {"schema": "`a` String", "engine_settings": "disk = disk(type = local, path = '{d}')"},
    # A type ClickHouse refuses: the error path names the column with a second query.
    {"schema": "`a` String');SELECT/**/'echo pwned'/**/INTO/**/OUTFILE/**/'{f}'--"},
]


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[LocalServer]:
    with LocalServer(engine="clickhouse") as server:
        yield server


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_a_definition_reaches_nothing_outside(
    clickhouse: LocalServer, definition: dict[str, str], tmp_path: Path
) -> None:
    """A definition that would read or write a file, or run a second statement, is refused:
    no file written, none read, no table.
    """
    secret, target = tmp_path / "secret", tmp_path / "out"
    secret.write_text(SECRET)
    fields = {
        key: value.format(f=target, s=secret, d=tmp_path / "disk")
        for key, value in definition.items()
    }
    name = f"ddl_{abs(hash(str(definition))) % 10**8}"
    response = api(clickhouse, "POST", "/v0/datasources", fields={"name": name, **fields})
    assert response.status == 400, response.data
    post(clickhouse, name, ndjson({"a": "echo pwned"}))  # created by guess: a plain table
    answer = raw_sql(clickhouse, f"select * from {name}", method="POST")
    assert SECRET.encode() not in answer.data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_project_directory_writes_nothing(clickhouse: LocalServer, tmp_path: Path) -> None:
    """A cloned project's ``.datasource`` file with a second statement in a key is refused at
    start-up (by the file's name), and writes nothing.
    """
    target = tmp_path / "out"
    project = tmp_path / "project"
    project.mkdir()
    (project / "evil.datasource").write_text(
        'SCHEMA >\n    `a` String\n\nENGINE "MergeTree"\n'
        f"ENGINE_SORTING_KEY \"a); SELECT 'echo pwned' INTO OUTFILE '{target}' --\"\n"
    )
    with pytest.raises(DatafileError, match=r"evil\.datasource"):
        LocalServer(engine="clickhouse", datasources=project, package_datasources=False)
    assert not target.exists()


def test_tinybird_definitions_still_work(clickhouse: LocalServer) -> None:
    """Tinybird's engines, keys, TTL, settings and DEFAULTs still create their tables."""
    fields = {
        "name": "ddl_fine",
        "schema": "`id` String, `ts` DateTime DEFAULT now(), `v` UInt64, "
        "`tags` Array(String) DEFAULT [], `attrs` Map(String, String) DEFAULT map(), "
        "`s` Nullable(String) DEFAULT 'x'",
        "engine": "ReplacingMergeTree",
        "engine_ver": "v",
        "engine_partition_key": "toYYYYMM(ts)",
        "engine_sorting_key": "id, ts",
        "engine_ttl": "ts + toIntervalDay(30)",
        "engine_settings": "index_granularity = 8192, min_bytes_for_wide_part = 0",
    }
    response = api(clickhouse, "POST", "/v0/datasources", fields=fields)
    assert response.status == 200, response.data
    assert post(clickhouse, "ddl_fine", ndjson({"id": "a", "v": 1}))[0] == 202


def test_a_key_cannot_bring_its_own_settings(clickhouse: LocalServer, tmp_path: Path) -> None:
    """ENGINE_SETTINGS takes literal values only, and a key that ends the statement early
    cannot add a SETTINGS clause past that check (``disk = disk(...)`` places the files
    anywhere; chDB's configuration happens to refuse that one).
    """
    for name, value in [
        ("ddl_settings_1", "a) SETTINGS index_granularity = 3 --"),
        ("ddl_settings_2", f"a) SETTINGS disk = disk(type = local, path = '{tmp_path}/d') --"),
    ]:
        fields = {"name": name, "schema": "`a` String", "engine_sorting_key": value}
        response = api(clickhouse, "POST", "/v0/datasources", fields=fields)
        assert response.status == 400, response.data
        assert b"Set is not allowed" in response.data, response.data
    assert list(tmp_path.iterdir()) == []
