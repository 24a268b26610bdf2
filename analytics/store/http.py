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
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import cramjam

from analytics.store import WHOLE_DAYS, Cluster, StoreError, insert_params, insert_select

# ClickHouse sends this header with every error answer; the body is the exception text.
EXCEPTION_CODE_HEADER = "X-ClickHouse-Exception-Code"
# Request bodies (BEACON_CLICKHOUSE_COMPRESSION), each at level 1. On bench events (~575 bytes,
# one CPU, 2026-12-06): zstd 0.44 µs an event, 19x smaller; gzip 1.49 µs, 11x (cramjam's zstd,
# which aiokafka's lz4 and zstd bring; ClickHouse reads both as a Content-Encoding).
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zstd": lambda body: bytes(cramjam.zstd.compress(body, level=1)),
    "gzip": lambda body: gzip.compress(body, 1),
}
# Bodies above this are compressed in a thread (both release the GIL), off the event loop.
COMPRESS_INLINE_MAX_BYTES = 64 * 1024
# A body in pieces is compressed a frame of about this many input bytes at a time, the frames
# sent as they come: ClickHouse reads concatenated zstd frames and gzip members as the
# concatenation of their contents, as zstd and gzip do. Joined whole first, a batch's
# lines took their size again at the peak (177-179 MB against 145, docs/performance.md).
FRAME_INPUT_BYTES = 1 << 20
ERROR_MESSAGE_MAX_CHARS = 2000
# Every statement's query_id starts so; that of an insert under a dedup token (a batch's rows
# into beacon.events) with INSERT_QUERY_ID_PREFIX and its batch's key (insert_query_ids), by
# which the server lists them.
QUERY_ID_PREFIX = "beacon-"
INSERT_QUERY_ID_PREFIX = "beacon-insert-"
BATCH_KEY_CHARS = 16
# How often a retry looks again for an earlier insert still running (await_earlier_inserts).
EARLIER_INSERTS_POLL_S = 0.1
# Every statement's answer comes whole, after its end, whatever the server's profile: with
# progress headers (send_progress_in_http_headers) a 200 goes out before the statement ends,
# and an insert that fails after it would pass for stored, its batch committed without it.
# And an aggregate without GROUP BY answers its one row over no rows whatever the profile's
# empty_result_for_aggregation_by_empty_set: settling's count of a stage or newest mark read
# none, and a rebuild (an erasure's too) failed at every try, the person left in the rollups.
STATEMENT_PARAMS = {
    "wait_end_of_query": "1",
    "send_progress_in_http_headers": "0",
    "empty_result_for_aggregation_by_empty_set": "0",
}


async def compressed(body: bytes, compression: str) -> bytes:
    compress = COMPRESSORS[compression]
    if len(body) <= COMPRESS_INLINE_MAX_BYTES:
        return compress(body)
    return await asyncio.to_thread(compress, body)


# A session keeps the ingest's temporary tables (consumers/ingest.py) between its statements;
# one idle longer than this is dropped by the server. Each batch has a session of its own
# (new_session): the server keeps the old ones this long after their last statement.
SESSION_TIMEOUT_S = 60


def server_session() -> dict[str, str]:
    """The URL parameters of a fresh server session."""
    return {"session_id": f"beacon-{uuid.uuid4().hex}", "session_timeout": str(SESSION_TIMEOUT_S)}


async def each(pieces: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def compressed_frames(pieces: Sequence[bytes], compression: str) -> AsyncIterator[bytes]:
    """`pieces` compressed, a frame of about FRAME_INPUT_BYTES of them at a time."""
    group: list[bytes] = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece)
        if size >= FRAME_INPUT_BYTES:
            yield await compressed(b"".join(group), compression)
            group, size = [], 0
    if group:
        yield await compressed(b"".join(group), compression)


def insert_query_ids(batch: str | None) -> str:
    """How the query ids of the inserts of the batch `batch` (its dedup token) start; of any
    batch's inserts when None or empty."""
    if not batch:
        return INSERT_QUERY_ID_PREFIX
    key = hashlib.sha256(batch.encode()).hexdigest()[:BATCH_KEY_CHARS]
    return f"{INSERT_QUERY_ID_PREFIX}{key}-"


def processes(cluster: str) -> str:
    """The statements running on every server of the cluster named `cluster` ("": on the one
    server); a query of it on a cluster takes SETTINGS skip_unavailable_shards = 1."""
    return f"clusterAllReplicas('{cluster}', system.processes)" if cluster else "system.processes"


def earlier_inserts_sql(cluster: str, waited_s: float, batch: str | None) -> str:
    """How many inserts of the batch `batch` (None: of any batch) run that began over
    `waited_s` ago (on every server of the cluster named `cluster`; "": on the one server)."""
    return (
        f"SELECT count() FROM {processes(cluster)} WHERE query_kind = 'Insert' AND "
        f"startsWith(initial_query_id, '{insert_query_ids(batch)}') AND elapsed > {waited_s:.3f}"
    )


class HttpWriter:
    """Writer (analytics/store/__init__.py) over ClickHouse's HTTP interface, with aiohttp.

    Every statement runs in one server session of its own, one at a time (a session takes one
    query at a time): temporary tables live as long as the session.
    """

    def __init__(
        self,
        url: str,
        user: str = "default",
        password: str = "",
        timeout_s: float = 60.0,
        day_timeout_s: float = 3600.0,
        connect_timeout_s: float = 5.0,
        compression: str = "zstd",
        cluster: Cluster | None = None,
        replicas_cluster: str = "",
        insert_quorum: str = "",
    ) -> None:
        """`cluster`: inserts go to a cluster's Distributed tables, with its settings.
        `replicas_cluster`: no cluster, but several servers answer at `url` (replicas behind
        a load balancer), all of them in this cluster of `remote_servers`; inserts then wait
        for `insert_quorum` of them, as a cluster's for its own. `compression`: of request
        bodies, one of COMPRESSORS or "none". `timeout_s`: a statement's bound, but for those
        that read or rewrite whole days (analytics.store.whole_days): `day_timeout_s`."""
        if compression not in (*COMPRESSORS, "none"):
            raise ValueError(f"unknown compression {compression!r}")
        self.url = url
        self.compression = compression
        self.cluster = cluster
        # Where a retry looks for its batch's earlier insert (await_earlier_inserts).
        self.processes_cluster = cluster.name if cluster is not None else replicas_cluster
        self.quorum = insert_quorum if replicas_cluster and cluster is None else ""
        self._args = (
            user, password, timeout_s, day_timeout_s, connect_timeout_s, compression, cluster,
            replicas_cluster, insert_quorum,
        )  # fmt: skip
        self.timeout_s = timeout_s
        self.day_timeout_s = day_timeout_s
        self._headers = {"X-ClickHouse-User": user, "X-ClickHouse-Key": password}
        if compression != "none":
            self._headers["Content-Encoding"] = compression
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._day_timeout = aiohttp.ClientTimeout(
            total=day_timeout_s, sock_connect=connect_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._server_session = server_session()
        # Checked only once new_session is called (see there): this writer's own session,
        # which nothing keeps tables in, is opened again wherever a statement lands.
        self._check_session = False
        self._session_opened = False
        self._one_at_a_time = asyncio.Lock()
        self._insert_query_id = insert_query_ids(None)  # then a uuid; new_session names a batch

    def new_session(self, batch: str = "") -> None:
        """Run what follows in a fresh server session; each statement after its first names
        it with `session_check`, so that one which lands on another server (several behind
        one address) fails, and its batch is retried, instead of finding there an empty
        session of the same id, or one an earlier batch left its tables in. The session's
        inserts carry `batch` (its dedup token) in their query ids."""
        self._server_session = server_session()
        self._check_session = True
        self._session_opened = False
        self._insert_query_id = insert_query_ids(batch)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a ClientSession belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _post(
        self,
        params: dict[str, str],
        body: bytes | Sequence[bytes],
        prefix: str = QUERY_ID_PREFIX,
        in_session: bool = True,
    ) -> str:
        """One statement; any failure to get a 200 answer is a StoreError (the caller retries).
        A body in pieces goes chunked: as they are, or compressed a frame at a time.
        `in_session`: in the writer's server session (new_session), else in none."""
        data: bytes | AsyncIterator[bytes]
        if isinstance(body, bytes):
            plain = self.compression == "none"
            data = body if plain else await compressed(body, self.compression)
        elif self.compression == "none":
            data = each(body)
        else:
            data = compressed_frames(body, self.compression)
        days = WHOLE_DAYS.get()
        timeout = self._day_timeout if days else self._timeout
        try:
            async with self._one_at_a_time:
                params = {**params, **STATEMENT_PARAMS}
                if days:  # and a cluster's DELETE, ON CLUSTER, waits for its hosts as long
                    params["distributed_ddl_task_timeout"] = f"{self.day_timeout_s:.0f}"
                if in_session:
                    params |= self._server_session
                    if self._check_session and self._session_opened:
                        params["session_check"] = "1"
                params["query_id"] = f"{prefix}{uuid.uuid4().hex}"
                post = self._client().post(self.url, params=params, data=data, timeout=timeout)
                async with post as response:
                    text = await response.text(errors="replace")
                    # An exception's code with a 200: it came after the answer began.
                    if response.status != 200 or EXCEPTION_CODE_HEADER in response.headers:
                        code = response.headers.get(EXCEPTION_CODE_HEADER, "-")
                        message = text.strip()[:ERROR_MESSAGE_MAX_CHARS]
                        raise StoreError(
                            f"ClickHouse HTTP {response.status}, code {code}: {message}"
                        )
                    self._session_opened |= in_session
                    return text
        except aiohttp.ConnectionTimeoutError as exc:  # nothing sent: as a refused connection
            raise StoreError(f"ClickHouse at {self.url} unreachable: {exc!r}") from exc
        except TimeoutError as exc:  # a server may go on with an insert its client left
            raise StoreError(
                f"ClickHouse at {self.url}: no answer in {timeout.total:g} s; the statement "
                "may still run there"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise StoreError(f"ClickHouse at {self.url} unreachable: {exc!r}") from exc

    def on_host(self, host: str) -> HttpWriter:
        """A writer like this one for the server `host` (a shard's replica in the cluster's
        `remote_servers`), on the same scheme and port."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        netloc = f"[{host}]{port}" if ":" in host else f"{host}{port}"
        return HttpWriter(urlunsplit(parts._replace(netloc=netloc)), *self._args)

    async def insert(self, table: str, rows: bytes, token: str) -> None:
        params = {
            "query": f"INSERT INTO {table} FORMAT JSONEachRow",
            **insert_params(token, self.cluster, self.quorum),
            # Wire fields without a column (added by newer collectors) must not fail a batch.
            "input_format_skip_unknown_fields": "1",
        }
        await self._post(params, rows, self._insert_query_id)

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        statement = insert_select(table, columns, select, token, self.cluster, self.quorum)
        await self._post({}, statement.encode(), self._insert_query_id)

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        # Not queued (a server's async_insert, on by default since 26.2): the next statement
        # reads the table, and would find it empty with the profile's wait_for_async_insert=0.
        params = {"query": f"INSERT INTO {table} FORMAT {fmt}", "async_insert": "0"}
        await self._post(params, body)

    async def execute(self, sql: str) -> None:
        await self._post({}, sql.encode())

    async def query(
        self, sql: str, fmt: str = "JSONEachRow", settings: Mapping[str, str] | None = None
    ) -> str:
        """`sql`'s output in `fmt`; `settings` go with it as URL parameters."""
        # wait_end_of_query (STATEMENT_PARAMS): an error after the first rows would otherwise
        # arrive inside a 200 answer, and a truncated result would pass for a whole one.
        params = {**(settings or {}), "default_format": fmt}
        return await self._post(params, sql.encode())

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        """Return once no insert of the batch `batch` (a dedup token given to new_session;
        None: of any batch) begun before this call runs on the server (on every server of the
        cluster: a Distributed insert's shards run it under its query id; on every server of
        the replicas' cluster, whichever of them took it). A server goes on with an insert
        whose client gave up on it (a timeout: ClickHouse cancels only read-only queries when
        their client leaves), so a retry could run beside it, and what it lands late would
        miss the batch's erasure check: a person erased in between would come back.
        Settling's and other statements are never waited for. Raises StoreError after the
        writer's timeout."""
        # A server down runs nothing: a cluster's count skips it.
        settings = {"skip_unavailable_shards": "1"} if self.processes_cluster else {}
        began_s = time.monotonic()
        while True:
            waited_s = time.monotonic() - began_s
            sql = earlier_inserts_sql(self.processes_cluster, waited_s, batch)
            # In no session: the batch's last one may be held by the very insert looked for
            # (SESSION_IS_LOCKED), or gone with a server (SESSION_NOT_FOUND) for good.
            params = {**settings, "default_format": "TSV"}
            if not int((await self._post(params, sql.encode(), in_session=False)).strip() or 0):
                return
            if waited_s >= self.timeout_s:
                raise StoreError(f"an insert begun over {waited_s:.0f} s ago still runs")
            await asyncio.sleep(EARLIER_INSERTS_POLL_S)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
