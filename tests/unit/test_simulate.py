"""The traffic simulator: the same seed gives the same traffic and truth; `beacon simulate`
sends it to a real collector on loopback and prints the truth."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from beacon.__main__ import main
from collector.simulate.plan import Config, plan
from collector.sinks.memory import MemorySink

KEYS = "k1:simulate-secret-0123456789"
SMALL = Config(seed=5, campaigns=1, recipients=40, ad_campaigns=1, ads=2, impressions=30,
               visitors=6)  # fmt: skip


def test_the_same_seed_gives_the_same_traffic_and_truth() -> None:
    phases_a, truth_a = plan(Config(seed=3), True)
    phases_b, truth_b = plan(Config(seed=3), True)
    assert repr(phases_a) == repr(phases_b)
    assert truth_a.as_dict() == truth_b.as_dict()
    assert plan(Config(seed=4), True)[1].as_dict() != truth_a.as_dict()


def test_the_truth_holds_together() -> None:
    _, truth = plan(Config(seed=9), signed=True)
    found = truth.as_dict()
    for row in found["campaigns"]:
        assert row["opens"] == row["human_opens"] + row["machine_opens"]
        assert row["unique_human_opens"] <= row["unique_opens"] <= row["opens"]
        assert row["unique_clicks"] <= row["clicks"] - row["machine_clicks"]
        if row["campaign"].startswith("sim-mail"):
            assert row["machine_opens"] > 0 and row["machine_clicks"] > 0  # a scanner at least
            assert row["sent"] == Config().recipients
    ads = Counter()
    for row in found["ads"]:
        ads[row["campaign"]] += row["conversions"]
    assert all(c["conversions"] == ads[c["campaign"]] for c in found["campaigns"]
               if c["campaign"] in ads)  # fmt: skip
    assert found["events_total"] == sum(e["events"] for e in found["events"])
    # Unsigned: conversions name their own campaign instead of a click.
    _, unsigned = plan(Config(seed=9), signed=False)
    kinds = {(e["campaign"], e["event_type"]) for e in unsigned.as_dict()["events"]}
    assert ("", "conversion") not in kinds and ("sim-mail-0", "conversion") in kinds


@pytest.mark.parametrize("signed", [True, False])
async def test_beacon_simulate_sends_every_event_and_prints_the_truth(
    make_client, capsys, signed: bool
) -> None:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(sink=sink, signing_keys=KEYS if signed else "")
    base = str(client.make_url("")).rstrip("/")
    argv = ["simulate", "--host", base, "--seed", "5", "--campaigns", "1", "--recipients", "40",
            "--impressions", "30", "--visitors", "6", "--width", "4"]  # fmt: skip
    env = {"BEACON_SIGNING_KEYS": KEYS if signed else ""}
    assert await asyncio.to_thread(main, argv, env) == 0
    truth = orjson.loads(capsys.readouterr().out)
    assert truth["signed"] is signed
    expected = plan(SMALL, signed)[1].as_dict()
    assert {k: truth[k] for k in expected} == expected
    for _ in range(100):  # the collector's buffer hands events over every few ms
        if len(sink.events()) >= truth["events_total"]:
            break
        await asyncio.sleep(0.02)
    stored = Counter((e["site"], e["campaign"], e["event_type"]) for e in sink.events())
    assert stored == {(e["site"], e["campaign"], e["event_type"]): e["events"]
                      for e in truth["events"]}  # fmt: skip
    clicks = [e for e in sink.events() if e["event_type"] == "click"]
    assert all(e["transport"] == ("redirect" if signed else "beacon") for e in clicks)


def test_beacon_simulate_says_what_went_wrong(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["simulate", "--host", "http://127.0.0.1:9", "--recipients", "2"], {}) == 1
    assert "beacon simulate:" in capsys.readouterr().err
