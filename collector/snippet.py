"""GET /t.js: the web analytics snippet, read and compressed once at import.

The script is the same for every site (its settings are data-* attributes on the script tag),
so one cacheable response serves everyone: a strong ETag per encoding, revalidated with a 304.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from collector.metrics import CollectorMetrics

PATH = "/t.js"
SOURCE_PATH = Path(__file__).with_name("static") / "t.js"
# An hour in caches; after that a revalidation costs a 304 and no body. Short enough that a
# fixed snippet reaches every page the same day.
MAX_AGE_S = 3600
# Whole-line comments and indentation only: anything cleverer is a minifier's job, and the
# source keeps comments on their own lines for this (collector/static/t.js says so).
COMMENT_LINE_RE = re.compile(r"^\s*//.*\n", re.MULTILINE)
INDENT_RE = re.compile(r"^[ \t]+", re.MULTILINE)


def strip_source(source: str) -> bytes:
    """The served script: the source without whole-line comments and indentation."""
    return INDENT_RE.sub("", COMMENT_LINE_RE.sub("", source)).encode()


def _headers(etag: str, encoding: str | None) -> CIMultiDictProxy[str]:
    headers = CIMultiDict(
        {
            "Content-Type": "application/javascript; charset=utf-8",
            "Cache-Control": f"public, max-age={MAX_AGE_S}",
            "ETag": etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
            # Loaded from every site's pages: allowed under their COEP, and with crossorigin=
            # (Subresource Integrity) readable by them.
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Access-Control-Allow-Origin": "*",
        }
    )
    if encoding:
        headers["Content-Encoding"] = encoding
    return CIMultiDictProxy(headers)


SCRIPT_BYTES = strip_source(SOURCE_PATH.read_text(encoding="utf-8"))
SCRIPT_GZIP = gzip.compress(SCRIPT_BYTES, 9, mtime=0)  # mtime 0: same bytes every start
_DIGEST = hashlib.sha256(SCRIPT_BYTES).hexdigest()[:20]
# Strong validators belong to one representation, so the gzip body has its own ETag.
ETAG = f'"{_DIGEST}"'
ETAG_GZIP = f'"{_DIGEST}-gz"'
HEADERS = _headers(ETAG, None)
HEADERS_GZIP = _headers(ETAG_GZIP, "gzip")


def accepts_gzip(accept_encoding: str) -> bool:
    """True when Accept-Encoding lists gzip without refusing it (q=0)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class SnippetHandler:
    """Serves the snippet and counts each answer on beacon_requests_total{endpoint="snippet"}."""

    def __init__(self, metrics: CollectorMetrics) -> None:
        self.metrics = metrics

    async def script(self, request: web.Request) -> web.Response:
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        headers = HEADERS_GZIP if gzipped else HEADERS
        # Weak comparison, as RFC 9110 13.1.2 asks of If-None-Match: W/"x" matches "x".
        if_none_match = request.headers.get("If-None-Match", "")
        if if_none_match and (if_none_match.strip() == "*" or headers["ETag"] in if_none_match):
            self.metrics.requests.labels("snippet", "not_modified").inc()
            return web.Response(status=304, headers=headers)
        self.metrics.requests.labels("snippet", "served").inc()
        return web.Response(body=SCRIPT_GZIP if gzipped else SCRIPT_BYTES, headers=headers)
