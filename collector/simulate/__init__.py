"""`beacon simulate`: a known mix of traffic, the same for the same seed, sent to a collector.

Email campaigns (sends, human, proxied, Apple MPP, bot and scanner opens, clicks, orders),
ad campaigns (impressions, clicks, orders; the /a.js tag's measured, unmeasured and viewable
impressions; invalid traffic: a crawler's, a cloud server's and prefetched impressions, a link
checker's, a cloud server's and duplicate clicks) and web sites (visitors from many countries
and devices, visits of several pages with engagement, sources with UTM, goals; a crawler) go to
a collector over real HTTP; the ground truth comes back in the shape of
`beacon report --format json`, so reports can be checked number by number.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import aiohttp

from collector.signing import Keyring
from collector.simulate.plan import Config, plan
from collector.simulate.send import Sender
from collector.simulate.truth import Truth

__all__ = ["Config", "Truth", "send", "simulate"]


async def send(base: str, config: Config, keyring: Keyring, width: int = 16) -> tuple[Truth, int]:
    """Send the mix for `config` to the collector at `base`; returns the ground truth (with
    when each visit began) and the number of requests.

    Signed URLs when `keyring` has a key (the collector's own keys): clicks then go through
    the /c redirect and orders name their click."""
    phases, truth = plan(config, signed=bool(keyring))
    connector = aiohttp.TCPConnector(limit=width)
    async with aiohttp.ClientSession(connector=connector) as http:
        sender = Sender(http, base, keyring)
        for scripts in phases:
            await sender.run(scripts, width)
    truth.web.started.update(sender.marks)
    return truth, sender.requests


async def simulate(base: str, config: Config, keyring: Keyring, width: int = 16) -> dict[str, Any]:
    """`send`, with the ground truth as `beacon simulate` prints it."""
    truth, requests = await send(base, config, keyring, width)
    return {"config": asdict(config), "signed": bool(keyring), "requests": requests,
            **truth.as_dict()}  # fmt: skip
