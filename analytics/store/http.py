"""The server writer: a ClickHouse server through its HTTP interface.

POST to `/`, the statement in the `query` URL parameter or the body (when both, the body
follows the parameter: that is how INSERT data travels), settings as URL parameters,
credentials in X-ClickHouse-User / X-ClickHouse-Key, a compressed body announced by
Content-Encoding:
https://clickhouse.com/docs/concepts/features/connect-to-clickhouse/protocols/http
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping

import aiohttp

from analytics.store import TOKEN_RE, Rows, StoreError

# ClickHouse sends this header with every error answer; the body is the exception text.
EXCEPTION_CODE_HEADER = "X-ClickHouse-Exception-Code"
# Level 1: a 10k-row NDJSON batch (6.4 MB) shrinks 9x in ~80 ms (loadtest/bench_enrich.py).
GZIP_LEVEL = 1
# Bodies above this are compressed in a thread (zlib releases the GIL), off the event loop.
GZIP_INLINE_MAX_BYTES = 64 * 1024
ERROR_MESSAGE_MAX_CHARS = 2000


async def gzipped(body: bytes) -> bytes:
    if len(body) <= GZIP_INLINE_MAX_BYTES:
        return gzip.compress(body, GZIP_LEVEL)
    return await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)


class HttpWriter:
    """Writer (analytics/store/__init__.py) over ClickHouse's HTTP interface, with aiohttp."""

    def __init__(
        self,
        url: str,
        user: str = "default",
        password: str = "",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self._headers = {
            "X-ClickHouse-User": user,
            "X-ClickHouse-Key": password,
            "Content-Encoding": "gzip",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a ClientSession belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _post(self, params: dict[str, str], body: bytes) -> str:
        """One statement; any failure to get a 200 answer is a StoreError (the caller retries)."""
        data = await gzipped(body)
        try:
            async with self._client().post(self.url, params=params, data=data) as response:
                text = await response.text(errors="replace")
                if response.status != 200:
                    code = response.headers.get(EXCEPTION_CODE_HEADER, "-")
                    message = text.strip()[:ERROR_MESSAGE_MAX_CHARS]
                    raise StoreError(f"ClickHouse HTTP {response.status}, code {code}: {message}")
                return text
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"ClickHouse at {self.url} unreachable: {exc!r}") from exc

    async def insert(self, table: str, rows: bytes | Rows, token: str) -> None:
        if not TOKEN_RE.match(token):
            raise ValueError(f"bad dedup token {token!r}")
        params = {
            "query": f"INSERT INTO {table} FORMAT JSONEachRow",
            # Since 26.2 async_insert defaults to 1; our batches are already big and the
            # token must apply to exactly this batch (DESIGN.md).
            "async_insert": "0",
            "insert_deduplication_token": token,
            # Wire fields without a column (added by newer collectors) must not fail a batch.
            "input_format_skip_unknown_fields": "1",
        }
        # JSONEachRow either way: a server parses it on its own cores, not the consumer's.
        body = rows if isinstance(rows, bytes) else rows.ndjson()
        await self._post(params, body)

    async def execute(self, sql: str) -> None:
        await self._post({}, sql.encode())

    async def query(
        self, sql: str, fmt: str = "JSONEachRow", settings: Mapping[str, str] | None = None
    ) -> str:
        """`sql`'s output in `fmt`; `settings` go with it as URL parameters."""
        # wait_end_of_query: an error after the first rows would otherwise arrive inside a
        # 200 answer, and a truncated result would pass for a whole one.
        params = {**(settings or {}), "default_format": fmt, "wait_end_of_query": "1"}
        return await self._post(params, sql.encode())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
