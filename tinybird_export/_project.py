"""``tinybird-export datasources DIR``: the package's ``.datasource`` files as a Tinybird
project folder, ready for ``tb --cloud deploy`` (Forward) and ``tb push`` (Classic).

One folder shape that both CLIs take: ``DIR/datasources/<name>.datasource``, each with a
``TOKEN "<token name>" APPEND`` line after its description. Both read that line (Forward's
datafile parser, ``tinybird`` 5.0.3: ``TOKEN "name" READ|APPEND``; Classic's, ``tinybird-cli``
6.5.5: a name and a permission, granted as ``DATASOURCES:APPEND:<data source>``), and deploying
or pushing creates the token, or adds the data source to it: one token that may append to
every data source written, and do nothing else.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from tinybird_export._fields import DATASOURCES_DIR

DEFAULT_TOKEN = "tinybird_export_append"  # noqa: S105 - a token's name, not a secret
_TOKEN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN_LINE = re.compile(r"^TOKEN\s.*$\n?", re.MULTILINE)


class ProjectError(ValueError):
    """A folder that cannot be written as asked: what is wrong and what to do."""


def package_datasources() -> dict[str, Path]:
    """The package's ``.datasource`` files by data source name."""
    return {path.stem: path for path in sorted(DATASOURCES_DIR.glob("*.datasource"))}


def with_token(text: str, token: str) -> str:
    """``text`` with one ``TOKEN "<token>" APPEND`` line, where Tinybird's own formatter
    puts it: after the ``DESCRIPTION >`` block, before the schema (any TOKEN line it had is
    replaced).
    """
    lines = _TOKEN_LINE.sub("", text).splitlines(keepends=True)
    end = 0  # past the description's last line
    if lines and lines[0].startswith("DESCRIPTION"):
        end = 1
        for number, line in enumerate(lines[1:], 1):
            if line.strip() and not line[0].isspace():
                break
            if line.strip():
                end = number + 1
    rest = "".join(lines[end:]).lstrip("\n")
    head = "".join(lines[:end]) + "\n" if end else ""
    return f'{head}TOKEN "{token}" APPEND\n\n{rest}'


def collect(only: list[str] | None, include: list[Path], token: str) -> dict[str, str]:
    """The files to write, by data source name: the package's (or those named in ``only``)
    and every ``.datasource`` file of ``include`` (files or directories), each with the
    token line.

    Raises:
        ProjectError: An unknown name, a missing or empty path, a file that does not read
            as a data source, two files for one name, or a bad token name.
    """
    from tinybird_export.local._datafile import DatafileError, parse_datafile  # noqa: PLC0415

    if not _TOKEN_NAME.match(token):
        raise ProjectError(f"--token-name {token!r}: use letters, digits and underscores")
    package = package_datasources()
    unknown = sorted(set(only or ()) - set(package))
    if unknown:
        raise ProjectError(
            f"--only: no data source named {', '.join(unknown)} in the package; it has "
            f"{', '.join(package)}"
        )
    sources = {name: path for name, path in package.items() if only is None or name in only}
    for extra in include:
        found = sorted(extra.glob("*.datasource")) if extra.is_dir() else [extra]
        if not extra.exists() or not found:
            raise ProjectError(f"--include {extra}: no .datasource file there")
        for path in found:
            if path.stem in sources and sources[path.stem] != path:
                raise ProjectError(
                    f"{path} and {sources[path.stem]} both define the data source "
                    f"{path.stem!r}: leave one out (--only)"
                )
            sources[path.stem] = path
    files = {}
    for name, path in sources.items():
        text = path.read_text()
        try:
            parse_datafile(text, str(path), lenient=True)
        except DatafileError as exc:
            raise ProjectError(str(exc)) from None
        files[name] = with_token(text, token)
    return files


def write(directory: Path, files: dict[str, str], *, force: bool) -> tuple[list[str], list[str]]:
    """Write ``files`` into ``directory/datasources``; the names written, and those already
    there as they are.

    Raises:
        ProjectError: A file there differs and ``force`` is false (nothing is written then).
    """
    target = directory / "datasources"
    # A cloned project's links would take the files (and --force) elsewhere: ~/.bashrc.
    links = [p for p in (target, *(target / f"{n}.datasource" for n in files)) if p.is_symlink()]
    if links:
        raise ProjectError(
            f"{links[0]} is a symbolic link (to {os.readlink(links[0])}): nothing was written, "
            "not even with --force. Remove the link, or choose another folder"
        )
    written, unchanged, differing = [], [], []
    for name, text in files.items():
        path = target / f"{name}.datasource"
        if path.exists():
            if path.read_text() == text:
                unchanged.append(name)
                continue
            differing.append(str(path))
    if differing and not force:
        raise ProjectError(
            f"{', '.join(differing)} already exist with other contents (your edits?): "
            "nothing was written. Pass --force to replace them, or choose another folder"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if name not in unchanged:
            _write_new(target / f"{name}.datasource", text)
            written.append(name)
    return written, unchanged


def _write_new(path: Path, text: str) -> None:
    """Write ``path``, never through a symbolic link (one made since the check fails)."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | nofollow, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def main(argv: list[str]) -> int:
    """``tinybird-export datasources DIR [--only ...] [--include PATH] [--token-name N]``."""
    from tinybird_export.local._main import HelpFormatter  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="tinybird-export datasources",
        description="Write the package's .datasource files (logs, events, traces, the "
        "OpenTelemetry template's and its metrics) into DIR/datasources, each with a TOKEN "
        "line, ready for `tb --cloud deploy` (Forward) or `tb push` (Classic) from DIR.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("directory", metavar="DIR", help="the project folder to write into")
    parser.add_argument(
        "--only",
        default=None,
        help="the package's data sources to write, comma-separated (default: all of them: "
        f"{', '.join(package_datasources())})",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="more .datasource files to write with them (a file or a directory; repeatable), "
        "e.g. examples/datasources for the examples' own data sources",
    )
    parser.add_argument(
        "--token-name",
        default=DEFAULT_TOKEN,
        help="the token the TOKEN lines name: deploying creates it, allowed to append to each",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace files of DIR that differ (default: refuse)"
    )
    options = parser.parse_args(argv)
    directory = Path(options.directory)
    only = [n.strip() for n in options.only.split(",") if n.strip()] if options.only else None
    try:
        files = collect(only, [Path(p) for p in options.include], options.token_name)
        written, unchanged = write(directory, files, force=options.force)
    except ProjectError as exc:
        print(f"tinybird-export datasources: {exc}", file=sys.stderr)
        return 1
    print(next_steps(directory, written, unchanged, options.token_name))
    return 0


def next_steps(directory: Path, written: list[str], unchanged: list[str], token: str) -> str:
    """What was written, and the commands that deploy it and give the package its token."""
    where = directory / "datasources"
    lines = []
    if written:
        lines.append(f"wrote {len(written)} data source(s) to {where}: {', '.join(written)}")
    if unchanged:
        lines.append(f"already there, unchanged: {', '.join(unchanged)}")
    lines += [
        f'each with TOKEN "{token}" APPEND: deploying creates that token, which may append to '
        "these data sources and do nothing else.",
        "",
        f"Tinybird Forward:  cd {directory} && tb --cloud deploy",
        f"                   tb --cloud token copy {token}   (to the clipboard)",
        f"Tinybird Classic:  cd {directory} && tb push",
        f"                   tb token copy {token}",
        "Then: export TINYBIRD_TOKEN=<that token> TINYBIRD_HOST=<your region's API host, "
        "the api that `tb info` shows>",
        f"Rehearse on tinybird-export local first: cd {directory} && tb --local deploy",
    ]
    return "\n".join(lines)
