"""The framework floor: aiohttp + uvloop answering the pixel and doing nothing else.

    python -m loadtest.bench.apps.bare_aiohttp PORT

Same GIF, same prebuilt headers, same router and runner settings as the collector (no access
log), so the gap between this and Beacon is what Beacon's own work costs per request.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web

from collector.pixel import GIF_BYTES, PIXEL_HEADERS


async def pixel(request: web.Request) -> web.Response:
    return web.Response(body=GIF_BYTES, headers=PIXEL_HEADERS)


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/p.gif", pixel)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
