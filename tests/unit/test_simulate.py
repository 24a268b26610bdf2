"""The traffic simulator: the same seed gives the same traffic and truth; `beacon simulate`
sends it to a real collector on loopback and prints the truth."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter, defaultdict

import orjson
import pytest

from beacon.__main__ import main
from collector.simulate.ad_tag import RULES
from collector.simulate.invalid import CRAWLER as AD_CRAWLER
from collector.simulate.invalid import DATA_CENTER_IP
from collector.simulate.plan import BOT, Config, plan
from collector.simulate.steps import Script, Step
from collector.simulate.truth import Truth
from collector.simulate.visits import Visit, WebTruth
from collector.simulate.web import CRAWLER
from collector.sinks.memory import MemorySink
from tests.support.helpers import clear_of_midnight

KEYS = "k1:simulate-secret-0123456789"
# Room before midnight UTC for the simulation's traffic, which takes seconds: the collector
# rotates visitor ids at midnight, and each visitor must have one.
TRAFFIC_S = 60
SMALL = Config(seed=5, campaigns=1, recipients=40, ad_campaigns=1, ads=2, impressions=30,
               visitors=12, return_rate=0.3, visit_gap_s=0.2)  # fmt: skip


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
    client = await make_client(
        sink=sink, signing_keys=KEYS if signed else "", forwarded_header="X-Forwarded-For"
    )
    base = str(client.make_url("")).rstrip("/")
    argv = ["simulate", "--host", base, "--seed", "5", "--campaigns", "1", "--recipients", "40",
            "--impressions", "30", "--visitors", "12", "--return-rate", "0.3",
            "--visit-gap-s", "0.2", "--width", "4"]  # fmt: skip
    env = {"BEACON_SIGNING_KEYS": KEYS if signed else ""}
    await clear_of_midnight(TRAFFIC_S)
    assert await asyncio.to_thread(main, argv, env) == 0
    truth = orjson.loads(capsys.readouterr().out)
    assert truth["signed"] is signed
    expected = plan(SMALL, signed)[1].as_dict()
    assert {k: truth[k] for k in expected} == expected
    deadline = time.monotonic() + 30  # the collector's buffer hands events over every few ms
    while len(sink.events()) < truth["events_total"]:
        assert time.monotonic() < deadline, "the buffer never handed every event over"
        await asyncio.sleep(0.02)
    stored = Counter((e["site"], e["campaign"], e["event_type"]) for e in sink.events())
    assert stored == {(e["site"], e["campaign"], e["event_type"]): e["events"]
                      for e in truth["events"]}  # fmt: skip
    clicks = [e for e in sink.events() if e["event_type"] == "click"]
    assert all(e["transport"] == ("redirect" if signed else "beacon") for e in clicks)
    # Each web visitor's own address reached the collector: one visitor id each.
    for row in truth["sites"]:
        views = [e for e in sink.events()
                 if e["site"] == row["site"] and e["event_type"] == "pageview"]  # fmt: skip
        if views:
            assert len({e["visitor_id"] for e in views}) == row["unique_visitors"]
    addresses = {e["ip"] for e in sink.events() if e["site"] == "sim-blog"}
    assert {"10.1.0.0", "2a02:8100::"} <= addresses  # truncated, as stored
    # The tag's events arrived with their properties: as many measured ones as the truth says
    # (valid ones), and those of the sessions from the cloud server.
    tagged = [e for e in sink.events() if e["event_type"] == "impression"]
    measured = [e for e in tagged if e["props"].get("measured") == "1"]
    cloud_sessions = SMALL.ad_campaigns * SMALL.ads * SMALL.data_center_tag_impressions
    assert len(measured) == sum(a["measured_impressions"] for a in truth["ads"]) + cloud_sessions
    # Every request the plan sends from the cloud server's address came from there: pixels,
    # clicks and the tag's events alike (each one event; stored truncated to /24).
    phases, _ = plan(SMALL, signed)
    cloud = [s for script in phases[1] for s in script if s.ip == DATA_CENTER_IP]
    assert {s.kind for s in cloud} == {"pixel", "click", "post"}
    assert sum(e["ip"] == "52.95.110.0" for e in sink.events()) == len(cloud)


def test_beacon_simulate_says_what_went_wrong(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["simulate", "--host", "http://127.0.0.1:9", "--recipients", "2"], {}) == 1
    assert "beacon simulate:" in capsys.readouterr().err


# -- the ad tag's measured impressions ----------------------------------------------------

TAGGED = Config(seed=11, campaigns=0, ad_campaigns=1, ads=2, impressions=10, tag_impressions=8,
                unmeasured_share=0.25, viewable_rate=0.7, visitors=0)  # fmt: skip


def tag_events(phases: list[list[Script]], ip: str = "") -> list[list[dict]]:
    """The events of each script that POSTs the ad tag's impressions, in order; from
    address `ip` ("": the browsers')."""
    found = []
    for script in phases[1]:
        sent = [e for s in script if s.kind == "post" for e in s.params["events"]]
        if sent and sent[0]["e"] == "impression" and script[0].ip == ip:
            found.append(sent)
    return found


def test_the_ad_tag_truth_worked_out_by_hand() -> None:
    _, truth = plan(TAGGED, signed=True)
    found = truth.as_dict()
    # Per ad, valid: 10 ad-server pixels and 8 tag impressions; round(8 x 0.25) = 2 of these
    # unmeasured, 6 measured, round(6 x 0.7) = 4 viewable; 1 person's click of
    # round(10 x 0.06) = 1. Invalid (the default amounts): 3 pixels of a crawler, 3 of the
    # cloud server and 2 tag sessions there (measured, viewable), 3 prefetched: 11; the
    # clicker clicks twice (1 duplicate), the link checker's and the cloud server's click: 3.
    per_ad = {"impressions": 18, "invalid_impressions": 11, "measured_impressions": 6,
              "viewable_impressions": 4, "viewability_rate": 0.6667, "clicks": 1,
              "machine_clicks": 0, "unique_clicks": 1, "invalid_clicks": 3,
              "ctr": round(1 / 18, 4)}  # fmt: skip
    assert [{k: r[k] for k in ("campaign", "ad", *per_ad)} for r in found["ads"]] == [
        {"campaign": "sim-ads-0", "ad": f"banner-{k}", **per_ad} for k in (0, 1)
    ]
    [campaign] = found["campaigns"]
    assert {k: campaign[k] for k in per_ad} == {
        "impressions": 36, "invalid_impressions": 22, "measured_impressions": 12,
        "viewable_impressions": 8, "viewability_rate": 0.6667, "clicks": 2, "machine_clicks": 0,
        "unique_clicks": 2, "invalid_clicks": 6, "ctr": 0.0556,
    }  # fmt: skip
    ivt = [("click", "crawler", 1), ("click", "data_center", 1), ("click", "duplicate_click", 1),
           ("impression", "crawler", 3), ("impression", "data_center", 5),
           ("impression", "prefetch", 3), ("viewable", "data_center", 2)]  # fmt: skip
    assert found["ivt"] == [
        {"campaign": "sim-ads-0", "ad": f"banner-{k}", "event_type": t, "reason": r, "events": n}
        for k in (0, 1)
        for t, r, n in ivt
    ]
    # Every event is stored, invalid or not.
    events = {(e["site"], e["campaign"], e["event_type"]): e["events"] for e in found["events"]}
    assert events["sim-news", "sim-ads-0", "impression"] == 2 * (18 + 11)
    assert events["sim-news", "sim-ads-0", "viewable"] == 2 * (4 + 2)
    assert events["sim-news", "sim-ads-0", "click"] == 2 * (1 + 3)
    assert found["events_total"] == sum(events.values())
    # Nothing measured: no rate, as the reports say it.
    _, none = plan(Config(**{**vars(TAGGED), "unmeasured_share": 1.0}), signed=True)
    assert {(r["measured_impressions"], r["viewable_impressions"], r["viewability_rate"])
            for r in none.as_dict()["ads"]} == {(0, 0, None)}  # fmt: skip
    with pytest.raises(ValueError, match="viewable_rate"):
        plan(Config(**{**vars(TAGGED), "viewable_rate": 1.5}), signed=True)


def test_the_ad_tag_truth_equals_a_count_of_what_the_plan_sends() -> None:
    config = Config(seed=12, campaigns=0, ad_campaigns=2, ads=3, impressions=5, visitors=0)
    phases, truth = plan(config, signed=True)
    counted: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    kinds = set()
    for session in tag_events(phases, DATA_CENTER_IP):  # a program that sees every slot
        assert [e["e"] for e in session] == ["impression", "viewable"]
        assert session[0]["p"]["measured"] == "1"
        counted[session[0]["c"], session[0]["ad"]]["cloud"] += 1
    for session in tag_events(phases):
        shown, *seen = session
        ids = {k: shown[k] for k in ("s", "c", "ad", "u")}
        assert ids["s"] == "sim-news" and ids["u"].startswith("https://news.sim.example/")
        assert set(shown["p"]) == {"imp", "kind", "measured"}  # as /a.js sends them
        assert shown["p"]["measured"] in ("0", "1")
        kinds.add(shown["p"]["kind"])
        n = counted[shown["c"], shown["ad"]]
        n["impressions"] += 1
        n["measured"] += shown["p"]["measured"] == "1"
        if seen:  # one viewable event at most, of the same slot and impression, once measured
            [viewable] = seen
            assert {k: viewable[k] for k in ids} == ids and viewable["e"] == "viewable"
            assert shown["p"]["measured"] == "1"
            p = viewable["p"]
            assert (p["imp"], p["kind"]) == (shown["p"]["imp"], shown["p"]["kind"])
            pct, ms = RULES[p["kind"]]
            assert p["in_view_ms"] >= ms and pct <= p["max_visible_pct"] <= 100
            n["viewable"] += 1
    assert kinds == {"display", "large", "video"}
    rows = {(r["campaign"], r["ad"]): r for r in truth.as_dict()["ads"]}
    assert set(rows) == set(counted) and len(rows) == 6
    pixels = config.crawler_impressions + config.data_center_impressions
    pixels += config.prefetch_impressions
    for key, n in counted.items():
        row = rows[key]
        assert row["impressions"] == config.impressions + n["impressions"]  # pixels and tag
        assert n["cloud"] == config.data_center_tag_impressions
        assert row["invalid_impressions"] == pixels + n["cloud"]
        assert row["measured_impressions"] == n["measured"]
        assert row["viewable_impressions"] == n["viewable"]
        assert row["viewability_rate"] == round(n["viewable"] / n["measured"], 4)
    # Some unmeasured, some measured and not viewable, some viewable: every case is there.
    total = sum(counted.values(), Counter())
    assert total["impressions"] > total["measured"] > total["viewable"] > 0
    imps = [s[0]["p"]["imp"] for s in tag_events(phases) + tag_events(phases, DATA_CENTER_IP)]
    assert len(set(imps)) == len(imps)  # an id per impression


# -- invalid traffic ----------------------------------------------------------------------

INVALID = Config(seed=13, campaigns=1, recipients=30, ad_campaigns=2, ads=2, impressions=40,
                 tag_impressions=10, visitors=3, crawler_impressions=2, data_center_impressions=4,
                 data_center_clicks=2, data_center_tag_impressions=3, prefetch_impressions=1,
                 duplicate_clickers=2)  # fmt: skip
FIGURES = ("impressions", "invalid_impressions", "measured_impressions", "viewable_impressions",
           "clicks", "machine_clicks", "unique_clicks", "invalid_clicks")  # fmt: skip


def sent_by(step: Step) -> str:
    """Who sent a request, by its markers, as the reason its ad events are invalid ("": a
    person): a crawler's or a link checker's agent, the cloud address, a prefetch header."""
    if step.ua in (AD_CRAWLER, BOT):
        return "crawler"
    if step.ip == DATA_CENTER_IP:
        return "data_center"
    return "prefetch" if step.headers.get("Sec-Purpose") == "prefetch" else ""


def ad_events(script: Script) -> list[tuple[Step, str, str, str, dict]]:
    """A script's requests about an ad: (step, campaign, ad, event type, the tag's props)."""
    found = []
    for step in script:
        if step.kind in ("pixel", "click") and step.params.get("ad"):
            kind = "impression" if step.kind == "pixel" else "click"
            found.append((step, step.params["campaign"], step.params["ad"], kind, {}))
        elif step.kind == "post":
            found += [(step, e["c"], e["ad"], e["e"], e["p"]) for e in step.params["events"]
                      if e.get("ad")]  # fmt: skip
    return found


def recount_ads(phases: list[list[Script]]) -> tuple[dict, list[dict]]:
    """The ad figures and the ivt rows counted again from the requests a plan sends: a click
    right after the same browser's click on the same ad is a duplicate."""
    n: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    clickers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    ivt: Counter[tuple[str, str, str, str]] = Counter()
    for script in phases[1]:
        last_click = None
        for step, campaign, ad, kind, props in ad_events(script):
            reason, who = sent_by(step), (step.ua, step.ip)
            if kind == "click":
                if not reason and last_click == (who, campaign, ad):
                    reason = "duplicate_click"
                last_click = (who, campaign, ad)
            if reason:
                ivt[campaign, ad, kind, reason] += 1
                n[campaign, ad][f"invalid_{kind}s"] += kind != "viewable"
                continue
            if kind == "impression":
                n[campaign, ad]["impressions"] += 1
                n[campaign, ad]["measured_impressions"] += props.get("measured") == "1"
            elif kind == "viewable":
                n[campaign, ad]["viewable_impressions"] += 1
            else:
                n[campaign, ad]["clicks"] += 1
                clickers[campaign, ad].add(who)
    figures = {key: {f: counts[f] for f in FIGURES} for key, counts in n.items()}
    for key, who in clickers.items():
        figures[key]["unique_clicks"] = len(who)
    rows = [{"campaign": c, "ad": a, "event_type": t, "reason": r, "events": k}
            for (c, a, t, r), k in sorted(ivt.items())]  # fmt: skip
    return figures, rows


@pytest.mark.parametrize("signed", [True, False])
def test_the_invalid_traffic_truth_equals_a_count_of_what_the_plan_sends(signed: bool) -> None:
    phases, truth = plan(INVALID, signed)
    found = truth.as_dict()
    figures, ivt = recount_ads(phases)
    assert found["ivt"] == ivt
    assert {(r["event_type"], r["reason"]) for r in ivt} == {
        ("impression", "crawler"), ("impression", "data_center"), ("impression", "prefetch"),
        ("viewable", "data_center"), ("click", "crawler"), ("click", "data_center"),
        ("click", "duplicate_click"),
    }  # fmt: skip
    assert {(r["campaign"], r["ad"]): {f: r[f] for f in FIGURES} for r in found["ads"]} == figures
    assert len(figures) == 4
    for row in found["campaigns"]:  # a campaign's figures are its ads'
        ads = [f for (c, _), f in figures.items() if c == row["campaign"]]
        if ads:
            assert {f: row[f] for f in FIGURES} == {f: sum(a[f] for a in ads) for f in FIGURES}
        else:  # email: nothing invalid sent
            assert row["invalid_impressions"] == row["invalid_clicks"] == 0 < row["clicks"]
    # The duplicates: the first 2 clickers of each ad, each twice from one browser.
    assert sum(r["events"] for r in ivt if r["reason"] == "duplicate_click") == 2 * 4
    # Every request is an event stored, invalid ones too.
    assert found["events_total"] == sum(e["events"] for e in found["events"])
    stored = Counter((e[1], e[3]) for script in phases[1] for e in ad_events(script))
    events = {(e["campaign"], e["event_type"]): e["events"] for e in found["events"]}
    assert {k: events[k] for k in stored} == stored


def test_the_same_seed_gives_the_same_invalid_traffic() -> None:
    phases_a, truth_a = plan(INVALID, True)
    phases_b, truth_b = plan(INVALID, True)
    assert repr(phases_a) == repr(phases_b)
    assert truth_a.as_dict()["ivt"] == truth_b.as_dict()["ivt"]
    # Headers travel with their steps: the prefetches, and nothing else, ask for one.
    headed = [s for script in phases_a[1] for s in script if s.headers]
    assert len(headed) == INVALID.ad_campaigns * INVALID.ads * INVALID.prefetch_impressions
    assert {tuple(s.headers.items()) for s in headed} == {(("Sec-Purpose", "prefetch"),)}


def test_no_invalid_traffic_but_the_link_checker_when_asked_for_none() -> None:
    none = {
        "crawler_impressions": 0,
        "data_center_impressions": 0,
        "data_center_clicks": 0,
        "data_center_tag_impressions": 0,
        "prefetch_impressions": 0,
        "duplicate_clickers": 0,
    }
    _, truth = plan(Config(**{**vars(INVALID), **none}), signed=True)
    found = truth.as_dict()
    assert {(r["event_type"], r["reason"], r["events"]) for r in found["ivt"]} == {
        ("click", "crawler", 1)
    }  # fmt: skip
    assert {r["invalid_impressions"] for r in found["ads"]} == {0}
    assert {r["invalid_clicks"] for r in found["ads"]} == {1}
    with pytest.raises(ValueError, match="prefetch_impressions: 0 or more"):
        plan(Config(**{**vars(INVALID), "prefetch_impressions": -1}), signed=True)


def test_a_duplicate_click_follows_a_persons_click_on_the_same_ad() -> None:
    truth = Truth()
    ids = {"site": "s", "campaign": "c", "ad": "a", "visitor": "v"}
    with pytest.raises(ValueError, match="duplicate"):  # no click before it
        truth.click(ids, "person", again=True)
    truth.click(ids, "person")
    with pytest.raises(ValueError, match="duplicate"):  # invalid already, for another reason
        truth.click(ids, "bot", again=True)
    mail = {"site": "s", "campaign": "m", "message": "m1", "recipient": "r"}
    truth.click(mail, "person")
    with pytest.raises(ValueError, match="duplicate"):  # only clicks on ads are duplicates
        truth.click(mail, "person", again=True)
    truth.click(ids, "person", again=True)
    truth.click(ids, "person", again=True)  # a chain: each counts
    [ad] = truth.as_dict()["ads"]
    assert (ad["clicks"], ad["unique_clicks"], ad["invalid_clicks"]) == (1, 1, 2)


def test_the_data_center_address_is_in_a_cloud_providers_range() -> None:
    """The collector's list (iporigin) must still say so: a data change is caught here."""
    import iporigin  # the collector's dependency: without it only this test fails

    assert iporigin.classify(DATA_CENTER_IP).kind == "hosting"


# -- web visits ---------------------------------------------------------------------------

US_DESKTOP = {"country": "US", "device_type": "desktop", "browser": "Chrome", "os": "Windows"}
DE_PHONE = {"country": "DE", "device_type": "mobile", "browser": "Mobile Safari", "os": "iOS"}
GOOGLE = {"source": "search", "referrer_host": "google.com", "utm_source": "", "utm_medium": "",
          "utm_campaign": ""}  # fmt: skip
DIRECT = {**GOOGLE, "source": "direct", "referrer_host": ""}
NEWSLETTER = {"source": "email", "referrer_host": "", "utm_source": "newsletter",
              "utm_medium": "email", "utm_campaign": "fall"}  # fmt: skip
NOWHERE = {"country": "", "device_type": "tablet", "browser": "Chrome", "os": "Android"}


def hand_made(goals: tuple[str, ...] = ()) -> WebTruth:
    """Four visits by three visitors, whose figures are worked out by hand below."""
    truth = WebTruth(goals)
    blog, docs = {"site": "sim-blog"}, {"site": "sim-docs"}
    a1 = truth.visit(Visit("a", "a1", {**blog, **GOOGLE, **US_DESKTOP}))
    a1.pages, a1.events, a1.engaged_ms = ["/", "/pricing", "/thanks"], ["signup"], 6000
    a2 = truth.visit(Visit("a", "a2", {**blog, **DIRECT, **US_DESKTOP}))
    a2.pages, a2.engaged_ms = ["/post-1"], 1400  # a bounce
    b1 = truth.visit(Visit("b", "b1", {**blog, **GOOGLE, **DE_PHONE}))
    b1.pages, b1.events, b1.engaged_ms = ["/"], ["download"], 600  # one page, not a bounce
    c1 = truth.visit(Visit("c", "c1", {**docs, **NEWSLETTER, **NOWHERE}))
    c1.pages, c1.engaged_ms = ["/"], 700  # a bounce
    return truth


def test_the_web_truth_of_a_few_visits_worked_out_by_hand() -> None:
    truth = hand_made(("signup", "/thanks"))
    assert truth.rows("visits") == [
        # 5 page views in 3 visits, 1 bounce, (6000 + 1400 + 600) ms / 3
        {"site": "sim-blog", "visitors": 2, "visits": 3, "pageviews": 5, "views_per_visit": 1.67,
         "bounce_rate": 0.3333, "visit_duration_s": 2.7},
        {"site": "sim-docs", "visitors": 1, "visits": 1, "pageviews": 1, "views_per_visit": 1.0,
         "bounce_rate": 1.0, "visit_duration_s": 0.7},
    ]  # fmt: skip
    assert truth.rows("sources") == [
        {"site": "sim-blog", **GOOGLE, "visitors": 2, "visits": 2, "pageviews": 4,
         "views_per_visit": 2.0, "bounce_rate": 0.0, "visit_duration_s": 3.3},
        {"site": "sim-blog", **DIRECT, "visitors": 1, "visits": 1, "pageviews": 1,
         "views_per_visit": 1.0, "bounce_rate": 1.0, "visit_duration_s": 1.4},
        {"site": "sim-docs", **NEWSLETTER, "visitors": 1, "visits": 1, "pageviews": 1,
         "views_per_visit": 1.0, "bounce_rate": 1.0, "visit_duration_s": 0.7},
    ]  # fmt: skip
    assert truth.rows("countries") == [
        {"site": "sim-blog", "country": "US", "visitors": 1, "visits": 2, "pageviews": 4,
         "views_per_visit": 2.0, "bounce_rate": 0.5, "visit_duration_s": 3.7},
        {"site": "sim-blog", "country": "DE", "visitors": 1, "visits": 1, "pageviews": 1,
         "views_per_visit": 1.0, "bounce_rate": 0.0, "visit_duration_s": 0.6},
        {"site": "sim-docs", "country": "", "visitors": 1, "visits": 1, "pageviews": 1,
         "views_per_visit": 1.0, "bounce_rate": 1.0, "visit_duration_s": 0.7},
    ]  # fmt: skip
    devices = [{k: r[k] for k in ("site", "device_type", "browser", "os", "visits")}
               for r in truth.rows("devices")]  # fmt: skip
    assert devices == [
        {"site": "sim-blog", "device_type": "desktop", "browser": "Chrome", "os": "Windows",
         "visits": 2},
        {"site": "sim-blog", "device_type": "mobile", "browser": "Mobile Safari", "os": "iOS",
         "visits": 1},
        {"site": "sim-docs", "device_type": "tablet", "browser": "Chrome", "os": "Android",
         "visits": 1},
    ]  # fmt: skip
    # Of the two visitors from Google, one signed up (and saw /thanks); the direct visit and
    # the newsletter one reached nothing: no rows.
    searched = {"site": "sim-blog", "source": "search", "utm_campaign": "", "visitors": 2,
                "converted": 1, "conversions": 1, "conversion_rate": 0.5}  # fmt: skip
    goals = [{**searched, "goal": "/thanks"}, {**searched, "goal": "signup"}]
    assert truth.rows("goals") == goals
    assert list(truth.rows("goals")[0])[:4] == ["site", "goal", "source", "utm_campaign"]
    # Without BEACON_GOALS every custom event is a goal, and no page is.
    assert hand_made().rows("goals") == [{**searched, "goal": g} for g in ("download", "signup")]
    assert truth.rows("realtime") == [
        {"site": "sim-blog", "visitors": 2, "pageviews": 5},
        {"site": "sim-docs", "visitors": 1, "pageviews": 1},
    ]


def test_web_rows_by_hour_go_by_when_each_visit_began() -> None:
    truth = hand_made()
    with pytest.raises(ValueError, match="not sent"):
        truth.rows("visits", "hour")
    at = dt.datetime(2026, 6, 18, 10, 59, 59, tzinfo=dt.UTC).timestamp()
    truth.started.update({"a1": (at, at + 0.5), "b1": (at - 1800, at - 1800), "a2": (at + 2400,
                          at + 2400), "c1": (at + 300, at + 300)})  # fmt: skip
    by_hour = [
        (r["hour"], r["site"], r["visitors"], r["visits"]) for r in truth.rows("visits", "hour")
    ]
    assert by_hour == [
        ("2026-06-18 10:00", "sim-blog", 2, 2),
        ("2026-06-18 11:00", "sim-blog", 1, 1),
        ("2026-06-18 11:00", "sim-docs", 1, 1),
    ]
    by_day = truth.rows("visits", "day")
    assert [(r["day"], r["site"], r["visits"]) for r in by_day] == [
        ("2026-06-18", "sim-blog", 3), ("2026-06-18", "sim-docs", 1)]  # fmt: skip
    assert list(truth.rows("goals", "day")[0])[:2] == ["day", "site"]
    truth.started["a1"] = (at, at + 2)  # sent in one hour, answered in the next: unknown
    with pytest.raises(ValueError, match="turn of a period"):
        truth.rows("sources", "hour")


def recount(phases: list[list[Script]]) -> tuple[dict[str, dict[str, float]], set[str]]:
    """The visits figures per site counted again from the requests a plan sends: a script
    with an address is a visitor (the crawler and the ads' cloud server apart), its pauses
    split its visits."""
    visits: dict[str, list[dict[str, int]]] = defaultdict(list)
    visitors: dict[str, set[tuple[str, str]]] = defaultdict(set)
    pairs: set[str] = set()
    for script in phases[1]:
        if script[0].ip in ("", DATA_CENTER_IP) or script[0].ua == CRAWLER:
            continue
        assert len({(s.ip, s.ua) for s in script if s.kind != "pause"}) == 1  # one person
        site = script[0].params["s"]
        visitors[site].add((script[0].ip, script[0].ua))
        pairs.add(f"{site} {script[0].ip} {script[0].ua}")
        visit = Counter[str]()
        for step in [*script, Step("pause")]:
            if step.kind == "pause":
                visits[site].append(visit)
                visit = Counter()
            elif step.kind == "pixel":
                visit["pageviews"] += 1
            else:
                [event] = step.params["events"]
                visit["custom"] += event["e"] == "custom"
                visit["engaged_ms"] += event["p"].get("engaged_ms", 0)
    found = {}
    for site, runs in visits.items():
        n, pageviews = len(runs), sum(v["pageviews"] for v in runs)
        bounces = sum(v["pageviews"] == 1 and not v["custom"] for v in runs)
        duration_ms = sum(v["engaged_ms"] for v in runs)
        found[site] = {"site": site, "visitors": len(visitors[site]), "visits": n,
                       "pageviews": pageviews, "views_per_visit": round(pageviews / n, 2),
                       "bounce_rate": round(bounces / n, 4),
                       "visit_duration_s": round(duration_ms / n / 1000, 1)}  # fmt: skip
    return found, pairs


def test_the_web_truth_equals_a_count_of_what_the_plan_sends() -> None:
    config = Config(seed=21, campaigns=1, recipients=20, visitors=40, return_rate=0.4,
                    visit_gap_s=3, goals="signup,/thanks")  # fmt: skip
    phases, truth = plan(config, signed=True)
    found, pairs = recount(phases)
    assert truth.web_rows("visits") == sorted(
        found.values(), key=lambda r: (-r["visits"], r["site"])
    )
    assert len(pairs) == 2 * config.visitors  # every visitor a distinct address and agent
    pauses = [s for script in phases[1] for s in script if s.kind == "pause"]
    assert pauses and all(s.params["seconds"] > config.visit_gap_s for s in pauses)
    rows = {v: truth.web_rows(v) for v in ("visits", "sources", "countries", "devices", "goals")}
    for view in ("sources", "countries", "devices"):  # the same visits, cut another way
        for site in ("sim-blog", "sim-docs"):
            mine = [r for r in rows[view] if r["site"] == site]
            assert sum(r["visits"] for r in mine) == found[site]["visits"]
            assert sum(r["pageviews"] for r in mine) == found[site]["pageviews"]
    # Every kind of visitor the definitions tell apart is there.
    assert {r["country"] for r in rows["countries"]} >= {"US", "DE", "GB", "FR", "JP", ""}
    assert {r["device_type"] for r in rows["devices"]} == {"desktop", "mobile", "tablet"}
    assert len({r["browser"] for r in rows["devices"]}) >= 3
    assert len({r["os"] for r in rows["devices"]}) >= 3
    assert {r["source"] for r in rows["sources"]} == {
        "direct",
        "search",
        "social",
        "email",
        "other",
    }
    assert any(r["utm_campaign"] for r in rows["sources"])
    assert 0 < min(r["bounce_rate"] for r in rows["visits"])
    assert max(r["bounce_rate"] for r in rows["visits"]) < 1
    assert any(r["visits"] > r["visitors"] for r in rows["visits"])  # some came back
    assert {r["goal"] for r in rows["goals"]} == {"signup", "/thanks"}
    # The crawler's page views count as page views, not in any visit.
    assert truth.as_dict()["sites"][0]["pageviews"] > truth.web_rows("realtime")[0]["pageviews"]
