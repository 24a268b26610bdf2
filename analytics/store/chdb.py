"""The embedded writer: ClickHouse in this process through chDB, at a local data directory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from analytics.store import StoreError, insert_select, insert_settings


class ChdbWriter:
    """One chDB session; chDB has no async API, so every call runs in a thread, one at a time.

    chDB lets one process open a data directory: open it in the process that owns the store
    and let others ask that process (analytics/query_server.py).
    """

    def __init__(self, path: Path) -> None:
        from chdb import session  # imported here: a heavy import only the store owner pays

        path.mkdir(parents=True, exist_ok=True)
        self._session = session.Session(str(path))
        self._lock = threading.Lock()
        self.path = path

    def _run(self, sql: str, fmt: str = "TSV") -> str:
        with self._lock:
            try:
                result = self._session.query(sql, fmt)
            except Exception as exc:  # chDB raises its own error types for ClickHouse errors
                raise StoreError(str(exc)) from exc
        return result.data() if hasattr(result, "data") else str(result)

    def _insert(self, head: str, fmt: str, body: bytes | Sequence[bytes]) -> None:
        """Stream `body` (or its pieces) into the INSERT `head`: no SQL text to build around the
        data, and a binary format can travel."""
        with self._lock:
            try:
                with self._session.send_insert(head, fmt) as inserter:
                    for piece in [body] if isinstance(body, bytes) else body:
                        inserter.append(piece)
                    inserter.finish()
            except Exception as exc:  # chDB raises its own error types for ClickHouse errors
                raise StoreError(str(exc)) from exc

    async def insert(self, table: str, rows: bytes, token: str) -> None:
        head = f"INSERT INTO {table} {insert_settings(token)}, input_format_skip_unknown_fields = 1"
        await asyncio.to_thread(self._insert, head, "JSONEachRow", rows)

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        await asyncio.to_thread(self._run, insert_select(table, columns, select, token))

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        await asyncio.to_thread(self._insert, f"INSERT INTO {table}", fmt, body)

    async def execute(self, sql: str) -> None:
        await asyncio.to_thread(self._run, sql)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return await asyncio.to_thread(self._run, sql, fmt)

    def query_sync(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return self._run(sql, fmt)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """close() for a caller without an event loop (the report's own store)."""
        with self._lock:
            self._session.close()
