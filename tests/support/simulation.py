"""A `beacon run` fed by `beacon simulate`, whose truth the report tests compare with."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from collector.signing import Keyring
from collector.simulate import Config, Truth, send
from tests.support.beacon_run import Beacon

SECRET = "sim-secret-0123456789abcdef"


TOKEN = "dashboard-token-0123456789abcdef"


class AnalyticsBeacon(Beacon):
    """`beacon run` with a signing key (clicks through /c) and a dashboard token, that takes
    the client address from X-Forwarded-For (one proxy in front): each simulated web visitor
    comes from an address of their own."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "BEACON_SIGNING_KEYS": f"k1:{SECRET}",
            "BEACON_DASHBOARD_TOKEN": TOKEN,
            "BEACON_FORWARDED_HEADER": "X-Forwarded-For",
            "BEACON_FORWARDED_TRUSTED_HOPS": "1",
        }


async def send_simulation(beacon: Beacon, config: Config) -> tuple[Truth, dict[str, Any]]:
    """Simulate, then wait until the store holds every event the truth counts; the truth,
    and as `beacon simulate` prints it."""
    truth, requests = await send(beacon.base, config, Keyring([("k1", SECRET.encode())]))
    printed = {"config": asdict(config), "signed": True, "requests": requests, **truth.as_dict()}
    deadline = time.monotonic() + 90
    while True:
        stored = int(await asyncio.to_thread(beacon.query, "SELECT count() FROM beacon.events"))
        if stored >= printed["events_total"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    final = beacon.query("SELECT count() FROM beacon.events FINAL")
    assert int(final) == printed["events_total"]
    return truth, printed


async def run_simulation(beacon: Beacon, seed: int) -> dict[str, Any]:
    """The default mix for `seed`; the truth as `beacon simulate` prints it."""
    return (await send_simulation(beacon, Config(seed=seed)))[1]
