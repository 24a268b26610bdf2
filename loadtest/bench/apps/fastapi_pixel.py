"""What a Python team would write instead: FastAPI on uvicorn (uvloop + httptools).

python -m uvicorn loadtest.bench.apps.fastapi_pixel:app --port PORT --no-access-log ...
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from collector.pixel import GIF_BYTES, NO_CACHE

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/p.gif")
async def pixel() -> Response:
    return Response(content=GIF_BYTES, media_type="image/gif", headers=NO_CACHE)
