"""Where a click redirect may send a reader: an absolute http(s) URL to a plain host name,
checked as a browser will read it (CWE-601)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

CLICK_PATH = "/c"  # the click redirect, whose signature covers this path
MAX_DESTINATION_CHARS = 2000

# The destination as a browser will read it: scheme, "//", then the authority. Anything that
# browsers repair or reinterpret (backslashes, tabs, CR/LF, missing slashes, spaces, non-ASCII
# look-alikes such as U+3002 or U+FF0F) is refused rather than normalised, since any normalisation
# here that differs from the browser's is exactly what the known bypasses exploit.
PORT_SUFFIX_RE = re.compile(r"^:\d*\Z")
SCHEME_RE = re.compile(r"^https?://", re.IGNORECASE)
PRINTABLE_ASCII_RE = re.compile(r"^[\x21-\x7e]+\Z")
HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"  # labels, RFC 1123
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?\Z"
    r"|^\[[0-9A-Fa-f:.]+\]\Z"  # an IPv6 literal
)


# Every reason check_destination gives: the labels of beacon_click_refused_total.
REFUSALS = ("no_destination", "destination_too_long", "bad_character", "backslash", "bad_scheme",
            "bad_url", "userinfo", "bad_host")  # fmt: skip


def check_destination(url: str) -> str:
    """ "" when `url` is a safe absolute http(s) destination, else the reason it is not."""
    if not url:
        return "no_destination"
    if len(url) > MAX_DESTINATION_CHARS:
        return "destination_too_long"
    if not PRINTABLE_ASCII_RE.match(url):
        return "bad_character"  # CR/LF, tabs, spaces, NUL, unicode look-alikes
    if "\\" in url:
        return "backslash"  # browsers read "\" as "/": https:\\evil, https://good\@evil
    if not SCHEME_RE.match(url):
        return "bad_scheme"  # javascript:, data:, //evil, /\evil, https:evil
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return "bad_url"
    if "@" in parts.netloc:
        return "userinfo"  # https://good.example@evil.example
    if not HOST_RE.match(host_of(parts.netloc)):
        return "bad_host"  # empty, percent-encoded or otherwise not a plain host name
    return ""


def host_of(netloc: str) -> str:
    """The host part of an authority without userinfo: drop the port, keep IPv6 brackets."""
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        if rest and not PORT_SUFFIX_RE.match(rest):
            return ""  # "[::1]=": urlsplit takes no port from it, browsers refuse the URL
        return host + "]"
    return netloc.partition(":")[0]
