"""HTTP handlers: the pixel, the JSON event endpoint, health, metrics."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import event as ev
from collector.address_table import CachedLookup
from collector.buffer import EventBuffer
from collector.consent import (
    DROP,
    GRANTED,
    MISSING,
    MS_PER_HOUR,
    ConsentPolicy,
    VisitorCookie,
    VisitorIds,
    strip_identifiers,
)
from collector.errors import json_error
from collector.json_event import parse_json_event
from collector.metrics import CollectorMetrics
from collector.pixel import CORS_HEADERS, GIF_BYTES, PIXEL_HEADERS, ROBOTS_TXT
from collector.privacy import VisitorHasher, anonymise_ip, dnt_decision, normalise_ip, opted_out
from collector.request_view import RequestView, purpose
from collector.sanitize import serialise
from collector.settings import Settings
from collector.signing import Keyring, SignatureGate
from collector.tallies import CounterTally, HistogramTally, Tallies

if TYPE_CHECKING:  # collector.ratelimit imports this module
    from collector.ratelimit import TokenBuckets

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_EVENTS = 100
METRICS_READ_TRIES = 5  # a worker's metrics file is empty for an instant after it is made
METRICS_RETRY_S = 0.02
JSON_TYPES = frozenset({"application/json", "text/plain"})
# The client address of an aiohttp request once resolved: the rate limit asks for it first and
# the event after it, and a bad forwarded header is counted once.
CLIENT_IP = web.RequestKey("client_ip", str)


class Prepared(NamedTuple):
    """One event, built and checked but not yet buffered: what `Collector.commit` takes."""

    outcome: str  # "" to store it; else why not ("dnt", "no_consent"), counted at commit
    blob: bytes
    transport: str
    notes: list[str]
    click_id: str  # the click id the row keeps ("" for other events and aggregate rows)
    new_visitor: bool = False  # it carries the visitor cookie id made for this request
    flags: tuple[str, ...] = ()  # its `network` and `purpose`, those not "": counted at commit


class Collector:
    """Request handlers sharing one buffer, one metrics set and one visitor hasher."""

    def __init__(
        self,
        settings: Settings,
        buffer: EventBuffer,
        metrics: CollectorMetrics,
        hasher: VisitorHasher,
        gate: SignatureGate | None = None,
        countries: CachedLookup | None = None,
        networks: CachedLookup | None = None,
    ) -> None:
        self.settings = settings
        # None: no data, every country and network is "".
        self.countries = CachedLookup(None) if countries is None else countries
        self.networks = CachedLookup(None) if networks is None else networks
        self.gate = gate or SignatureGate(Keyring(), settings.signature_policy, metrics)
        self.buffer = buffer
        self.metrics = metrics
        self.hasher = hasher
        self.keep_query = frozenset(settings.url_query_keep)
        self.consent = ConsentPolicy(settings.consent_required, settings.consent_missing)
        cookie = None
        if settings.visitor_cookie:
            cookie = VisitorCookie(
                settings.cookie_name,
                settings.cookie_domain,
                settings.cookie_max_age_s,
                settings.cookie_same_site,
            )
        self.visitor_ids = VisitorIds(hasher, cookie)
        self.draining = False
        self.new_event_id = ev.Uuid7Source()
        # The fast path's request view takes no state: its last address, for the one request
        # the fast path asks twice about (rate limit, then event) in one synchronous call.
        self._last_view: RequestView | None = None
        self._last_view_ip = ""
        # The per-client rate limit's buckets (collector/ratelimit.py), set by create_app when
        # the limit is on: the pixel fast path takes from them as the middleware does.
        self.rate_buckets: TokenBuckets | None = None
        # Tallied on the hot path, added to the series on the buffer tick (collector/tallies.py).
        self.requests = Tallies(metrics.requests, CounterTally)  # by (endpoint, outcome)
        self.hot_path_seconds = Tallies(metrics.hot_path_seconds, HistogramTally)  # by endpoint
        self.accepted = Tallies(metrics.events_accepted, CounterTally)  # by transport
        self.fixed = Tallies(metrics.input_fixed, CounterTally)  # by reason
        self.limited = Tallies(metrics.rate_limited, CounterTally)  # by endpoint
        self.flagged = Tallies(metrics.events_flagged, CounterTally)  # by flag
        tallies = (
            self.requests, self.hot_path_seconds, self.accepted, self.fixed, self.limited,
            self.flagged,
        )  # fmt: skip
        metrics.folds += [t.fold for t in tallies]

    # -- shared steps ----------------------------------------------------------------------

    def client_ip(self, request: RequestView) -> str:
        """The client's address: the socket peer, or the trusted proxy's word for it."""
        if not self.settings.forwarded_header:
            return request.remote or ""
        if isinstance(request, web.Request):
            known = request.get(CLIENT_IP)
            if known is None:
                known = request[CLIENT_IP] = self._forwarded_ip(request)
            return known
        if request is not self._last_view:
            self._last_view, self._last_view_ip = request, self._forwarded_ip(request)
        return self._last_view_ip

    def over_limit(self, endpoint: str, request: RequestView) -> float:
        """0.0 when the client may go ahead (no rate limit, or a token spent); else the seconds
        until it may, counted once here for the middleware and the pixel fast path alike."""
        buckets = self.rate_buckets
        if buckets is None:
            return 0.0
        wait_s = buckets.take(self.client_ip(request))
        if wait_s:
            self.limited[endpoint].inc()
        return wait_s

    def _forwarded_ip(self, request: RequestView) -> str:
        """The address the trusted proxies saw, counted when the header does not give one.

        Proxies append to the header, and a header sent twice is one list (RFC 9110 5.3): a
        client may send a line of its own before the proxy's. So every line, in order, and
        the address `forwarded_trusted_hops` from the right: anything left of it is the
        client's own claim.
        """
        lines = request.headers.getall(self.settings.forwarded_header, ())
        hops = ",".join(lines).split(",")
        trusted = self.settings.forwarded_trusted_hops
        if lines and len(hops) >= trusted:
            address = normalise_ip(hops[-trusted].strip())
            if address:
                return address
        self.fixed["bad_forwarded_header"].inc()
        return request.remote or ""

    def prepare(
        self,
        request: RequestView,
        fields: Mapping[str, str],
        props: dict[str, str],
        page_url: str,
        transport: str,
        notes: list[str],
        verified: bool = False,
        issued: list[int] | None = None,
    ) -> Prepared:
        """Build and check one event, buffering and counting nothing. Raises ev.Rejected.

        `issued`, from endpoints that can set a cookie, receives a new cookie visitor id
        (cookie mode, consented event, no cookie yet): the endpoint sends it in Set-Cookie if
        an event that carries it (`new_visitor`) is stored.
        """
        headers = request.headers
        event_type = fields.get("e") or "pageview"
        dnt = opted_out(headers)
        anonymous = False
        if dnt:
            decision = dnt_decision(self.settings.dnt_policy, event_type)
            if decision == "drop":
                if event_type in ev.EVENT_TYPES:
                    return Prepared("dnt", b"", transport, notes, "")
            anonymous = decision == "anonymous"
        basis = self.consent.basis(fields.get("consent", ""), fields.get("s", ""), notes)
        if basis == DROP and event_type in ev.EVENT_TYPES:
            return Prepared("no_consent", b"", transport, notes, "")
        aggregate = basis == MISSING  # kept as a count, without identifiers
        received_ms = ev.now_ms()
        if aggregate:
            # The event id's time bits too (a UUIDv7 holds its millisecond): to the hour.
            received_ms -= received_ms % MS_PER_HOUR
        full_ip = self.client_ip(request)
        # From the whole address, before anonymise_ip truncates or drops it: every IP mode.
        country = self.countries(full_ip)
        network = self.networks(full_ip)
        speculative = purpose(headers)
        user_agent = headers.get("User-Agent", "")
        visitor_id = 0
        new_visitor = False
        if not (anonymous or aggregate):
            visitor_id, new_visitor = self.visitor_ids.pick(
                request,
                fields.get("s", ""),
                full_ip,
                user_agent,
                received_ms,
                basis == GRANTED,
                notes,
                issued,
            )
        row = ev.build_event(
            fields,
            props,
            page_url=page_url,
            user_agent=user_agent,
            ip="" if anonymous or aggregate else anonymise_ip(full_ip, self.settings.ip_mode),
            visitor_id=visitor_id,
            dnt=dnt,
            transport=transport,
            received_ms=received_ms,
            keep_query=self.keep_query,
            notes=notes,
            verified=verified,
            event_id=self.new_event_id(received_ms),
            country=country,
            network=network,
            purpose=speculative,
        )
        row["consent"] = basis
        if aggregate:
            strip_identifiers(row)
        blob = serialise(row, notes)
        flags: tuple[str, ...] = ()
        if network or speculative:  # few events: no tuple work for the others
            flags = tuple(filter(None, (network, speculative)))
        return Prepared("", blob, transport, notes, row.get("click_id", ""), new_visitor, flags)

    def commit(self, prepared: Prepared) -> str:
        """Buffer a prepared event (or count why it is not stored); the outcome label."""
        if prepared.outcome:
            self.metrics.events_dropped.labels(prepared.outcome).inc()
            return prepared.outcome
        if not self.buffer.offer(prepared.blob):
            return self.buffer.refused  # buffer_full, spool_full, spool_error or shutdown
        self._count_recorded(prepared)
        return "recorded"

    def _count_recorded(self, prepared: Prepared) -> None:
        self.accepted[prepared.transport].inc()
        for flag in prepared.flags:
            self.flagged[flag].inc()
        for note in prepared.notes:
            self.fixed[note].inc()

    # -- endpoints -------------------------------------------------------------------------

    async def pixel(self, request: web.Request) -> web.Response:
        """GET/HEAD /p.gif: always the pixel; the event for a GET (HEAD asks for nothing).

        Connections that start with pixels are answered by collector/fastpath.py instead,
        through the same pixel_outcome and pixel_done."""
        started = time.perf_counter()
        issued: list[int] = []
        outcome = self.pixel_outcome(request, issued)
        response = web.Response(body=GIF_BYTES, headers=PIXEL_HEADERS)
        if issued:
            self.visitor_ids.with_cookie(response, issued)
        self.pixel_done(outcome, started)
        return response

    def pixel_outcome(self, request: RequestView, issued: list[int] | None) -> str:
        """The pixel's event, recorded for a GET; the outcome label. A speculative GET
        (prefetch, prerender, preview) is recorded too, with its `purpose`: reports leave it
        out of the ad figures as invalid traffic, and count how much they left out."""
        if request.method == "HEAD":
            return "head"
        return self._pixel_event(request, issued)

    def pixel_done(self, outcome: str, started: float) -> None:
        self.requests["pixel", outcome].inc()
        self.hot_path_seconds["pixel"].observe(time.perf_counter() - started)

    def pixel_staged(self, started: float) -> None:
        """pixel_done for a recorded pixel whose event waits for the log's group write
        (collector/spool/wal.py): its outcome is counted by pixels_logged once written."""
        self.hot_path_seconds["pixel"].observe(time.perf_counter() - started)

    def pixels_logged(self, count: int, refused: str) -> None:
        """The outcome of `count` staged pixels: recorded, or why the log dropped them."""
        self.requests["pixel", refused or "recorded"].add(count)

    def _pixel_event(self, request: RequestView, issued: list[int] | None) -> str:
        verified = self.gate.check("/p.gif", request.query.items(), "pixel")
        if verified is None:
            return "unverified"
        fields: dict[str, str] = {}
        raw_props: list[tuple[str, str]] = []
        for key, value in request.query.items():
            if key.startswith("p."):
                raw_props.append((key[2:], value))
            elif key in ev.KNOWN_KEYS and key not in fields:
                fields[key] = value
        notes: list[str] = []
        props = ev.clean_props(raw_props, notes) if raw_props else {}
        page_url = fields.get("u") or request.headers.get("Referer") or ""
        try:
            prepared = self.prepare(
                request, fields, props, page_url, "pixel", notes, verified, issued
            )
        except ev.Rejected as exc:
            self.metrics.events_dropped.labels(exc.reason).inc()
            outcome = "rejected"
        else:
            outcome = self.commit(prepared)
        if issued and outcome != "recorded":
            issued.clear()  # no visitor cookie for an event that is not stored
        return outcome

    async def events(self, request: web.Request) -> web.Response:
        """POST /e: one JSON event or an array of them; 204, or 4xx with a short reason."""
        started = time.perf_counter()
        response = await self._events(request)
        self.events_done("recorded" if response.status == 204 else str(response.status), started)
        return response

    def events_done(self, outcome: str, started: float) -> None:
        self.requests["events", outcome].inc()
        self.hot_path_seconds["events"].observe(time.perf_counter() - started)

    async def _events(self, request: web.Request) -> web.Response:
        # sendBeacon sends text/plain for strings and no type at all for an untyped Blob.
        if "Content-Type" in request.headers and request.content_type not in JSON_TYPES:
            return json_error(415, "unsupported_media_type")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return json_error(413, "body_too_large", max_bytes=MAX_BODY_BYTES)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "body_too_large", max_bytes=MAX_BODY_BYTES)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return json_error(400, "malformed_json")
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            return json_error(400, "empty_batch")
        if len(items) > MAX_BATCH_EVENTS:
            return json_error(400, "too_many_events", max_events=MAX_BATCH_EVENTS)
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(parse_json_event(item))
            except ev.Rejected as exc:
                self.metrics.events_dropped.labels(exc.reason).inc(len(items))
                return json_error(400, exc.reason, index=index)
        # All or nothing: every event is built and checked before any is buffered, so a
        # client that fixes its request and sends it again makes no duplicates.
        prepared = []
        issued: list[int] = []
        for index, (fields, props) in enumerate(parsed):
            page_url = fields.get("u") or request.headers.get("Referer") or ""
            try:
                prepared.append(
                    self.prepare(request, fields, props, page_url, "beacon", [], issued=issued)
                )
            except ev.Rejected as exc:  # parse_json_event checks the same: a backstop
                self.metrics.events_dropped.labels(exc.reason).inc(len(items))
                return json_error(400, exc.reason, index=index)
        return self._commit_batch(prepared, issued)

    def _commit_batch(self, prepared: list[Prepared], issued: list[int]) -> web.Response:
        """Buffer a checked batch, all of it or none: 204, or 503 when the buffer (or the
        write-ahead log) has no room for all of it. A client that sends the batch again after
        a 503 then makes no duplicates."""
        kept = []
        for event in prepared:
            if event.outcome:  # not to be stored (dnt, no_consent): counted, each attempt
                self.metrics.events_dropped.labels(event.outcome).inc()
            else:
                kept.append(event)
        if kept and not self.buffer.offer_all([event.blob for event in kept]):
            # The client can retry a POST; tell it so instead of losing the events quietly.
            return json_error(503, "busy")
        for event in kept:
            self._count_recorded(event)
        if not any(event.new_visitor for event in kept):
            issued.clear()  # no visitor cookie unless a stored event carries it
        return self.visitor_ids.with_cookie(web.Response(status=204, headers=CORS_HEADERS), issued)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS_HEADERS)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining\n")
        # With a write-ahead log every event goes there first: ready only if it can write.
        wal = self.buffer.wal
        reason = None if wal is None else wal.unready_reason()
        if reason is not None:
            return web.Response(status=503, text=f"write-ahead log unavailable: {reason}\n")
        if not self.buffer.sink.healthy():
            return web.Response(status=503, text="sink unhealthy\n")
        return web.Response(text="ready\n")

    async def metrics_page(self, request: web.Request) -> web.Response:
        self.metrics.fold()
        self.metrics.buffer_events.set(len(self.buffer))
        for _ in range(METRICS_READ_TRIES):
            try:
                body = generate_latest(self.metrics.exposition)
            except (struct.error, ValueError):
                # With several workers, another one's metrics file may have just been created
                # and be empty yet: prometheus_client reads it as it is. It fills at once.
                await asyncio.sleep(METRICS_RETRY_S)
                continue
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        self.requests["metrics", "unreadable"].inc()
        return web.Response(status=503, text="metrics files are being written: try again\n")

    async def robots(self, request: web.Request) -> web.Response:
        return web.Response(body=ROBOTS_TXT, content_type="text/plain")
