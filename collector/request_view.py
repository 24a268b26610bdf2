"""What the event path reads of a request: aiohttp's web.Request, or the fast path's view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from multidict import CIMultiDictProxy, MultiMapping


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """Browsers mark speculative loads; nobody has seen the page or the mail yet."""
    purpose = headers.get("Sec-Purpose") or headers.get("Purpose") or ""
    return "prefetch" in purpose


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
