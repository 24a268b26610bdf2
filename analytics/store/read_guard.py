"""What the store port lets a caller read, judged on ClickHouse's own parse of the statement.

A caller's text is first reprinted by ClickHouse as one statement (formatQuery), and what runs
is that reprint. The reader's session is read-only already (ClickHouse `readonly=1`: no
writes, no setting changes, no table function that reaches files, URLs or other servers).
What that profile still lets through is refused here, from the tree `EXPLAIN AST` prints, so
comments, quoting and case cannot hide a clause:

- anything but one SELECT (UNION and subqueries included): no `INTO OUTFILE`, `FORMAT`,
  `SETTINGS` after it (clickhouse-local writes an OUTFILE anywhere on the host);
- a table outside Beacon's database: qualified names must be `beacon.<table>`; an unqualified
  name is a WITH alias or a table of the empty default database;
- any table function, even a harmless one (`numbers`): the port reads Beacon's tables only;
- scalar functions that read the host: `file` reads any path in clickhouse-local
  (https://clickhouse.com/docs/sql-reference/functions/files), the others its configuration.

Left: `x IN other_db.table` parses as a plain identifier (a column of an alias looks the
same), so it is not told apart; it answers membership only, and the session can write nothing.
"""

from __future__ import annotations

import re

DATABASE = "beacon"
HOST_FUNCTIONS = frozenset(
    {
        "file",
        "catboostEvaluate",
        "getServerSetting",
        "getMergeTreeSetting",
        "getMacro",
        "filesystemAvailable",
        "filesystemCapacity",
        "filesystemUnreserved",
        "getOSKernelVersion",
        "hostName",
        "hostname",
        "fqdn",
        "FQDN",
        "getClientHTTPHeader",
    }
)
# One line of EXPLAIN AST: indentation, node type, then the node's name or value.
NODE_RE = re.compile(r"^(?P<indent> *)(?P<node>\w+)(?: (?P<name>\S+))?")


class Refused(ValueError):
    """The statement is not a plain read of Beacon's tables; `reason` says what it tried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def format_query(sql: str) -> tuple[str, str, dict[str, str]]:
    """The query, output format and parameters that make ClickHouse print `sql` as one
    statement in its own canonical form. `sql` travels as a parameter, so it is parsed and
    never run, and several statements are a syntax error (chDB runs every statement of a
    multi-statement query: even a guard's EXPLAIN would run the ones after the first)."""
    return "SELECT formatQuery({sql:String})", "TSVRaw", {"sql": escaped(sql)}


def escaped(value: str) -> str:
    """A query parameter's value as ClickHouse reads it: escaped as in TSV, or a backslash,
    tab or newline in the SQL would change its meaning or fail the parse
    (https://clickhouse.com/docs/interfaces/cli#cli-queries-with-parameters)."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def one_statement(formatted: str) -> str:
    """The statement from format_query's output (one raw row, one column)."""
    return formatted.removesuffix("\n")


def explain_ast(sql: str) -> str:
    """The statement that prints `sql`'s syntax tree without running it."""
    return "EXPLAIN AST " + sql


def check(ast_text: str) -> None:
    """Raise Refused unless `ast_text` (EXPLAIN AST output) is one read of Beacon's tables."""
    lines = [line for line in ast_text.splitlines() if line.strip()]
    # The output is indented by one space; the statement itself is the shallowest node.
    nodes = [m for m in map(NODE_RE.match, lines) if m]
    if not nodes:
        raise Refused("not_a_select")
    top = min(len(m["indent"]) for m in nodes)
    roots = [m for m in nodes if len(m["indent"]) == top]
    if len(roots) != 1 or roots[0]["node"] != "SelectWithUnionQuery":
        raise Refused("not_a_select")
    if sum(1 for m in nodes if len(m["indent"]) == top + 1) != 1:
        raise Refused("output_clause")  # FORMAT, INTO OUTFILE or SETTINGS after the SELECT
    parents: list[tuple[int, str]] = []  # (depth, node) of the nodes above this one
    for m in nodes:
        node, name, depth = m["node"], m["name"] or "", len(m["indent"])
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if node == "Set":
            raise Refused("settings")
        if node == "TableIdentifier" and "." in name and not name.startswith(DATABASE + "."):
            raise Refused("foreign_table")
        if node == "Function" and parents and parents[-1][1] == "TableExpression":
            raise Refused("table_function")
        if node == "Function" and name in HOST_FUNCTIONS:
            raise Refused("host_function")
        parents.append((depth, node))
