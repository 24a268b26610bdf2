"""Send a simulation's scripts to a collector over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import orjson

from collector.signing import Keyring
from collector.simulate.steps import Script, Step
from collector.urls import click_url, pixel_url

PIXEL_BYTES = 43
PAGE_VIEW_SPACING_S = 0.002


class SendError(Exception):
    """The collector answered a request otherwise than it must."""


class Sender:
    """Runs scripts `width` at a time; each script's steps in order.

    A step's address goes as `X-Forwarded-For`, which the collector believes when it trusts
    that header (BEACON_FORWARDED_HEADER) with one hop: as from a proxy in front of it."""

    def __init__(self, http: aiohttp.ClientSession, base: str, keyring: Keyring) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.keyring = keyring
        self.requests = 0
        # When each marked step (a visit's first request) went: wall-clock seconds just
        # before it was sent and once it was answered; the collector stamped it in between.
        self.marks: dict[str, tuple[float, float]] = {}

    async def run(self, scripts: Sequence[Script], width: int = 16) -> None:
        queue: asyncio.Queue[Script] = asyncio.Queue()
        for script in scripts:
            queue.put_nowait(script)

        async def worker() -> None:
            while not queue.empty():
                await self.script(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(width)))

    async def script(self, steps: Script) -> None:
        click_id = ""
        for step in steps:
            before = time.time()
            headers = {"User-Agent": step.ua, **step.headers}
            if step.ip:
                headers["X-Forwarded-For"] = step.ip
            if step.kind == "pixel":
                if not step.params.get("kind"):
                    # A page view: events keep millisecond times, and ids within one
                    # millisecond sort at random, so a page view in the same millisecond as
                    # the one before could be taken for the visit's first. No person clicks
                    # that fast.
                    await asyncio.sleep(PAGE_VIEW_SPACING_S)
                await self.pixel(self.pixel_url(step.params), headers)
            elif step.kind == "post":
                await self.post(step.params["events"], headers)
            elif step.kind == "click":
                click_id = await self.click(step.params, headers)
            elif step.kind == "convert":
                await self.pixel(self.conversion_url(step.params, click_id), headers)
            elif step.kind == "pause":
                await asyncio.sleep(step.params["seconds"])
            else:
                raise ValueError(f"unknown step {step.kind!r}")
            self.mark(step, before)

    def mark(self, step: Step, before: float) -> None:
        if step.mark:
            self.marks[step.mark] = (before, time.time())

    def pixel_url(self, params: dict[str, Any]) -> str:
        if not params["kind"]:  # a page view: unsigned, as a page's own tag sends it
            query = {k: v for k, v in params.items() if k != "kind" and v}
            return f"{self.base}/p.gif?{urlencode(query)}"
        ids = {k: params[k] for k in ("site", "campaign", "message", "recipient", "ad")
               if k in params}  # fmt: skip
        url = pixel_url(self.base, self.keyring or None, params["kind"], **ids)
        return f"{url}&cb={params['cb']}" if "cb" in params else url  # an ad server's buster

    def conversion_url(self, params: dict[str, Any], click_id: str) -> str:
        """With a click id, the pixel names only the order and the click (attribution finds
        the campaign); without one, its own campaign and ad."""
        order = {k: params[k] for k in ("site", "value", "currency", "order_id")}
        if click_id:
            return pixel_url(self.base, self.keyring, "conversion", click_id=click_id, **order)
        own = {"campaign": params["campaign"], "ad": params["ad"]}
        return pixel_url(self.base, self.keyring or None, "conversion", **order, **own)

    async def pixel(self, url: str, headers: dict[str, str]) -> None:
        self.requests += 1
        async with self.http.get(url, headers=headers) as r:
            body = await r.read()
            if r.status != 200 or len(body) != PIXEL_BYTES:
                raise SendError(f"GET {url}: {r.status}, {len(body)} bytes")

    async def post(self, events: list[dict[str, Any]], headers: dict[str, str]) -> None:
        self.requests += 1
        headers = {**headers, "Content-Type": "application/json"}
        async with self.http.post(
            f"{self.base}/e", data=orjson.dumps(events), headers=headers
        ) as r:
            if r.status != 204:
                raise SendError(f"POST /e: {r.status} {await r.text()}")

    async def click(self, params: dict[str, str], headers: dict[str, str]) -> str:
        """A click on a tracked link; returns the click id the landing page would get."""
        ids = {k: v for k, v in params.items() if k != "dest"}
        if not self.keyring:  # no /c without a key: the click is reported as an event
            event = {"e": "click", "s": ids["site"], "c": ids["campaign"], "u": params["dest"],
                     "m": ids.get("message", ""), "r": ids.get("recipient", ""),
                     "ad": ids.get("ad", "")}  # fmt: skip
            await self.post([{k: v for k, v in event.items() if v}], headers)
            return ""
        self.requests += 1
        url = click_url(
            self.base, self.keyring, params["dest"], site=ids["site"], campaign=ids["campaign"],
            message=ids.get("message", ""), recipient=ids.get("recipient", ""),
            ad=ids.get("ad", ""),
        )  # fmt: skip
        async with self.http.get(url, headers=headers, allow_redirects=False) as r:
            if r.status != 302:
                raise SendError(f"GET /c: {r.status} {await r.text()}")
            landing = urlsplit(r.headers["Location"])
        return dict(parse_qsl(landing.query)).get("bcid", "")
