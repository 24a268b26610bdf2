"""Campaign funnel and last-click attribution on chDB; the `beacon url` command."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from analytics.campaign_report import campaign_report, format_campaign, money
from analytics.funnel import SOURCES, conversions
from analytics.report_window import Filters, Window
from beacon.__main__ import main
from collector.signing import Keyring, verify
from tests.support.chdb_events import Store, hour_ago_ms, wire

CLICK_A = "0193a1b2-c3d4-7e5f-8a9b-00000000000a"
CLICK_B = "0193a1b2-c3d4-7e5f-8a9b-00000000000b"
CLICK_E = "0193a1b2-c3d4-7e5f-8a9b-00000000000e"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("report") / "clickhouse")
    t = hour_ago_ms()
    ad = {"campaign": "fall", "site": "news"}
    s.add(
        [
            wire("impression", t + i, ad="banner-1" if i < 60 else "banner-2", **ad)
            for i in range(100)
        ]
        + [
            wire("click", t + 1000, ad="banner-1", click_id=CLICK_A, visitor_id=1, **ad),
            wire("click", t + 1001, ad="banner-2", click_id=CLICK_B, visitor_id=2, **ad),
            wire(
                "click",
                t + 1002,
                ad="banner-2",
                is_bot=1,
                visitor_id=3,
                **ad,
                user_agent="curl/8.5.0",
            ),
            # an email click in another campaign
            wire(
                "click", t + 1003, campaign="spring", message="m1", recipient="r1", click_id=CLICK_E
            ),
        ]
        + [  # conversions on the shop, which knows no campaign: attributed by click id
            wire(
                "conversion",
                t + 2000,
                site="shop",
                click_id=CLICK_A,
                order_id="o-1",
                value="30.00",
                currency="EUR",
            ),
            wire(
                "conversion",
                t + 2001,
                site="shop",
                click_id=CLICK_A,
                order_id="o-1",
                value="30.00",
                currency="EUR",
            ),  # the thank-you page reloaded: counts once
            wire(
                "conversion", t + 2002, site="shop", order_id="o-2", value="12.5", currency="EUR"
            ),  # the same order, first seen without the click id ...
            wire(
                "conversion",
                t + 2003,
                site="shop",
                click_id=CLICK_B,
                order_id="o-2",
                value="12.5",
                currency="EUR",
            ),  # ... then with it: attributed to banner-2
            wire(
                "conversion", t + 2004, site="shop", click_id=CLICK_B, value="7.25", currency="USD"
            ),  # no order id: each pixel counts
            wire(
                "conversion",
                t + 2005,
                site="shop",
                click_id=CLICK_E,
                order_id="o-3",
                value="100",
                currency="EUR",
            ),
            wire(
                "conversion", t + 2006, site="shop", order_id="o-4", value="5", currency="EUR"
            ),  # no click: stays with its own (empty) campaign
        ]
    )
    yield s
    s.close()


@pytest.mark.parametrize("source", SOURCES)
def test_attribution_by_click_id_counts_each_order_once(store, source):
    per_key = conversions(store.query, Window.last_days(1), Filters(), source=source)
    found = [row for rows in per_key.values() for row in rows]
    got = {
        (r["campaign"], r["ad"], r["currency"]): (r["conversions"], money(r["revenue"]))
        for r in found
    }
    assert got == {
        ("", "", "EUR"): (1, "5.00"),
        ("fall", "banner-1", "EUR"): (1, "30.00"),
        ("fall", "banner-2", "EUR"): (1, "12.50"),
        ("fall", "banner-2", "USD"): (1, "7.25"),
        ("spring", "", "EUR"): (1, "100.00"),
    }
    assert all(r["attributed"] == r["conversions"] for r in found if r["campaign"])


def test_an_ad_campaign_report_has_ctr_conversions_and_revenue_by_ad(store):
    report = campaign_report(store.query, "fall", days=1)
    assert report["sent"] is None and report["impressions"] == 100
    # The link checker's click is invalid traffic (a crawler), left out unless included.
    figures = ("clicks", "machine_clicks", "unique_clicks", "invalid_clicks")
    assert tuple(report[k] for k in figures) == (2, 0, 2, 1)
    everything = campaign_report(store.query, "fall", days=1, include_ivt=True)
    assert tuple(everything[k] for k in figures) == (3, 1, 2, 1)
    assert report["ctr"] == everything["ctr"] == 0.02  # two human clicks in 100 impressions
    assert report["conversions"] == 3 and report["conversion_rate"] == 1.5
    assert report["revenue"] == {"EUR": "42.50", "USD": "7.25"}
    by_ad = {row["ad"]: row for row in report["by_ad"]}
    assert by_ad["banner-1"]["impressions"] == 60 and by_ad["banner-1"]["conversions"] == 1
    assert by_ad["banner-2"]["revenue"] == {"EUR": "12.50", "USD": "7.25"}
    assert by_ad["banner-2"]["ctr"] == 0.025
    text = format_campaign(report)
    assert "campaign fall" in text and "42.50 EUR, 7.25 USD" in text and "ad banner-2" in text


def test_money_keeps_cents_and_never_rounds():
    assert (money("765"), money("12.5"), money("0.1234")) == ("765.00", "12.50", "0.1234")


def run_cli(capsys, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {
        "BEACON_SIGNING_KEYS": "k1:cli-secret-0123456789abcdef",
        "BEACON_PUBLIC_URL": "https://t.example.com",
    }
    code = main(list(args), {**base, **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def test_beacon_url_open_prints_a_signed_url_and_an_img_tag(capsys):
    code, out, _ = run_cli(
        capsys,
        "url",
        "open",
        "--site",
        "shop",
        "--campaign",
        "spring sale",
        "--message",
        "m-1",
        "--recipient",
        "u-77",
    )
    assert code == 0
    url, tag = out.splitlines()
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "t.example.com", "/p.gif")
    pairs = parse_qsl(parts.query)
    assert dict(pairs)["c"] == "spring sale"
    assert verify(Keyring([("k1", b"cli-secret-0123456789abcdef")]), "/p.gif", pairs) == "valid"
    assert tag.startswith('<img src="https://t.example.com/p.gif?e=open&amp;')
    assert 'width="1" height="1" alt=""' in tag


def test_beacon_url_click_normalises_and_refuses_bad_destinations(capsys):
    code, out, _ = run_cli(
        capsys,
        "url",
        "click",
        "--dest",
        "https://bücher.example/ß?q=ä",
        "--campaign",
        "spring",
        "--text",
        "Shop <now>",
        "--format",
        "json",
    )
    assert code == 0
    result = orjson.loads(out)
    dest = dict(parse_qsl(urlsplit(result["url"]).query))["d"]
    assert dest == "https://xn--bcher-kva.example/%C3%9F?q=%C3%A4"
    assert result["html"].endswith(">Shop &lt;now&gt;</a>")
    for bad in ("javascript:alert(1)", "//evil.example", "https://a@evil.example"):
        code, _, err = run_cli(capsys, "url", "click", "--dest", bad)
        assert code == 2 and "beacon url click" in err


def test_beacon_url_without_keys_signs_with_the_data_directorys_kept_key(capsys, tmp_path):
    no_keys = {"BEACON_SIGNING_KEYS": "", "BEACON_DATA_DIR": str(tmp_path)}
    code, out, _ = run_cli(capsys, "url", "impression", "--ad", "a1", env=no_keys)
    kept = (tmp_path / "signing-keys").read_text().split(":")[0]  # what a collector there checks
    assert code == 0 and f"&sig={kept}." in out
    code, out, _ = run_cli(capsys, "url", "impression", "--ad", "a1", "--unsigned", env=no_keys)
    assert code == 0 and "sig=" not in out and "e=impression&ad=a1" in out
    code, out, _ = run_cli(
        capsys, "url", "conversion", "--value", "49.90", "--currency", "EUR", "--order", "o-1"
    )
    assert code == 0 and "v=49.90&cur=EUR&o=o-1&sig=k1." in out
    code, _, err = run_cli(capsys, "url", "conversion", "--value", "ten", "--currency", "EUR")
    assert code == 2 and "bad_value" in err
