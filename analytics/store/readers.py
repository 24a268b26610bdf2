"""Readers: how the store port and the dashboard run a SELECT, apart from the writer.

A reader runs one read of Beacon's tables (analytics/store/read_guard.py) under ClickHouse's
read-only profile, with a time and a result-size limit, and stops the query when its caller
goes away. It never shares the writer's session, so a slow read cannot hold up inserts or
erasure: chDB sessions on one data directory run side by side in one process.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from analytics.store import StoreError, read_guard
from analytics.store.chdb import open_session
from analytics.store.http import HttpWriter

# Every read answers 64-bit integers as JSON numbers, as ClickHouse does since 25.x; a
# read-only session cannot take them from a SETTINGS clause in the statement.
READ_FORMAT_SETTINGS = {"output_format_json_quote_64bit_integers": "0"}
# ClickHouse error codes a read can end with (src/Common/ErrorCodes.cpp).
CODE_RE = re.compile(r"Code: (\d+)")
TIMEOUT_EXCEEDED, TOO_MANY_ROWS_OR_BYTES, READONLY = "159", "396", "164"
MEMORY_LIMIT_EXCEEDED = "241"


@dataclass(frozen=True, slots=True)
class ReadLimits:
    timeout_s: int  # ClickHouse's max_execution_time: the query fails past it
    max_result_bytes: int  # ClickHouse's max_result_bytes, result_overflow_mode = 'throw'
    concurrency: int = 4  # reads at once (embedded store); one more is refused as busy
    # ClickHouse's max_memory_usage: a read that would take more stops. The embedded store's
    # reads run in the consumer's process, and a report merges the sets of what it reads.
    max_memory_bytes: int = 1 << 30

    def settings(self) -> dict[str, str]:
        """The read-only profile with these limits, as ClickHouse settings."""
        return {
            "readonly": "1",
            "max_execution_time": str(self.timeout_s),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            **READ_FORMAT_SETTINGS,
        }


class Reader(Protocol):
    limits: ReadLimits  # what each read is held to

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        """Run one guarded read; raises read_guard.Refused or StoreError."""

    async def close(self) -> None: ...


class Busy(StoreError):
    """Every reader session is running a read: the caller may try again shortly."""


class NoAnswer(StoreError):
    """A caller gave up on a read that ran past its own time limit: stopped, as a timeout."""


# A read stopped at one of its limits (a read_failure outcome): the setting that sets it.
LIMIT_SETTINGS = {
    "timeout": "BEACON_STORE_QUERY_TIMEOUT_S",
    "too_large": "BEACON_STORE_QUERY_MAX_RESULT_BYTES",
    "memory_limit": "BEACON_STORE_QUERY_MAX_MEMORY_BYTES",
}


def read_failure(message: str) -> tuple[str, int]:
    """The outcome label and HTTP status of a read ClickHouse refused or stopped."""
    code = CODE_RE.search(message)
    if code and code[1] == TIMEOUT_EXCEEDED:
        return "timeout", 504
    if code and code[1] == TOO_MANY_ROWS_OR_BYTES:
        return "too_large", 413
    if code and code[1] == MEMORY_LIMIT_EXCEEDED:
        return "memory_limit", 413
    if code and code[1] == READONLY:
        return "not_read_only", 403
    return "failed", 400


class ChdbReader:
    """Reads of the embedded store in read-only chDB sessions of their own.

    chDB runs one query at a time per session: `concurrency` sessions let that many reads run
    side by side, and one more is refused (Busy) rather than queued behind a slow one. They
    run on threads of their own, so the writer's threads are never taken by a read.
    """

    def __init__(self, path: Path, limits: ReadLimits) -> None:
        self.limits = limits
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()  # sessions not reading
        self._sessions = [open_session(path, limits.settings()) for _ in range(limits.concurrency)]
        for reader in self._sessions:
            self._idle.put(reader)
        self._threads = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="beacon-read")
        # KILL QUERY is refused in read-only mode: one session that may stop the reads.
        self._control = open_session(path)
        self._control_lock = threading.Lock()

    def _read(self, reader: Any, sql: str, fmt: str, tag: str) -> str:
        try:
            statement = read_guard.one_statement(_run(reader, *read_guard.format_query(sql)))
            read_guard.check(_run(reader, read_guard.explain_ast(statement), "TSV"))
            return _run(reader, f"{tag}\n{statement}", fmt)
        finally:
            self._idle.put(reader)

    def _kill(self, tag: str) -> None:
        with self._control_lock:
            self._control.query(f"KILL QUERY WHERE startsWith(query, '{tag}') ASYNC", "TSV")

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        # The tag finds this query in system.processes when its caller leaves.
        tag = f"/* beacon-read {uuid.uuid4().hex} */"
        try:  # taken here, not in the thread: a pool thread is free for every idle session
            reader = self._idle.get_nowait()
        except queue.Empty:
            raise Busy(f"all {len(self._sessions)} reader sessions are busy") from None
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._threads, self._read, reader, sql, fmt, tag)
        work.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._kill, tag)
            raise

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._control_lock:
            for reader in self._sessions:
                reader.close()
            self._control.close()


def _run(session: Any, sql: str, fmt: str, params: dict[str, str] | None = None) -> str:
    """One statement on a chDB session; ClickHouse's errors as StoreError."""
    try:
        result = session.query(sql, fmt, params=params)
    except Exception as exc:  # chDB raises its own error types for ClickHouse errors
        raise StoreError(str(exc)) from exc
    return result.data() if hasattr(result, "data") else str(result)


class HttpReader:
    """Reads of a ClickHouse server, each with the read-only profile in its URL settings.

    A read-only HTTP query is cancelled by the server when its connection closes
    (cancel_http_readonly_queries_on_client_close), which a cancelled caller does.
    """

    def __init__(self, writer: HttpWriter, limits: ReadLimits, owns_writer: bool = False) -> None:
        """`owns_writer`: `writer` is this reader's alone, closed with it."""
        self.limits = limits
        self._writer = writer
        self._owns_writer = owns_writer
        self._settings = {**limits.settings(), "cancel_http_readonly_queries_on_client_close": "1"}

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        text, fmt_raw, params = read_guard.format_query(sql)
        query_params = {f"param_{k}": v for k, v in params.items()}
        formatted = await self._writer.query(text, fmt_raw, {**self._settings, **query_params})
        statement = read_guard.one_statement(formatted)
        ast = await self._writer.query(read_guard.explain_ast(statement), "TSV", self._settings)
        read_guard.check(ast)
        return await self._writer.query(statement, fmt, self._settings)

    async def close(self) -> None:
        if self._owns_writer:
            await self._writer.close()


def _retrieve(work: asyncio.Future[str]) -> None:
    """A killed read ends with an error nobody awaits any more: take it, so it is not logged."""
    if not work.cancelled():
        work.exception()
