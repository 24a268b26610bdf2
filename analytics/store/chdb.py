"""The embedded writer: ClickHouse in this process through chDB, at a local data directory."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analytics.store import StoreError, insert_select, insert_settings

# ClickHouse's configuration of the embedded store (chDB's `config-file`), in the store's
# directory. chDB runs one ClickHouse per process: the first session opened sets it for all.
#
# max_compress_block_size: every column stream of a Wide part being written buffers this
# much, twice (1 MiB by default), and a part of beacon.events has 79 streams (35 columns, with
# their dictionaries, sizes and sparse indexes), so an insert of 50,000 rows took 159 MiB and a
# merge of its parts 41 MiB. With 64 KiB: 27.5 and 22 MiB, and the consumer's peak RSS 60-70 MB
# lower. LZ4 finds its matches within 64 KiB anyway: the table is 2.8% larger, inserts and
# reads cost the same (docs/performance.md "Memory of the embedded consumer").
#
# fsync_after_insert, fsync_part_directory: an insert's part (and its views') is on disk
# before the insert returns, as ClickHouse leaves to replication on a server. The consumer
# deletes a spool segment, or commits a Kafka offset, once its batch's insert returns: a
# power loss would otherwise take rows whose only other copy was already gone.
# min_rows_to_fsync_after_merge: so is a merged or mutated part before it replaces its
# sources. A merge would lose nothing without it (its sources stay for old_parts_lifetime, 8
# minutes, and a broken merged part gives way to them), but an erasure's DELETE is a
# mutation: its part broken by a power loss would give way to the part that holds the
# erased rows.
CONFIG = (
    "<clickhouse><merge_tree>"
    "<max_compress_block_size>65536</max_compress_block_size>"
    "<fsync_after_insert>1</fsync_after_insert>"
    "<fsync_part_directory>1</fsync_part_directory>"
    "<min_rows_to_fsync_after_merge>1</min_rows_to_fsync_after_merge>"
    "</merge_tree></clickhouse>\n"
)
CONFIG_NAME = "beacon-chdb.xml"


def open_session(path: Path, params: Mapping[str, str] | None = None) -> Any:
    """A chDB session on the store at `path` (created if missing), with CONFIG and `params`
    (ClickHouse settings of the session)."""
    # chDB imports pyarrow, a dependency of its own, for Arrow results Beacon never asks for:
    # pyarrow and numpy map 40-50 MB into every process that opens the store. Held back unless
    # something in the process imported it already.
    sys.modules.setdefault("pyarrow", None)  # type: ignore[arg-type]  # None: "not importable"
    from chdb import session  # imported here: a heavy import only the store owner pays

    path.mkdir(parents=True, exist_ok=True)
    config = path / CONFIG_NAME
    if not config.is_file() or config.read_text() != CONFIG:
        config.write_text(CONFIG)
    query = {"config-file": str(config), **(params or {})}
    return session.Session(f"{path}?{'&'.join(f'{k}={v}' for k, v in query.items())}")


class ChdbWriter:
    """One chDB session; chDB has no async API, so every call runs in a thread, one at a time.

    chDB lets one process open a data directory: open it in the process that owns the store
    and let others ask that process (analytics/query_server.py).
    """

    # Nothing else inserts while it is open: its process owns the data directory.
    exclusive = True

    def __init__(self, path: Path) -> None:
        self._session = open_session(path)
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

    def new_session(self, batch: str = "") -> None:
        pass  # one chDB session, in this process: the temporary tables cannot be elsewhere

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        pass  # statements run one at a time: one whose caller gave up holds the lock to its end

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """close() for a caller without an event loop (the report's own store)."""
        with self._lock:
            self._session.close()
