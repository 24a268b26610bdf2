"""GET /t.js and GET /a.js: the static scripts, each read and compressed once at import.

/t.js is the web analytics snippet, /a.js the ad viewability tag. Each is the same for every
site (its settings are data-* attributes), so one cacheable response serves everyone: a
strong ETag per encoding, revalidated with a 304.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from collector.metrics import CollectorMetrics

STATIC_DIR = Path(__file__).with_name("static")
# An hour in caches; after that a revalidation costs a 304 and no body. Short enough that a
# fixed script reaches every page the same day.
MAX_AGE_S = 3600
# Whole-line comments and indentation only: anything cleverer is a minifier's job, and the
# sources keep comments on their own lines for this (collector/static/*.js say so).
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


@dataclass(frozen=True)
class Script:
    """One static script as served: its bytes and their gzip, each with its own headers."""

    path: str  # the route
    endpoint: str  # its label on beacon_requests_total{endpoint}
    body: bytes
    gzip_body: bytes
    headers: CIMultiDictProxy[str]
    gzip_headers: CIMultiDictProxy[str]

    @classmethod
    def load(cls, path: str, endpoint: str, source: Path) -> Script:
        body = strip_source(source.read_text(encoding="utf-8"))
        digest = hashlib.sha256(body).hexdigest()[:20]
        # Strong validators belong to one representation, so the gzip body has its own ETag.
        return cls(
            path=path,
            endpoint=endpoint,
            body=body,
            gzip_body=gzip.compress(body, 9, mtime=0),  # mtime 0: same bytes every start
            headers=_headers(f'"{digest}"', None),
            gzip_headers=_headers(f'"{digest}-gz"', "gzip"),
        )


SNIPPET = Script.load("/t.js", "snippet", STATIC_DIR / "t.js")
AD_TAG = Script.load("/a.js", "ad_tag", STATIC_DIR / "a.js")
SCRIPTS = (SNIPPET, AD_TAG)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when Accept-Encoding lists gzip without refusing it (q=0)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class ScriptHandler:
    """Serves one script and counts each answer on beacon_requests_total{endpoint}."""

    def __init__(self, script: Script, metrics: CollectorMetrics) -> None:
        self.script = script
        self.metrics = metrics

    async def serve(self, request: web.Request) -> web.Response:
        script = self.script
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        headers = script.gzip_headers if gzipped else script.headers
        # Weak comparison, as RFC 9110 13.1.2 asks of If-None-Match: W/"x" matches "x".
        if_none_match = request.headers.get("If-None-Match", "")
        if if_none_match and (if_none_match.strip() == "*" or headers["ETag"] in if_none_match):
            self.metrics.requests.labels(script.endpoint, "not_modified").inc()
            return web.Response(status=304, headers=headers)
        self.metrics.requests.labels(script.endpoint, "served").inc()
        return web.Response(body=script.gzip_body if gzipped else script.body, headers=headers)
