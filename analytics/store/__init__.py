"""ClickHouse writers: one protocol, one module per way of reaching ClickHouse."""

from __future__ import annotations

import re
from typing import Protocol

# Tokens go into SQL text: keep them to characters that need no quoting.
TOKEN_RE = re.compile(r"^[A-Za-z0-9:._-]{1,200}$")


class StoreError(Exception):
    """ClickHouse refused or failed a statement; the message is ClickHouse's."""


class Rows(Protocol):
    """A batch of rows as columns (consumers/event_rows.py builds them): Arrow for chDB,
    JSONEachRow for a server."""

    columns: tuple[str, ...]  # the columns it fills, in order

    def __len__(self) -> int: ...
    def arrow_stream(self) -> bytes: ...
    def ndjson(self) -> bytes: ...


class Writer(Protocol):
    async def insert(self, table: str, rows: bytes | Rows, token: str) -> None:
        """Insert enriched `rows` (or NDJSON, JSONEachRow); a repeated `token` is deduplicated
        by ClickHouse."""

    async def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, ALTER)."""

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        """Run a query and return its output in `fmt`."""

    async def close(self) -> None: ...
