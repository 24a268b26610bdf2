"""Countries end to end: pixels through `beacon run` behind a trusted proxy header, their
country looked up from the whole address and stored in chDB, whatever BEACON_IP_MODE keeps."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.beacon_run import Beacon, wait_for_rows

# Addresses and the country the pinned data gives them (tests/unit/test_geo.py has more).
SENT = (
    ("v4", "81.2.69.142", "GB"),
    ("v6", "2a03:2880:f12f:83:face:b00c:0:25de", "IE"),
    ("private", "192.168.1.1", ""),  # the data says AU: no client comes from there
    # Amazon AWS: its event carries `network` too (tests/unit/test_networks.py), and is stored
    # like any other.
    ("cloud", "52.95.110.1", "US"),
)
STORED_IP = {
    "truncate": {"v4": "81.2.69.0", "v6": "2a03:2880:f12f::", "private": "192.168.1.0",
                 "cloud": "52.95.110.0"},
    "full": {"v4": "81.2.69.142", "v6": "2a03:2880:f12f:83:face:b00c:0:25de",
             "private": "192.168.1.1", "cloud": "52.95.110.1"},
    "drop": {"v4": "", "v6": "", "private": "", "cloud": ""},
}  # fmt: skip


async def send(base: str) -> int:
    """Pixels on one keep-alive connection (the fast path answers them), then a POST /e on it
    (handed to aiohttp): each from its own client address in X-Forwarded-For."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for site, ip, _ in SENT:
            # The client's own claim first, the proxy's last: the proxy's word counts.
            headers = {"X-Forwarded-For": f"8.8.8.8, {ip}"}
            async with http.get(f"{base}/p.gif?s={site}", headers=headers) as r:
                assert r.status == 200
        headers = {"X-Forwarded-For": SENT[0][1], "Content-Type": "application/json"}
        async with http.post(f"{base}/e", data=orjson.dumps({"s": "post"}), headers=headers) as r:
            assert r.status == 204
    return len(SENT) + 1


def stored(beacon: Beacon) -> dict[str, dict[str, str]]:
    rows = beacon.query("SELECT site, country, ip FROM beacon.events", "JSONEachRow")
    return {r["site"]: r for r in map(orjson.loads, rows.splitlines())}


@pytest.mark.parametrize("ip_mode", ["truncate", "full", "drop"])
async def test_the_country_of_the_forwarded_address_is_stored_in_every_ip_mode(
    tmp_path: Path, ip_mode: str
) -> None:
    env = {"BEACON_IP_MODE": ip_mode, "BEACON_FORWARDED_HEADER": "X-Forwarded-For"}
    with Beacon(tmp_path / "data", env) as beacon:
        sent = await send(beacon.base)
        assert await wait_for_rows(beacon, sent) == sent
        rows = stored(beacon)
        assert beacon.stop() == 0
    assert {site: r["country"] for site, r in rows.items()} == {
        **{site: country for site, _, country in SENT},
        "post": "GB",
    }
    assert {site: rows[site]["ip"] for site, _, _ in SENT} == STORED_IP[ip_mode]


async def test_without_its_data_each_collector_runs_and_says_so_once(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    env = {"BEACON_GEO_DB": str(missing), "BEACON_FORWARDED_HEADER": "X-Forwarded-For"}
    with Beacon(tmp_path / "data", env) as beacon:
        sent = await send(beacon.base)
        assert await wait_for_rows(beacon, sent) == sent
        rows = stored(beacon)
        assert beacon.stop() == 0
        log = beacon.log_path.read_text()
    assert {r["country"] for r in rows.values()} == {""}
    # One line at the start of each collector process (`beacon run` starts one per CPU).
    warnings = [line for line in log.splitlines() if "no country data" in line]
    started = [line for line in log.splitlines() if "collector listening" in line]
    assert len(warnings) == len(started) >= 1, log
    assert all(str(missing) in line for line in warnings)
