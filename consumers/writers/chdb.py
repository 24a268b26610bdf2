"""The embedded writer: ClickHouse in this process through chDB, at a local data directory."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from consumers.writers import TOKEN_RE, StoreError


class ChdbWriter:
    """One chDB session; chDB has no async API, so every call runs in a thread, one at a time.

    chDB lets one process open a data directory: open it in the process that owns the store
    and let others ask that process (consumers/query_server.py).
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

    async def insert(self, table: str, rows: bytes, token: str) -> None:
        if not TOKEN_RE.match(token):
            raise ValueError(f"bad dedup token {token!r}")
        sql = (
            f"INSERT INTO {table} SETTINGS async_insert = 0, "
            f"insert_deduplication_token = '{token}', input_format_skip_unknown_fields = 1 "
            f"FORMAT JSONEachRow\n"
        )
        await asyncio.to_thread(self._run, sql + rows.decode())

    async def execute(self, sql: str) -> None:
        await asyncio.to_thread(self._run, sql)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return await asyncio.to_thread(self._run, sql, fmt)

    def query_sync(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return self._run(sql, fmt)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._session.close()
