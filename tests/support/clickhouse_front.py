"""Test-only: enough of ClickHouse's HTTP interface, in front of chDB, to test the HTTP writer.

No ClickHouse server can be installed here (DESIGN.md); chDB runs the same SQL and engine.
The front does what the server does with a request (query parameter + body, gzip body,
settings in the URL, user/key headers, 500 + X-ClickHouse-Exception-Code on errors) and
nothing else. chDB opens one data directory per process: one front at a time, closed after.

One rewrite, and why: chDB's session takes no per-query settings beside the SQL, so the URL
settings of an INSERT (async_insert, insert_deduplication_token, ...) become the SETTINGS
clause ClickHouse's INSERT grammar has for them (`with_settings`). A statement in the body with
settings in the URL runs unchanged in a session opened with those settings (`_read`), as a
server applies them to that query alone; query parameters (`param_<name>`) pass as chDB's.
But a statement whose only URL settings are ones the HTTP writer sends with every statement
(`PER_STATEMENT`) runs in the main session (its temporary tables are there), with them SET for
it alone. `profile`: settings of the front's every session, as a server's default profile.

And one table: `system.processes` is the front's own list of the statements it runs (their
`query_id`, `initial_query_id`, `query_kind` and `elapsed`), since chDB knows them under ids of
its own; so is `clusterAllReplicas('<name>', system.processes)` for a cluster named in
`clusters` (the front is its every replica), and any other name is refused as a server refuses
a cluster it does not know. As on a server, a statement runs to its end when its client gives
up on it.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cramjam
from aiohttp import web
from aiohttp.test_utils import TestServer

# Parameters of the HTTP interface itself; every other parameter is a setting.
# Not settings. One chDB session serves every client: a session_id's temporary tables live in
# it (consumers/ingest.py names its own apart); the front keeps the ids it has seen, to refuse
# a `session_check` of one it has not, as a server does.
HTTP_PARAMS = frozenset(
    ("query", "default_format", "wait_end_of_query", "session_id", "session_timeout",
     "session_check", "query_id",
     "send_progress_in_http_headers")  # a setting, but chDB sends no headers: nothing to turn off
)  # fmt: skip
# Settings the HTTP writer sends with every statement, or with those over whole days
# (analytics/store/http.py), set in the main session for the statement alone.
PER_STATEMENT = frozenset(
    ("empty_result_for_aggregation_by_empty_set", "distributed_ddl_task_timeout")
)
SETTING_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,99}$")
NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")
PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")  # fits a connection string unquoted
# Where a setting clause goes in an INSERT: before FORMAT (ClickHouse's INSERT grammar).
INSERT_FORMAT_RE = re.compile(
    r"^(?P<insert>\s*INSERT\s+INTO\s+[\w.]+(?:\s*\([^)]*\))?)\s+(?P<format>FORMAT\s+\w+)\s*$",
    re.IGNORECASE,
)
CODE_RE = re.compile(r"Code: (\d+)")
AUTH_FAILED = 516  # ClickHouse's AUTHENTICATION_FAILED
PROCESSES = "system.processes"
ALL_REPLICAS_RE = re.compile(r"clusterAllReplicas\(\s*'([^']*)'\s*,\s*system\.processes\s*\)")
CLUSTER_DOESNT_EXIST = 701
PROCESS_COLUMNS = "query_id String, initial_query_id String, query_kind String, elapsed Float64"
HOLD_MAX_S = 60.0  # a held statement runs after this whatever the test does
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as it arrived, for assertions about the wire."""

    params: dict[str, str]
    content_encoding: str
    wire_bytes: int  # body as sent
    body_bytes: int  # body after gunzip
    statement: str = ""  # the query parameter, else the body (then a statement, not rows)


class FrontError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def literal(value: str) -> str:
    if NUMBER_RE.match(value):
        return value
    return quoted(value)


def with_settings(head: str, settings: dict[str, str]) -> str:
    """The `query` parameter with the URL settings written into it as a SETTINGS clause."""
    if not settings:
        return head
    match = INSERT_FORMAT_RE.match(head)
    if not match or not all(SETTING_NAME_RE.match(k) for k in settings):
        # Settings of other statements go to a session of their own (ClickHouseFront._reads).
        raise FrontError(400, 115, f"front: URL settings only on INSERT ... FORMAT: {head!r}")
    clause = ", ".join(f"{k} = {literal(v)}" for k, v in settings.items())
    return f"{match['insert']} SETTINGS {clause} {match['format']}"


class ClickHouseFront:
    """`async with ClickHouseFront(path) as front:` then point an HttpWriter at `front.url`."""

    def __init__(
        self,
        data_dir: Path,
        user: str = "default",
        password: str = "",
        profile: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.profile = dict(profile or {})
        self.user, self.password = user, password
        self.fail_all = False  # True: every request gets 503, as from a server that is down
        # Set: after a request for which it says True, the front forgets its sessions, as if
        # the client's next connection reached another server behind the same address.
        self.moves_after: Callable[[Seen], bool] | None = None
        # Set: a statement for which it gives an Event waits for it before it runs (it is
        # listed in system.processes meanwhile), as one that a busy server is slow to finish.
        self.hold: Callable[[str], threading.Event | None] | None = None
        # Set: a request for which it says True runs to its end and its answer is lost (the
        # connection closed instead), as a server's whose client timed out or whose link broke.
        self.loses_answer: Callable[[Seen], bool] | None = None
        self.lost_answers: list[Seen] = []
        # query_id -> (query_kind, time.monotonic() at its start) of each statement running.
        self.running: dict[str, tuple[str, float]] = {}
        self.busy: set[str] = set()  # sessions running a statement: a session runs one at a time
        self.clusters: set[str] = set()  # names the front answers clusterAllReplicas for
        self.sessions: set[str] = set()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._session: Any = None
        # Sessions opened with a read's URL settings, as a server applies them to that query
        # alone; one per distinct set of settings, closed with the front.
        self._reads: dict[str, Any] = {}
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "front not started"
        return str(self._server.make_url("/"))

    async def __aenter__(self) -> ClickHouseFront:
        from chdb import session

        self._session = session.Session(str(self.data_dir))
        for name, value in self.profile.items():
            self._session.query(f"SET {name} = {literal(value)}")
        # auto_decompress off: the front gunzips itself, so it sees what was really sent.
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.close()
        with self._lock:
            for read in self._reads.values():
                read.close()
            self._session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        app.router.add_get("/ping", self._ping)
        return app

    @staticmethod
    async def _ping(request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def run(
        self, sql: str, fmt: str = "TabSeparated", pinned: Mapping[str, str] | None = None
    ) -> str:
        """Execute on chDB directly (test set-up and checks, bypassing HTTP), with the
        `pinned` settings for it alone."""
        with self._lock:
            pinned = pinned or {}
            before = {k: self._setting(k) for k in pinned}
            try:
                for name, value in pinned.items():
                    self._session.query(f"SET {name} = {literal(value)}")
                result = self._session.query(sql, fmt)
            finally:
                for name, value in before.items():
                    self._session.query(f"SET {name} = {literal(value)}")
        return result.data() if hasattr(result, "data") else str(result)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        try:
            body = self._decode(raw, encoding)
            statement = request.query.get("query") or body
            seen = Seen(dict(request.query), encoding, len(raw), len(body), statement)
            self.seen.append(seen)
            if self.fail_all:
                raise FrontError(503, 0, "front: failing on purpose")
            self._authenticate(request)
            self._find_session(request.query)
            params = dict(request.query)
            fmt = params.pop("default_format", "TabSeparated")
            head, settings = params.pop("query", ""), self._settings(params)
            # Query parameters: {name:Type} placeholders, sent as param_<name> in the URL.
            values = {k[6:]: settings.pop(k) for k in list(settings) if k.startswith("param_")}
            query_id = request.query.get("query_id") or str(uuid.uuid4())
            pinned = {k: settings.pop(k) for k in list(settings) if k in PER_STATEMENT}
            if (settings or values) and not head:  # a statement in the body, settings in the URL
                work = self._processes(body)
                run = lambda: self._read(work, fmt, settings | pinned, values)  # noqa: E731
            elif head:
                # Rewritten in the statement only: a body after a `query` parameter is data.
                head = self._processes(with_settings(head, settings | pinned))
                sql = f"{head}\n{body}" if body else head
                run = lambda: self._execute(sql, fmt, {})  # noqa: E731
            else:
                sql = self._processes(body)
                run = lambda: self._execute(sql, fmt, pinned)  # noqa: E731
            session = request.query.get("session_id", "")
            if session in self.busy:
                message = (
                    f"Code: {SESSION_IS_LOCKED}. DB::Exception: Session {session} is locked by a "
                    "concurrent client. (SESSION_IS_LOCKED)"
                )
                raise FrontError(500, SESSION_IS_LOCKED, message)
            out = await asyncio.to_thread(self._run_listed, query_id, session, statement, run)
        except FrontError as exc:
            headers = {"X-ClickHouse-Exception-Code": str(exc.code)} if exc.code else {}
            return web.Response(status=exc.status, text=exc.message + "\n", headers=headers)
        if self.moves_after is not None and self.moves_after(self.seen[-1]):
            self.sessions.clear()
        if self.loses_answer is not None and self.loses_answer(seen):
            self.lost_answers.append(seen)
            assert request.transport is not None
            request.transport.close()  # ran, stored, and no answer reaches the client
        return web.Response(text=out)

    def _run_listed(
        self, query_id: str, session: str, statement: str, run: Callable[[], str]
    ) -> str:
        """`run()`, listed in system.processes and holding its session from before any hold
        to its end. In a thread of its own: it runs on when its client leaves (the handler is
        cancelled then)."""
        kind = "Insert" if statement.lstrip()[:6].upper() == "INSERT" else "Select"
        self.running[query_id] = (kind, time.monotonic())
        if session:
            self.busy.add(session)
        try:
            gate = self.hold(statement) if self.hold is not None else None
            if gate is not None:
                gate.wait(HOLD_MAX_S)
            return run()
        finally:
            del self.running[query_id]
            self.busy.discard(session)

    def _processes(self, sql: str) -> str:
        """`sql` with system.processes, on its own or on every replica of a cluster, as the
        statements running now; FrontError for a cluster the front does not answer for."""
        if PROCESSES not in sql:
            return sql
        for name in ALL_REPLICAS_RE.findall(sql):
            if name not in self.clusters:
                message = (
                    f"Code: {CLUSTER_DOESNT_EXIST}. DB::Exception: Requested cluster '{name}' "
                    "not found. (CLUSTER_DOESNT_EXIST)"
                )
                raise FrontError(500, CLUSTER_DOESNT_EXIST, message)
        now = time.monotonic()
        rows = "".join(
            f", ({quoted(q)}, {quoted(q)}, '{kind}', {now - began:.6f})"
            for q, (kind, began) in list(self.running.items())
        )
        listed = f"(SELECT * FROM values('{PROCESS_COLUMNS}', ('', '', '', -1){rows}) "
        listed += "WHERE elapsed >= 0)"
        return ALL_REPLICAS_RE.sub(lambda _: listed, sql).replace(PROCESSES, listed)

    def _find_session(self, params: Mapping[str, str]) -> None:
        session = params.get("session_id")
        if not session:
            return
        if params.get("session_check") == "1" and session not in self.sessions:
            message = (
                f"Code: {SESSION_NOT_FOUND}. DB::Exception: Session {session} not found. "
                "(SESSION_NOT_FOUND)"
            )
            raise FrontError(404, SESSION_NOT_FOUND, message)
        self.sessions.add(session)

    @staticmethod
    def _decode(raw: bytes, encoding: str) -> str:
        decoders = {
            "": bytes,
            "gzip": gzip.decompress,
            "zstd": lambda data: bytes(cramjam.zstd.decompress(data)),
        }
        if encoding not in decoders:
            raise FrontError(400, 0, f"front: Content-Encoding {encoding} not supported")
        try:
            return decoders[encoding](raw).decode()
        except (OSError, EOFError, UnicodeDecodeError, cramjam.DecompressionError) as exc:
            raise FrontError(400, 0, f"front: unreadable body: {exc}") from None

    def _authenticate(self, request: web.Request) -> None:
        user = request.headers.get("X-ClickHouse-User", "default")
        key = request.headers.get("X-ClickHouse-Key", "")
        if (user, key) != (self.user, self.password):
            message = (
                f"Code: {AUTH_FAILED}. DB::Exception: {user}: Authentication failed: password "
                "is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"
            )
            raise FrontError(403, AUTH_FAILED, message)

    @staticmethod
    def _settings(params: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in params.items() if k not in HTTP_PARAMS}

    def _execute(self, sql: str, fmt: str, pinned: Mapping[str, str]) -> str:
        try:
            return self.run(sql, fmt, pinned)
        except Exception as exc:  # chDB's error types carry ClickHouse's "Code: N. ..." text
            raise failure(exc) from None

    def _setting(self, name: str) -> str:
        return str(self._session.query(f"SELECT getSetting('{name}')", "TSVRaw")).strip()

    def _read(self, sql: str, fmt: str, settings: dict[str, str], values: dict[str, str]) -> str:
        """`sql` in a session opened with `settings` (chDB takes them as connection
        parameters), beside the main one: a slow read holds up no insert, as on a server."""
        from chdb import session

        if not all(
            SETTING_NAME_RE.match(k) and PLAIN_VALUE_RE.match(v) for k, v in settings.items()
        ):
            raise FrontError(400, 115, f"front: settings it cannot pass on: {settings!r}")
        key = "&".join(f"{k}={v}" for k, v in sorted((self.profile | settings).items()))
        with self._lock:
            if key not in self._reads:
                self._reads[key] = session.Session(f"{self.data_dir}?{key}")
            read = self._reads[key]
        try:
            result = read.query(sql, fmt, params=values or None)
        except Exception as exc:  # chDB's error types carry ClickHouse's "Code: N. ..." text
            raise failure(exc) from None
        return result.data() if hasattr(result, "data") else str(result)


def failure(exc: Exception) -> FrontError:
    """ClickHouse's answer to a failed statement: 500 and the exception code in a header."""
    code = CODE_RE.search(str(exc))
    return FrontError(500, int(code.group(1)) if code else 1002, str(exc))


async def serve(data_dir: Path, port: int) -> None:
    """A front on `port` until the process is stopped (loadtest/bench_consumer.py --server)."""
    from chdb import session

    front = ClickHouseFront(data_dir)
    front._session = session.Session(str(data_dir))
    runner = web.AppRunner(front.app(), auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()
