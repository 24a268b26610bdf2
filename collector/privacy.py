"""Privacy before storage: IP truncation, the daily-rotating visitor id, DNT and GPC."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

MS_PER_DAY = 86_400_000
# Events nobody chose to send: dropped for DNT/GPC under the default policy.
PASSIVE_EVENT_TYPES = frozenset({"pageview", "open", "impression", "engagement"})


def anonymise_ip(ip: str, mode: str) -> str:
    """The client IP as stored: truncated to /24 (IPv4) or /48 (IPv6), whole, or empty."""
    if mode == "drop" or not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if mode == "full":
        return str(addr)
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


class VisitorHasher:
    """Cookieless visitor id: a keyed 64-bit hash of (site, full IP, user agent).

    The key is derived from the secret and the UTC day, so the same person gets a new id
    every day and ids cannot be joined across days without the secret.
    """

    __slots__ = ("_day", "_key", "_secret")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._day = -1
        self._key = b""

    def day_key(self, day: int) -> bytes:
        if day != self._day:
            self._key = hmac.new(self._secret, b"visitor-day:%d" % day, hashlib.sha256).digest()
            self._day = day
        return self._key

    def visitor_id(self, site: str, ip: str, user_agent: str, now_ms: int) -> int:
        key = self.day_key(now_ms // MS_PER_DAY)
        data = b"\0".join((site.encode(), ip.encode(), user_agent.encode("utf-8", "replace")))
        digest = hashlib.blake2b(data, key=key, digest_size=8).digest()
        return int.from_bytes(digest, "big")


def opted_out(headers: Mapping[str, str]) -> bool:
    """True when the browser sends Do-Not-Track or Global Privacy Control."""
    return headers.get("DNT") == "1" or headers.get("Sec-GPC") == "1"


def dnt_decision(policy: str, event_type: str) -> str:
    """For an opted-out request: 'drop', 'anonymous' (no visitor id) or 'record'."""
    if policy == "ignore":
        return "record"
    if policy == "all" or event_type in PASSIVE_EVENT_TYPES:
        return "drop"
    return "anonymous"
