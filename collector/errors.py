"""The short JSON error answers of the collector's endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from collector.pixel import CORS_HEADERS

JSON_ERROR_HEADERS = CIMultiDict({**CORS_HEADERS, "Content-Type": "application/json"})


def json_error(status: int, reason: str, **extra: Any) -> web.Response:
    body = orjson.dumps({"error": reason, **extra})
    return web.Response(status=status, body=body, headers=JSON_ERROR_HEADERS)
