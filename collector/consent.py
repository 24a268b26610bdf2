"""Consent: what the `consent` parameter and the site's setting allow, and the visitor cookie.

Every stored row says on what basis it was kept (the `consent` column):
- `granted`: the request carried consent (`consent=1`);
- `not_required`: the site does not require consent and the request did not refuse it;
- `missing`: the site requires consent (or the request refused it) and none was given, and the
  policy keeps an aggregate count: the row is stored without anything that identifies a person.
Without consent where it is needed and with the `drop` policy, nothing is stored.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from collector.privacy import VisitorHasher
from contract.numbers import parse_uint

if TYPE_CHECKING:
    from collector.request_view import RequestView


class HasHeaders(Protocol):
    """An answer whose headers can be set: aiohttp's web.Response, kept out of this module."""

    @property
    def headers(self) -> MutableMapping[str, str]: ...


R = TypeVar("R", bound=HasHeaders)

GRANTED = "granted"
NOT_REQUIRED = "not_required"
MISSING = "missing"
DROP = "drop"

CONSENT_YES = frozenset({"1", "true", "yes", "granted"})
CONSENT_NO = frozenset({"0", "false", "no", "denied"})
# Rows kept without consent keep the hour only: millisecond times would let one visitor's
# page views be strung together again.
MS_PER_HOUR = 3_600_000
# What an aggregate row loses: every field that names or can single out a person.
IDENTIFYING_FIELDS = ("message", "recipient", "user_agent", "ip")

COOKIE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
COOKIE_DOMAIN_RE = re.compile(r"^\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\Z")
UINT64_MAX = 2**64 - 1


def parse_consent(raw: str, notes: list[str]) -> bool | None:
    """True (given), False (refused) or None (not said, or unreadable: noted)."""
    if not raw:
        return None
    value = raw.strip().lower()
    if value in CONSENT_YES:
        return True
    if value in CONSENT_NO:
        return False
    notes.append("bad_consent")
    return None


class ConsentPolicy:
    """Which sites require consent (`*`: all) and what happens to events without it."""

    __slots__ = ("_all", "_missing", "_sites")

    def __init__(self, required_sites: tuple[str, ...], missing: str) -> None:
        self._all = "*" in required_sites
        self._sites = frozenset(required_sites)
        self._missing = missing

    def basis(self, raw: str, site: str, notes: list[str]) -> str:
        """GRANTED, NOT_REQUIRED or MISSING (store without identifiers), or DROP."""
        given = parse_consent(raw, notes)
        if given:
            return GRANTED
        if given is None and not (self._all or site in self._sites):
            return NOT_REQUIRED
        # Refused, or required and not given.
        return MISSING if self._missing == "aggregate" else DROP


def strip_identifiers(row: dict[str, Any]) -> None:
    """Reduce an event row to what an aggregate count needs, in place.

    Kept: time (to the hour, set by the caller), type, site, campaign, ad, page host and path,
    utm_* parameters, the referrer's origin, value and currency, country. Dropped: ids of people,
    user agent, IP, visitor id, props (free-form: anything could be in them), order and click
    ids.
    """
    for name in IDENTIFYING_FIELDS:
        row[name] = ""
    row["visitor_id"] = 0
    row["props"] = {}
    row.pop("order_id", None)
    row.pop("click_id", None)
    if row.get("url_query"):
        kept = [(k, v) for k, v in parse_qsl(row["url_query"]) if k.startswith("utm_")]
        row["url_query"] = urlencode(kept)
    if row.get("referrer"):
        try:
            parts = urlsplit(row["referrer"])
            row["referrer"] = f"{parts.scheme}://{parts.hostname}" if parts.hostname else ""
        except ValueError:
            row["referrer"] = ""


class VisitorCookie:
    """First-party visitor id for consented events: a random 64-bit number in a cookie.

    Set only when a consented request arrives without one, and not renewed on later visits,
    so it expires `max_age_s` after it was first set (CNIL: consent cookies at most 13 months).
    """

    __slots__ = ("_attributes", "name")

    def __init__(self, name: str, domain: str, max_age_s: int, same_site: str) -> None:
        self.name = name
        # Secure and HttpOnly always: the id never travels in clear text and no page script
        # (a third-party one included) can read it.
        attributes = f"; Max-Age={max_age_s}; Path=/; Secure; HttpOnly; SameSite={same_site}"
        self._attributes = attributes + (f"; Domain={domain}" if domain else "")

    def read(self, cookies: Any, notes: list[str]) -> int:
        """The visitor id in the request's cookie; 0 when there is none or it is not ours."""
        raw = cookies.get(self.name)
        if raw is None:
            return 0
        # Only the form `header` writes: ASCII digits, no leading zero, 1 to 2**64 - 1.
        visitor_id = parse_uint(raw, UINT64_MAX, min_value=1, canonical=True)
        if visitor_id is None:
            notes.append("bad_visitor_cookie")  # then as if there were no cookie
            return 0
        return visitor_id

    @staticmethod
    def new_id() -> int:
        return int.from_bytes(os.urandom(8), "big") or 1

    def header(self, visitor_id: int) -> str:
        """The Set-Cookie value for a new id (digits only: nothing from the request)."""
        return f"{self.name}={visitor_id}{self._attributes}"


class VisitorIds:
    """Where an event's visitor id comes from: the visitor cookie (cookie mode, consented
    events) or the daily-rotating hash."""

    __slots__ = ("cookie", "hasher")

    def __init__(self, hasher: VisitorHasher, cookie: VisitorCookie | None) -> None:
        self.hasher = hasher
        self.cookie = cookie

    def pick(
        self,
        request: RequestView,
        site: str,
        full_ip: str,
        user_agent: str,
        received_ms: int,
        consented: bool,
        notes: list[str],
        issued: list[int] | None,
    ) -> tuple[int, bool]:
        """The id for one event, and whether it is the new cookie id in `issued` (made for
        this request, to be sent in its Set-Cookie if the event is stored).

        Without `issued` (an endpoint that sets no cookie) there is no point in a new id
        nobody keeps: the daily hash it is.
        """
        if self.cookie is not None and consented:
            if issued:  # an earlier event of this request made one
                return issued[0], True
            visitor_id = self.cookie.read(request.cookies, notes)
            if visitor_id:
                return visitor_id, False
            if issued is not None:
                issued.append(self.cookie.new_id())
                return issued[0], True
        return self.hasher.visitor_id(site, full_ip, user_agent, received_ms), False

    def with_cookie(self, response: R, issued: list[int]) -> R:
        """`response` with the Set-Cookie of a visitor id made for it, if one was."""
        if issued and self.cookie is not None:
            response.headers["Set-Cookie"] = self.cookie.header(issued[0])
        return response

    def set_cookie_line(self, issued: list[int]) -> bytes:
        """The same Set-Cookie as a header line, for the pixel fast path's prebuilt answer."""
        assert self.cookie is not None  # ids are only issued in cookie mode
        return f"Set-Cookie: {self.cookie.header(issued[0])}\r\n".encode()
