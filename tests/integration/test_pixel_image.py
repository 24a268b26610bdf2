"""The served pixel decoded by an independent decoder (Pillow): a 43-byte GIF, one pixel,
fully transparent, from aiohttp's route and from the fast path of a real `beacon serve`."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from loadtest.fuzz import collector
from tests.support.fastpath_corpus import UA, pixel


def assert_transparent_1x1_gif(body: bytes) -> None:
    assert len(body) == 43  # nginx's empty_gif is the same size: the smallest such GIF
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "GIF"
        assert image.size == (1, 1)
        assert getattr(image, "n_frames", 1) == 1
        rgba = image.convert("RGBA")  # applies the GIF's transparent colour index
    assert rgba.getextrema()[3] == (0, 0)  # alpha 0 everywhere: nothing shows in a mail


async def test_the_pixel_from_aiohttps_route_decodes_as_a_transparent_1x1_gif(make_client):
    client = await make_client()
    resp = await client.get("/p.gif", params={"e": "open", "s": "gif"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/gif"
    assert_transparent_1x1_gif(await resp.read())


async def read_response(port: int, request: bytes) -> tuple[bytes, bytes]:
    """One response's head and body, over a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        fields = (line.partition(": ") for line in head.decode("latin-1").split("\r\n"))
        length = next(int(v) for k, _, v in fields if k.lower() == "content-length")
        return head, await asyncio.wait_for(reader.readexactly(length), 30)
    finally:
        writer.close()


async def test_the_pixel_from_the_fast_path_decodes_as_a_transparent_1x1_gif(tmp_path: Path):
    with collector(tmp_path) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        head, body = await read_response(port, pixel("e=open&s=gif", UA))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Type: image/gif\r\n" in head
    # aiohttp names itself in a Server header; the fast path does not
    # (tests/integration/test_fastpath.py): this answer is the fast path's own copy of the bytes.
    assert b"\r\nserver:" not in head.lower()
    assert_transparent_1x1_gif(body)
