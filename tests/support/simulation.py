"""A `beacon run` fed by `beacon simulate`, whose truth the report tests compare with."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from collector.signing import Keyring
from collector.simulate import Config, simulate
from tests.support.beacon_run import Beacon

SECRET = "sim-secret-0123456789abcdef"


TOKEN = "dashboard-token-0123456789abcdef"


class AnalyticsBeacon(Beacon):
    """`beacon run` with a signing key (clicks through /c) and a dashboard token."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "BEACON_SIGNING_KEYS": f"k1:{SECRET}",
            "BEACON_DASHBOARD_TOKEN": TOKEN,
        }


async def run_simulation(beacon: Beacon, seed: int) -> dict[str, Any]:
    """Simulate, then wait until the store holds every event the truth counts."""
    truth = await simulate(beacon.base, Config(seed=seed), Keyring([("k1", SECRET.encode())]))
    deadline = time.monotonic() + 90
    while True:
        stored = int(await asyncio.to_thread(beacon.query, "SELECT count() FROM beacon.events"))
        if stored >= truth["events_total"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    final = beacon.query("SELECT count() FROM beacon.events FINAL")
    assert int(final) == truth["events_total"]
    return truth
