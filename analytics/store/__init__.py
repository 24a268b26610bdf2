"""ClickHouse writers: one protocol, one module per way of reaching ClickHouse."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

# Tokens go into SQL text: keep them to characters that need no quoting.
TOKEN_RE = re.compile(r"^[A-Za-z0-9:._-]{1,200}$")


# Since 26.2 async_insert defaults to 1; batches are big already and a token must apply to
# exactly its insert (DESIGN.md). optimize_on_insert = 0: a ReplacingMergeTree would merge each
# block by its sort key on the way in, over half an insert's cost (docs/performance.md
# "Consumer"); a duplicate inside one batch is collapsed by merges and FINAL like any other.
INSERT_SETTINGS = {"async_insert": "0", "optimize_on_insert": "0"}


def insert_settings(token: str) -> str:
    """The SETTINGS clause of an insert under the dedup `token` (INSERT_SETTINGS with it)."""
    if not TOKEN_RE.match(token):
        raise ValueError(f"bad dedup token {token!r}")
    settings = ", ".join(f"{k} = {v}" for k, v in INSERT_SETTINGS.items())
    return f"SETTINGS {settings}, insert_deduplication_token = '{token}'"


def insert_select(table: str, columns: Sequence[str], select: str, token: str) -> str:
    """The statement of Writer.insert_from."""
    return f"INSERT INTO {table} ({', '.join(columns)}) {select} {insert_settings(token)}"


class StoreError(Exception):
    """ClickHouse refused or failed a statement; the message is ClickHouse's."""


class Writer(Protocol):
    async def insert(self, table: str, rows: bytes, token: str) -> None:
        """Insert rows in JSONEachRow; a repeated `token` is deduplicated by ClickHouse."""

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        """INSERT INTO `table` (`columns`) `select`, under the dedup `token`."""

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        """Stream `body` (its pieces in order, not joined first), in the input format `fmt`,
        into `table` as it is (no token)."""

    async def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, ALTER)."""

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        """Run a query and return its output in `fmt`."""

    async def close(self) -> None: ...
