"""The ClickHouse engine's verdict on a ``/v0/sql`` query: what a Tinybird query may use, as an
allowlist read from ClickHouse's own parser.

The user's text never reaches chDB as a statement. It is first passed as a string literal to
``formatQuerySingleLine``: ClickHouse's parser must find exactly one statement in it, and gives
it back in its own spelling (no comments, keywords in capitals, every literal and identifier
quoted its way). That canonical text is what ``EXPLAIN AST`` checks and what then runs, so
the check and the run see the same statement: chDB runs every statement of a multi-statement
text, and writes ``INTO OUTFILE`` itself, whatever ``readonly`` says.

The tree must be a SELECT (or SHOW, DESCRIBE, EXISTS, EXPLAIN of one) made of known clauses,
reading only this workspace's tables, a few ``system`` tables and generator table functions,
calling no function that reads files, dictionaries or other tables by name, with no ``INTO
OUTFILE`` and no ``SETTINGS``. Anything not listed is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

from tinybird_export.local._engine import ReadOnlyError

READ_ONLY = (
    "the local server is read-only: /v0/sql runs SELECT queries only (send rows to "
    "/v0/events or the Data Sources API)"
)
SYSTEM_TABLES = frozenset(
    {
        # generators, as in Tinybird
        "one",
        "numbers",
        "numbers_mt",
        # this workspace's own catalog
        "tables",
        "columns",
        # reference: what ClickHouse offers
        "functions",
        "table_functions",
        "formats",
        "data_type_families",
        "time_zones",
    }
)
_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "generaterandom",
        "generate_series",
        "generateseries",
        "values",
        "sqlstandardvalues",  # FROM (VALUES ...)
        "null",
        "view",
        "primes",
    }
)
# Functions that read what is outside the query: files, dictionaries (their sources are
# files, URLs, other databases), tables named by a string, the machine's disks.
_DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
    }
)
_IN_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin"}
)
# Each statement, and the clauses that may hang directly under it.
_STATEMENTS = {
    "SelectWithUnionQuery": frozenset({"ExpressionList"}),
    "ShowTables": frozenset(),
    "ShowColumns": frozenset(),
    "DescribeQuery": frozenset({"TableExpression"}),
    "ExistsTableQuery": frozenset({"Identifier"}),
    "ShowCreateTableQuery": frozenset({"Identifier"}),
}
_SHOW_TABLES = ("SHOW TABLES", "SHOW FULL TABLES", "SHOW DATABASES")
_NODES = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ExpressionList",
        "Literal",
        "Identifier",
        "Function",
        "QueryParameter",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsApplyTransformer",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformer::Replacement",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "SampleRatio",
        "Subquery",
        "WithElement",
        "OrderByElement",
        "InterpolateElement",
        "WindowDefinition",
        "WindowListElement",
    }
)
_LINE = re.compile(r"( *)([A-Za-z][\w:]*)(?: (.*?))??(?: \(children (\d+)\))?")
_ALIAS = re.compile(r"^(.*?)(?: \(alias .*\))?$")
_IDENTIFIER_QUOTES = '`"'


@dataclasses.dataclass
class Node:
    """One node of an ``EXPLAIN AST`` dump."""

    kind: str
    text: str
    declared: int
    children: list[Node] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        """The function's or table's name (without its alias)."""
        match = _ALIAS.match(self.text)
        return match.group(1) if match else self.text


def literal(text: str) -> str:
    """``text`` as a ClickHouse string literal, whatever it holds."""
    escaped = "".join(
        "\\\\" if c == "\\" else "\\'" if c == "'" else f"\\x{ord(c):02x}" if c < " " else c
        for c in text
    )
    return f"'{escaped}'"


def canonical_query(sql: str) -> str:
    """The query that gives ``sql`` in ClickHouse's own single-line spelling (or fails if
    ``sql`` is not exactly one statement).
    """
    return f"SELECT formatQuerySingleLine({literal(sql)})"


def check_text(canonical: str) -> None:
    """Refuse what the canonical text shows on its face: ``INTO OUTFILE`` (a second check,
    independent of the tree's), and identifiers with control characters, which would make
    the one-line-per-node dump ambiguous.

    Raises:
        ReadOnlyError: The reason.
    """
    words = []
    index = 0
    while index < len(canonical):
        char = canonical[index]
        if char in "'`\"":
            end = index + 1
            while end < len(canonical) and canonical[end] != char:
                end += 2 if canonical[end] == "\\" else 1
            if char in _IDENTIFIER_QUOTES and "\\" in canonical[index:end]:
                raise ReadOnlyError(
                    "identifiers with line breaks, quotes or other escapes are not supported "
                    f"by the local server: {canonical[index : end + 1]}"
                )
            index = end + 1
        elif char.isalpha() or char == "_":
            end = index
            while end < len(canonical) and (canonical[end].isalnum() or canonical[end] == "_"):
                end += 1
            words.append(canonical[index:end])
            index = end
        else:
            index += 1
    if any(a == "INTO" and b == "OUTFILE" for a, b in itertools.pairwise(words)):
        raise ReadOnlyError(f"{READ_ONLY}; INTO OUTFILE would write a file on this machine")


def parse_tree(dump: str) -> Node:
    """The ``EXPLAIN AST`` dump as a tree, checked to be one node per line (each node's
    declared children are the lines indented under it).

    Raises:
        ReadOnlyError: A dump that does not read as one tree.
    """
    stack: list[tuple[int, Node]] = []
    root: Node | None = None
    for line in dump.splitlines():
        match = _LINE.fullmatch(line)
        depth = len(match.group(1)) if match else -1
        if match is None or (root is not None and not stack) or depth > len(stack):
            raise ReadOnlyError(f"{READ_ONLY}; the query's syntax tree could not be checked")
        node = Node(match.group(2), match.group(3) or "", int(match.group(4) or 0))
        del stack[depth:]
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise ReadOnlyError(f"{READ_ONLY}; one statement at a time")
        stack.append((depth, node))
    if root is None or not _consistent(root):
        raise ReadOnlyError(f"{READ_ONLY}; the query's syntax tree could not be checked")
    return root


def _consistent(node: Node) -> bool:
    return len(node.children) == node.declared and all(_consistent(c) for c in node.children)


def refusal(dump: str, database: str, canonical: str = "") -> str | None:
    """Why the query whose ``EXPLAIN AST`` is ``dump`` may not run, or None.

    Args:
        dump: ``EXPLAIN AST`` of the canonical text.
        database: The workspace's database (tables may name it).
        canonical: The canonical text (``SHOW TABLES`` and ``SHOW SETTINGS``, ``SHOW
            MERGES``... share one node: only the text tells them apart).
    """
    try:
        root = parse_tree(dump)
    except ReadOnlyError as exc:
        return str(exc)
    if root.kind == "ShowTables" and not canonical.startswith(_SHOW_TABLES):
        return READ_ONLY
    return _statement(root) or _walk(root, None, database)


def _statement(node: Node) -> str | None:
    if node.kind == "Explain":
        *options, explained = node.children or [node]
        if explained is node or any(o.kind != "Set" for o in options):
            return f"{READ_ONLY}; INTO OUTFILE and FORMAT cannot follow EXPLAIN"
        return _statement(explained)
    allowed = _STATEMENTS.get(node.kind)
    if allowed is None:
        return READ_ONLY
    for child in node.children:
        if child.kind not in allowed:
            return {
                "Literal": f"{READ_ONLY}; INTO OUTFILE would write a file on this machine",
                "Set": f"{READ_ONLY}; SETTINGS is not allowed (Tinybird refuses it too)",
                "Identifier": "FORMAT must end the query",
            }.get(child.kind, READ_ONLY)
    return None


def _walk(node: Node, parent: Node | None, database: str) -> str | None:
    if parent is None or (parent.kind == "Explain" and node.kind in _STATEMENTS):
        pass  # the statement itself: checked by _statement
    elif node.kind == "Set" and parent.kind == "Explain":
        return None  # EXPLAIN's own options (header=1...)
    elif node.kind == "Set":
        return f"{READ_ONLY}; SETTINGS is not allowed (Tinybird refuses it too)"
    elif node.kind not in _NODES:
        return f"{READ_ONLY}; {node.kind} is not allowed"
    reason = _node(node, parent, database)
    if reason:
        return reason
    for child in node.children:
        reason = _walk(child, node, database)
        if reason:
            return reason
    return None


def _node(node: Node, parent: Node | None, database: str) -> str | None:
    if node.kind == "TableIdentifier":
        return _table(node.name, database)
    if node.kind != "Function":
        return None
    function = node.name.split(" ")[0]
    lowered = function.lower()
    if parent is not None and parent.kind == "TableExpression":
        if lowered not in _TABLE_FUNCTIONS:
            return (
                f"{READ_ONLY}; the table function {function}() is not allowed: only "
                "generators (numbers, generateRandom, values, view...) read nothing outside"
            )
        return None
    if reads_outside(function):
        return f"{READ_ONLY}; {function}() is not allowed: it reads outside the query's tables"
    if lowered in _IN_FUNCTIONS and node.children and len(node.children[0].children) == 2:
        right = node.children[0].children[1]
        if right.kind == "Identifier":  # x IN table
            return _table(right.name, database)
    return None


def reads_outside(function: str) -> bool:
    """Whether ClickHouse's function ``function`` reads files, dictionaries or tables."""
    lowered = function.lower()
    return lowered in _DENIED_FUNCTIONS or lowered.startswith("dict")


def _table(name: str, database: str) -> str | None:
    if "." not in name:
        return None  # the workspace's own (or a WITH name)
    prefix, _, table = name.partition(".")
    if prefix == database or (prefix == "system" and table in SYSTEM_TABLES):
        return None
    listed = ", ".join(f"system.{t}" for t in sorted(SYSTEM_TABLES))
    return (
        f"{READ_ONLY}; {name} cannot be read: queries read this workspace's data sources "
        f"and {listed}"
    )
