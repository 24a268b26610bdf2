"""Signed open pixels and conversion fields through a real server on loopback."""

from __future__ import annotations

import orjson
import pytest

from collector.pixel import GIF_BYTES
from collector.signing import Keyring
from collector.sinks.memory import MemorySink
from collector.urls import pixel_url
from tests.support.helpers import metric_value

KEYS = "k1:pixel-secret-0123456789abcdef"
KEYRING = Keyring([("k1", b"pixel-secret-0123456789abcdef")])
CLICK_ID = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def open_url(**ids: str) -> str:
    ids = {"site": "shop", "campaign": "spring", "message": "m-1", "recipient": "u-77", **ids}
    return pixel_url("", KEYRING, "open", **ids)


async def test_a_signed_open_is_verified(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS)
    resp = await client.get(open_url() + "&cb=123")  # a cache buster does not break it
    assert resp.status == 200 and await resp.read() == GIF_BYTES
    await client.close()
    [event] = sink.events()
    assert event["verified"] == 1 and event["recipient"] == "u-77"
    assert event["schema_version"] == 2
    labels = {"endpoint": "pixel", "outcome": "valid"}
    assert metric_value(metrics, "beacon_signature_checks_total", **labels) == 1


async def test_unsigned_and_altered_opens_are_recorded_unverified_by_default(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS)
    await client.get("/p.gif?e=open&s=shop&c=spring&m=m-1&r=u-77")
    guessed = open_url().replace("r=u-77", "r=u-78")  # enumerating another recipient
    await client.get(guessed)
    await client.close()
    assert [e["verified"] for e in sink.events()] == [0, 0]
    check = "beacon_signature_checks_total"
    assert metric_value(metrics, check, endpoint="pixel", outcome="unsigned") == 1
    assert metric_value(metrics, check, endpoint="pixel", outcome="bad_signature") == 1


async def test_the_drop_policy_records_only_verified_opens_and_counts_the_rest(
    make_client, metrics
):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS, signature_policy="drop")
    for url in (
        "/p.gif?e=open&s=shop&r=u-77",
        open_url().replace("r=u-77", "r=u-78"),
        open_url().replace("sig=k1.", "sig=k2."),
        open_url(),
    ):
        resp = await client.get(url)
        assert resp.status == 200 and await resp.read() == GIF_BYTES  # the pixel, always
    await client.close()
    [event] = sink.events()
    assert event["verified"] == 1 and event["recipient"] == "u-77"
    assert metric_value(metrics, "beacon_events_dropped_total", reason="unsigned") == 1
    assert metric_value(metrics, "beacon_events_dropped_total", reason="bad_signature") == 2


async def test_without_keys_every_event_is_unverified(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    await client.get(open_url())
    await client.close()
    assert sink.events()[0]["verified"] == 0


async def test_a_conversion_pixel_carries_value_currency_order_and_click_id(make_client):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS)
    url = pixel_url(
        "",
        KEYRING,
        "conversion",
        site="shop",
        value="49.90",
        currency="eur",
        order_id="o-1",
        click_id=CLICK_ID,
    )
    await client.get(url)
    await client.get("/p.gif?e=pageview&s=shop")
    await client.close()
    conversion, pageview = sink.events()
    assert conversion["verified"] == 1
    assert (conversion["value"], conversion["currency"]) == ("49.90", "EUR")
    assert (conversion["order_id"], conversion["click_id"]) == ("o-1", CLICK_ID)
    # Fields an event does not have stay off the wire; the columns' defaults apply.
    assert not {"value", "currency", "order_id", "click_id"} & set(pageview)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("v=abc&cur=EUR", "bad_value"),
        ("v=-5&cur=EUR", "bad_value"),
        ("v=NaN&cur=EUR", "bad_value"),
        ("v=1e20&cur=EUR", "bad_value"),
        ("v=1.23456&cur=EUR", "bad_value"),  # more decimals than Decimal(18, 4) keeps
        ("v=10&cur=EURO", "bad_currency"),
        ("v=10&cur=E1R", "bad_currency"),
        ("o=" + "x" * 300, "order_id_too_long"),
    ],
)
async def test_bad_conversion_input_is_dropped_and_counted(make_client, metrics, query, reason):
    sink = MemorySink()
    client = await make_client(sink)
    resp = await client.get(f"/p.gif?e=conversion&s=shop&{query}")
    assert resp.status == 200
    await client.close()
    assert sink.events() == []
    assert metric_value(metrics, "beacon_events_dropped_total", reason=reason) == 1


async def test_a_mangled_click_id_keeps_the_conversion_without_it(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    await client.get("/p.gif?e=conversion&s=shop&v=10&cur=USD&o=o-2&bcid=not-a-click-id")
    await client.close()
    [event] = sink.events()
    assert "click_id" not in event and event["order_id"] == "o-2"
    assert metric_value(metrics, "beacon_input_fixed_total", reason="bad_click_id") == 1


async def test_post_events_take_a_numeric_value_and_send_events(make_client):
    sink = MemorySink()
    client = await make_client(sink)
    batch = [
        {"e": "conversion", "s": "shop", "v": 12.5, "cur": "EUR", "o": "o-3"},
        {"e": "send", "s": "shop", "c": "spring", "m": "m-1", "r": "u-77"},
    ]
    resp = await client.post(
        "/e", data=orjson.dumps(batch), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 204
    await client.close()
    conversion, send = sink.events()
    assert conversion["value"] == "12.5" and send["event_type"] == "send"


@pytest.mark.parametrize(
    ("raw", "wire"),
    [("49.90", "49.90"), ("100", "100"), ("007.50", "7.50"), ("0", "0"), ("0.0001", "0.0001")],
)
def test_values_go_on_the_wire_as_plain_exact_decimals(raw, wire):
    from collector.event import conversion_fields

    assert conversion_fields({"v": raw}, []) == {"value": wire}
