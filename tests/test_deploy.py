"""``tinybird-export datasources DIR``: the package's data sources as a project folder that
Tinybird's own CLIs read (their parsers, from their venvs) and deploy (tests/
test_tinybird_clients.py runs ``tb --local build``/``deploy`` and ``tb push`` on it), and the
examples' own data sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tinybird_export._fields import DATASOURCES_DIR
from tinybird_export._project import DEFAULT_TOKEN, with_token
from tinybird_export.local._datafile import parse_datafile

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "datasources"
PACKAGE = sorted(path.stem for path in DATASOURCES_DIR.glob("*.datasource"))


def datasources(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tinybird-export datasources ...`` as a user runs it, from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "tinybird_export.cli", "datasources", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_writes_every_package_datasource_with_one_token_line(tmp_path: Path) -> None:
    """The README's line (and docs/deploy.md's), as written."""
    line = ".venv/bin/tinybird-export datasources tinybird"
    for page in ("README.md", "docs/deploy.md"):
        assert f"\n{line}\n" in (ROOT / page).read_text(), page
    done = datasources(*line.split()[2:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(path.stem for path in (tmp_path / "tinybird" / "datasources").iterdir())
    assert written == PACKAGE and len(PACKAGE) == 10  # logs, events, traces, otel_*, metrics
    for name in PACKAGE:
        text = (tmp_path / "tinybird" / "datasources" / f"{name}.datasource").read_text()
        lines = text.splitlines()
        token_lines = [line for line in lines if line.startswith("TOKEN")]
        assert token_lines == [f'TOKEN "{DEFAULT_TOKEN}" APPEND'], name
        # Where Tinybird's formatter puts it: after the description, before the schema.
        assert lines.index(token_lines[0]) < lines.index("SCHEMA >"), name
        original = (DATASOURCES_DIR / f"{name}.datasource").read_text()
        assert text.replace(f"{token_lines[0]}\n\n", "") == original, name
    assert "tb --cloud deploy" in done.stdout and "tb push" in done.stdout
    assert f"tb --cloud token copy {DEFAULT_TOKEN}" in done.stdout


def test_a_second_run_changes_nothing_and_edits_are_kept(tmp_path: Path) -> None:
    """A run over the same files changes nothing; a file the user edited is kept unless --force."""
    assert datasources("tinybird", "--only", "app_logs,simple_events", cwd=tmp_path).returncode == 0
    again = datasources("tinybird", "--only", "app_logs,simple_events", cwd=tmp_path)
    assert (
        again.returncode == 0
        and "already there, unchanged: app_logs, simple_events" in again.stdout
    )
    edited = tmp_path / "tinybird" / "datasources" / "app_logs.datasource"
    edited.write_text(edited.read_text() + "\n# my own index\n")
    refused = datasources("tinybird", cwd=tmp_path)
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    assert "my own index" in edited.read_text()
    assert not (tmp_path / "tinybird" / "datasources" / "traces.datasource").exists()
    assert datasources("tinybird", "--force", cwd=tmp_path).returncode == 0
    assert "my own index" not in edited.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "app_logs,nope"], "no data source named nope"),
        (["--include", "missing"], "--include missing: no .datasource file there"),
        (["--token-name", "two words"], "--token-name 'two words'"),
    ],
)
def test_bad_arguments_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    """An unknown name, a missing path or a bad token name: exit 1, what is wrong, nothing written."""
    done = datasources("tinybird", *args, cwd=tmp_path)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "tinybird").exists()


def test_force_never_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    """A cloned project may hold ``datasources/app_logs.datasource`` as a link to a file of
    the developer's (``~/.bashrc``), or ``datasources`` as a link to another folder: even with
    --force (which the refusal suggests), nothing is written there, and the error names the link.
    """
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project, linked_folder = tmp_path / "project", tmp_path / "linked"
    (project / "datasources").mkdir(parents=True)
    (project / "datasources" / "app_logs.datasource").symlink_to(victim)
    linked_folder.mkdir()
    (linked_folder / "datasources").symlink_to(elsewhere)
    for folder in (project, linked_folder):
        for args in ([], ["--force"]):
            refused = datasources(str(folder), *args, cwd=tmp_path)
            assert refused.returncode == 1, refused.stdout
            assert "symbolic link" in refused.stderr, refused.stderr
    assert victim.read_text() == "precious\n"
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (project / "datasources").iterdir()) == ["app_logs.datasource"]


def test_the_token_line_replaces_one_already_there() -> None:
    """One TOKEN line, after the description: a file's own TOKEN line is replaced."""
    text = 'DESCRIPTION >\n    x\n\nTOKEN "old" READ\n\nSCHEMA >\n    `a` String\n'
    assert with_token(text, "new") == (
        'DESCRIPTION >\n    x\n\nTOKEN "new" APPEND\n\nSCHEMA >\n    `a` String\n'
    )
    assert with_token("SCHEMA >\n    `a` String\n", "t").startswith('TOKEN "t" APPEND\n\nSCHEMA')


def test_tinybirds_own_parsers_read_the_token_lines(tmp_path: Path) -> None:
    """Forward's parser (tinybird 5.0.3) and Classic's (tinybird-cli 6.5.5), from their
    venvs: each file's columns, and one APPEND token."""
    from tests.test_tinybird_clients import parse_in_client

    assert datasources("tinybird", "--include", str(EXAMPLES), cwd=tmp_path).returncode == 0
    files = sorted((tmp_path / "tinybird" / "datasources").glob("*.datasource"))
    forward = (
        "import json, sys\n"
        "from tinybird.datafile.parse_datasource import parse_datasource\n"
        "for path in sys.argv[1:]:\n"
        "    result = parse_datasource(path)\n"
        "    columns = [c['name'] for c in result.datafile.nodes[0]['columns']]\n"
        "    print(json.dumps([columns, result.datafile.tokens,\n"
        "                      [str(w) for w in result.warnings]]))\n"
    )
    classic = (
        "import json, sys\n"
        "from tinybird.datafile_common import parse_datasource\n"
        "for path in sys.argv[1:]:\n"
        "    doc = parse_datasource(path)\n"
        "    print(json.dumps([[c['name'] for c in doc.nodes[0]['columns']], doc.tokens]))\n"
    )
    for kind, code, token in (
        ("forward", forward, {"token_name": DEFAULT_TOKEN, "permission": "APPEND"}),
        ("classic", classic, {"token_name": DEFAULT_TOKEN, "permissions": "APPEND"}),
    ):
        for path, parsed in zip(files, parse_in_client(kind, code, files, tmp_path), strict=True):
            columns, tokens, *warnings = parsed
            ours = parse_datafile(path.read_text(), path.name).columns
            assert columns == [c.name for c in ours], (kind, path.name)
            assert tokens == [token], (kind, path.name)
            assert warnings in ([], [[]]), (kind, path.name)


def test_the_examples_datasources_have_the_packages_schemas() -> None:
    """Each example sends the package's log or event shape under its own name (the examples
    run against a strict server with these files, so a missing one fails their tests)."""
    shapes = {"asyncio_events": "simple_events"}
    found = sorted(path.stem for path in EXAMPLES.glob("*.datasource"))
    assert found == [
        "asyncio_events",
        "asyncio_logs",
        "celery_logs",
        "django_logs",
        "fastapi_logs",
        "flask_logs",
    ]
    for name in found:
        text = (EXAMPLES / f"{name}.datasource").read_text()
        shape = (DATASOURCES_DIR / f"{shapes.get(name, 'app_logs')}.datasource").read_text()
        assert text[text.index("SCHEMA >") :] == shape[shape.index("SCHEMA >") :], name


WHEEL_LINE = ".venv/bin/pip wheel --no-deps -w dist ."


@pytest.mark.timeout(180)
def test_the_readmes_wheel_carries_the_command_and_its_files(tmp_path: Path) -> None:
    """The README's way into another project: a wheel built in the clone. Built here with
    the README's command and ``--no-build-isolation`` (the tests group has the build backend:
    the suite never reaches the package index), then used from the wheel alone."""
    import re
    import zipfile

    readme = (ROOT / "README.md").read_text()
    assert f"`{WHEEL_LINE}`" in readme
    (named,) = re.findall(r"`dist/(tinybird_export-[^`]+\.whl)`", readme)
    args = WHEEL_LINE.split()[1:]
    args[args.index("dist")] = str(tmp_path / "dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", *args[:-1], "--no-build-isolation", "--no-index", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = tmp_path / "dist" / named  # the name the README says
    with zipfile.ZipFile(wheel) as archive:
        inside = archive.namelist()
        archive.extractall(tmp_path / "unpacked")
    for name in PACKAGE:
        assert f"tinybird_export/datasources/{name}.datasource" in inside
    assert "tinybird_export/py.typed" in inside
    assert not [n for n in inside if "__pycache__" in n or n.startswith("tests/")]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tinybird_export.cli as cli\n"
        "assert cli.__file__.startswith(sys.argv[1]), cli.__file__\n"
        "sys.exit(cli.main(['datasources', 'project', '--only', 'app_logs']))"
    )
    used = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "unpacked")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert used.returncode == 0, used.stderr
    assert (tmp_path / "project" / "datasources" / "app_logs.datasource").exists()
