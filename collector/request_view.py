"""What the event path reads of a request: aiohttp's web.Request, or the fast path's view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from multidict import CIMultiDictProxy, MultiMapping

PREFETCH = "prefetch"
PRERENDER = "prerender"
PREVIEW = "preview"
PURPOSES = (PREFETCH, PRERENDER, PREVIEW)  # the values of the wire field `purpose`


def purpose(headers: Mapping[str, str]) -> str:
    """What a speculative request says it is ("" for a plain one): nobody has seen the page,
    the mail or the ad yet, and may never.

    Chromium sends `Sec-Purpose: prefetch` and for a prerender `prefetch;prerender` (older
    versions `Purpose:`), Firefox `X-Moz: prefetch`, Safari's previews `X-Purpose: preview`
    (docs/tracking.md "Event format"). A prerender is a prefetch too: it is named first.
    """
    sec_purpose = headers.get("Sec-Purpose", "")
    old_purpose = headers.get("Purpose", "")
    moz = headers.get("X-Moz", "")
    x_purpose = headers.get("X-Purpose", "")
    if not (sec_purpose or old_purpose or moz or x_purpose):
        return ""  # nearly every request: four lookups and no string work
    said = f"{sec_purpose},{old_purpose}".lower()
    if PRERENDER in said:
        return PRERENDER
    if PREFETCH in said or PREFETCH in moz.lower():
        return PREFETCH
    if PREVIEW in f"{x_purpose},{old_purpose}".lower():
        return PREVIEW
    return ""


class RequestView(Protocol):
    """What the event path reads of a request: aiohttp's web.Request, or the fast path's."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def query(self) -> MultiMapping[str]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...
