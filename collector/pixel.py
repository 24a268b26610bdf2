"""Bytes and headers every response reuses, built once at import."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

# The smallest transparent 1x1 GIF89a: the same 43 bytes nginx's empty_gif serves.
GIF_BYTES = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
assert len(GIF_BYTES) == 43


NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
PIXEL_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "image/gif", **NO_CACHE}))

CORS_HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            # No credentials: a wildcard origin is what lets every site post events.
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
        }
    )
)

ROBOTS_TXT = b"User-agent: *\nDisallow: /\n"
