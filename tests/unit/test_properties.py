"""Properties of signing, query parsing, event building, sanitising, IP truncation and the
redirect destination check, over generated input (hypothesis)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from analytics import query_server, store
from collector import consent, destinations, signing
from collector import event as ev
from collector.destinations import HOST_RE, check_destination, host_of
from collector.privacy import anonymise_ip
from collector.redirect import with_click_id
from collector.sanitize import (
    CONTROL_RE,
    SURROGATE_RE,
    clean,
    may_hold_controls,
    scrub_event,
    serialise,
)
from collector.signing import SIGNED_KEYS, Keyring, sign, verify
from consumers import enrich
from consumers.sources import kafka_batches
from tests.support.helpers import reference_split

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYRING = Keyring(
    [("old", b"old-secret-0123456789abcdef"), ("new", b"new-secret-0123456789abcdef")]
)
OUTCOMES = {"valid", "unsigned", "duplicate_param", "malformed", "unknown_key", "bad_signature"}

text = st.text(max_size=40)
signed_key = st.sampled_from(sorted(SIGNED_KEYS)) | text.map(lambda k: "p." + k)
params = st.dictionaries(signed_key, text, min_size=1, max_size=8)
paths = st.sampled_from(["/p.gif", "/c"])


# -- signing -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(params, paths, st.dictionaries(st.sampled_from(["cb", "x", "utm"]), text, max_size=3))
def test_signed_params_verify_after_a_trip_through_a_url(values, path, unsigned):
    """Sign, put it in a URL, parse the query as the server does: valid, whatever the values."""
    query = {**values, **unsigned, "sig": sign(KEYRING, path, values)}
    url = URL(str(URL.build(path=path).with_query(query)))  # what a mail client sends
    assert verify(KEYRING, path, url.query.items()) == "valid"


@FAST
@given(params, paths, st.data())
def test_any_change_to_a_signed_url_fails(values, path, data):
    sig = sign(KEYRING, path, values)
    pairs = list(values.items())
    change = data.draw(st.sampled_from(["value", "add", "drop", "path", "sig"]))
    if change == "value":
        index = data.draw(st.integers(0, len(pairs) - 1))
        new = data.draw(text.filter(lambda v: v != pairs[index][1]))
        pairs[index] = (pairs[index][0], new)
    elif change == "add":
        key = data.draw(signed_key.filter(lambda k: k not in values))
        pairs.append((key, data.draw(text)))
    elif change == "drop":
        assume(len(pairs) > 1)
        pairs.pop(data.draw(st.integers(0, len(pairs) - 1)))
    elif change == "path":
        path = "/c" if path == "/p.gif" else "/p.gif"
    else:
        at = data.draw(st.integers(0, len(sig) - 1))
        char = data.draw(st.sampled_from("A_-0z.").filter(lambda c: c != sig[at]))
        sig = sig[:at] + char + sig[at + 1 :]
    assert verify(KEYRING, path, [*pairs, ("sig", sig)]) != "valid"


@FAST
@given(st.lists(st.tuples(signed_key | st.just("sig") | text, text), max_size=12), paths)
def test_verify_never_raises_on_any_query(pairs, path):
    assert verify(KEYRING, path, pairs) in OUTCOMES


# -- event building and sanitising ---------------------------------------------------------

id_value = st.text(max_size=300)
fields = st.fixed_dictionaries(
    {},
    optional={
        "e": st.sampled_from(sorted(ev.EVENT_TYPES)) | text,
        **{short: id_value for short, _ in ev.ID_FIELDS},
        "ref": st.text(max_size=2500),
        "v": st.decimals(allow_nan=True).map(str) | text,
        "cur": text,
        "o": id_value,
        "bcid": st.uuids().map(str) | text,
    },
)
raw_props = st.lists(st.tuples(st.text(max_size=80), st.text(max_size=600)), max_size=40)
page_urls = st.text(max_size=2500) | st.builds(
    lambda host, path, q: f"https://{host}/{path}?{q}", text, text, st.text(max_size=2500)
)


def build(fields, props, page_url, user_agent, ip):  # type: ignore[no-untyped-def]
    notes: list[str] = []
    row = ev.build_event(
        fields,
        ev.clean_props(props, notes),
        page_url=page_url,
        user_agent=user_agent,
        ip=ip,
        visitor_id=1,
        dnt=False,
        transport="pixel",
        received_ms=ev.now_ms(),
        keep_query=frozenset({"id"}),
        notes=notes,
    )
    scrub_event(row, notes)
    return row


@FAST
@given(fields, raw_props, page_urls, st.text(max_size=700), st.ip_addresses().map(str) | text)
def test_an_event_row_is_json_within_its_limits_and_without_controls(f, props, url, ua, ip):
    try:
        row = build(f, props, url, ua, anonymise_ip(ip, "truncate"))
    except ev.Rejected as exc:
        assert exc.reason  # the documented refusal, with a label for the counter
        return
    orjson.loads(orjson.dumps(row))
    assert len(row["url_path"]) <= ev.MAX_URL_CHARS
    assert len(row["referrer"]) <= ev.MAX_URL_CHARS
    assert len(row["user_agent"]) <= ev.MAX_USER_AGENT_CHARS
    assert all(len(row[name]) <= ev.MAX_ID_CHARS for _, name in ev.ID_FIELDS)
    assert len(row["props"]) <= ev.MAX_PROPS
    for key, value in row["props"].items():
        assert 0 < len(key) <= ev.MAX_PROP_KEY_CHARS and len(value) <= ev.MAX_PROP_VALUE_CHARS
    strings = [v for v in row.values() if isinstance(v, str)] + [
        *row["props"],
        *row["props"].values(),
    ]
    assert not any(CONTROL_RE.search(s) for s in strings)


url_parts = st.text(alphabet="/?#&=:@.[]%+ aAzZ09\t\r\n\x00é", max_size=30)
page_url = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["https://", "http://", "HTTP://", "//", "ftp://", "", "https:"]),
        st.sampled_from(["shop.example", "Shop.Example:8080", "u:p@h.example", "[::1]", "", "a"]),
        url_parts,
        st.sampled_from(["", "?utm_source=mail&id=7&x=1", "?id=%zz&utm_x=%E2%82%AC", "#f?x"]),
        url_parts,
    ),
)


@settings(max_examples=300, deadline=None)
@given(page_url | st.text(max_size=40))
def test_split_url_agrees_with_the_standard_library(url):
    keep = frozenset({"id"})
    assert ev.split_url(url, keep) == reference_split(url, keep)


# aiohttp decodes header bytes as UTF-8 with surrogateescape: bytes that are not UTF-8 arrive
# as lone surrogates in the User-Agent and Referer the handler passes on.
header_text = st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=60, deadline=None)
@given(header_text, header_text)
@example(user_agent="", referer="?\udc80")  # the bad byte is in the query, which is not kept
def test_header_text_as_aiohttp_decodes_it_still_makes_json(user_agent, referer):
    row = build({}, [], referer, user_agent, "")
    # What the row keeps (a page URL loses its query): a surrogate cut away is not stored.
    kept = "".join(v for v in row.values() if isinstance(v, str))
    invalid = any(0xD800 <= ord(c) <= 0xDFFF for c in kept)
    notes: list[str] = []
    stored = orjson.loads(serialise(row, notes))
    assert ("invalid_utf8" in notes) == invalid
    assert stored["user_agent"] == clean(SURROGATE_RE.sub("\ufffd", user_agent))


@FAST
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "props"]), text, max_size=4))
def test_the_cheap_control_test_never_misses_one(row):
    """may_hold_controls is the gate in front of scrub_event: a False must mean clean."""
    row["props"] = {"k": row.pop("props", "")}
    if not may_hold_controls(orjson.dumps(row)):
        strings = [v for v in row.values() if isinstance(v, str)] + [*row["props"].values()]
        assert not any(CONTROL_RE.search(s) for s in strings)
    notes: list[str] = []
    scrub_event(row, notes)
    assert clean(orjson.dumps(row).decode()) == orjson.dumps(row).decode()


@FAST
@given(raw_props)
def test_clean_props_notes_every_property_it_drops(props):
    notes: list[str] = []
    kept = ev.clean_props(props, notes)
    given_keys = {k for k, _ in props}
    assert len(kept) <= ev.MAX_PROPS and set(kept) <= given_keys
    assert len(given_keys) - len(kept) <= len(notes) <= len(props)  # each loss has a note
    for key, value in kept.items():
        assert 0 < len(key) <= ev.MAX_PROP_KEY_CHARS and len(value) <= ev.MAX_PROP_VALUE_CHARS


# -- IP truncation -------------------------------------------------------------------------


@FAST
@given(st.ip_addresses())
def test_a_truncated_ip_is_the_network_never_the_address(addr):
    stored = anonymise_ip(str(addr), "truncate")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 48
    network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    assert stored == str(network.network_address)
    if addr != network.network_address:
        assert stored != str(addr)


@FAST
@given(text | st.ip_addresses().map(str), st.sampled_from(["truncate", "full", "drop"]))
def test_anonymise_ip_never_raises(ip, mode):
    stored = anonymise_ip(ip, mode)
    assert stored == "" or ipaddress.ip_address(stored)


# -- redirect destinations -----------------------------------------------------------------

# Plain parts repeated, so that about half the destinations are accepted and checked.
SCHEMES = ["http://", "https://", "HTTPS://"] * 4 + ["//", "javascript:", "http:/", "https:\\\\"]
USERINFO = [""] * 6 + ["user@", "good.example@", "a:b@"]
HOSTS = ["good.example", "evil.example.", "[::1]", "127.0.0.1", "xn--e1a.example"] * 3
HOSTS += ["%65vil.example", "a..b", "", "ex\u3002ample", "a.example\\.evil"]
PORTS = ["", ":80", ":8443"] * 3 + [":99999", ":x", ":"]
destination = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(SCHEMES),
        st.sampled_from(USERINFO),
        st.sampled_from(HOSTS),
        st.sampled_from(PORTS),
        st.text(alphabet="/@?#:%.=&a", max_size=20),
    ),
)


@settings(max_examples=400, deadline=None)
@given(destination)
def test_an_accepted_destination_is_plain_http_to_the_host_every_parser_sees(url):
    if check_destination(url):
        return
    assert url.lower().startswith(("http://", "https://"))
    assert url.isascii() and url.isprintable() and " " not in url and "\\" not in url
    parts = urlsplit(url)
    host = host_of(parts.netloc)
    assert "@" not in parts.netloc and HOST_RE.match(host)
    # A second parser (yarl, which aiohttp uses) reads the same host: no parser confusion.
    # (A URL yarl cannot read at all is test_an_ipv6_host_with_junk_after_it_is_refused's.)
    try:
        other = URL(url).raw_host or ""
    except ValueError:
        return
    assert other.lower() == host.strip("[]").lower()
    landing = with_click_id(url, "0190a5d2-0000-7000-8000-000000000000")
    assert urlsplit(landing).netloc == parts.netloc


@FAST
@given(st.text(max_size=80).map(lambda t: "https://" + t) | st.text(max_size=80))
@example("https://0\n")  # `$` matches before a last newline: a check must end at the end
def test_the_destination_check_never_raises_and_refuses_what_is_not_ascii(url):
    reason = check_destination(url)
    assert isinstance(reason, str)
    if not reason:
        assert url.isascii() and url.isprintable()


def test_an_ipv6_host_with_junk_after_it_is_refused():
    # Browsers (WHATWG URL) and yarl refuse the URL: so does the check.
    assert check_destination("http://[::1]=") == "bad_host"
    assert check_destination("http://[::1]:8080/x") == ""


def test_no_check_by_pattern_takes_a_value_with_a_newline_at_its_end():
    # Python's `$` also matches before a string's last newline: "https://x\n" passed the
    # destination check, to a Location header aiohttp refuses (a 500), a click id or a MAC.
    takes = {
        destinations.PRINTABLE_ASCII_RE: "https://x",
        destinations.PORT_SUFFIX_RE: ":8080",
        HOST_RE: "shop.example",
        ev.CLICK_ID_RE: "0190a5d2-0000-7000-8000-000000000000",
        signing.KEY_ID_RE: "k1",
        signing.MAC_RE: "A" * 22,
        consent.COOKIE_NAME_RE: "consent",
        consent.COOKIE_DOMAIN_RE: ".shop.example",
        enrich.VALUE_RE: "19.90",
        enrich.UUID_RE: "0190a5d2-0000-7000-8000-000000000000",
        query_server.FORMAT_RE: "JSON",
        store.TOKEN_RE: "beacon.events-0-1-2",
        store.CLUSTER_NAME_RE: "beacon",
        store.QUORUM_RE: "auto",
        kafka_batches.INFLIGHT_RE: "beacon-inflight:1-2",
    }
    for pattern, value in takes.items():
        assert pattern.match(value), pattern.pattern
        assert not pattern.match(value + "\n"), pattern.pattern
