"""Known-answer vectors for signed URLs: fixed keys, fixed parameters, the expected signatures
and URLs written here as literals.

URLs already mailed carry these signatures for as long as their key is configured, so a change
of the canonical form (domain tag, path, which keys are signed, their order or encoding), of
the MAC (HMAC-SHA256, first 16 bytes, unpadded base64url) or of the `kid.tag` format must fail
here. The literals were computed once with Python's hmac, hashlib and base64 over canonical
forms written out by hand (`beacon-url-v1`, the path, then the signed pairs sorted by key,
each key and value percent-encoded as UTF-8 with only A-Z a-z 0-9 `-._~` left as is, joined
with `&`, the three parts with newlines), never with Beacon's own signing code. The examples
in docs/tracking.md ("Email and ad tracking") are vectors too.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from collector.signing import Keyring, canonical, sign, verify
from collector.sinks.memory import MemorySink
from collector.urls import click_url, pixel_url

BASE = "https://t.example.com"
# docs/tracking.md, "Email and ad tracking"
README_KEY = ("k2026", b"change-me-to-a-long-random-secret")
OLD_KEY = ("k2025", b"vector-key-2025-0123456789abcdef")
NEW_KEY = ("k2026", b"vector-key-2026-0123456789abcdef")
KEYS_SETTING = "k2025:vector-key-2025-0123456789abcdef,k2026:vector-key-2026-0123456789abcdef"
OPEN_IDS = {"site": "shop", "campaign": "spring-sale", "message": "m-1042", "recipient": "u-77"}
OPEN_CANONICAL = b"beacon-url-v1\n/p.gif\nc=spring-sale&e=open&m=m-1042&r=u-77&s=shop"

# docs/tracking.md's open pixel, link and ad impression, as printed there (HTML entities undone).
README_OPEN = (
    "https://t.example.com/p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77"
    "&sig=k2026.jBQoULtXX98Irb-REam8xQ"
)
README_CLICK = (
    "https://t.example.com/c?d=https%3A%2F%2Fshop.example%2Fsale%3Futm_source%3Dmail"
    "&s=shop&c=spring-sale&m=m-1042&r=u-77&sig=k2026.ftB79BzIpw9zNW9JJ8R2-w"
)
README_IMPRESSION = (
    "https://t.example.com/p.gif?e=impression&s=news&c=fall&ad=banner-3"
    "&sig=k2026.5Pe5Z47xkiTfi3OUsm8m5g"
)
# The same open signed before and after a rotation: k2025 alone, then k2025 and k2026.
OPEN_K2025 = (
    "https://t.example.com/p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77"
    "&sig=k2025.tXaGGGSxI4jXbezIKWnf3w"
)
OPEN_K2026 = (
    "https://t.example.com/p.gif?e=open&s=shop&c=spring-sale&m=m-1042&r=u-77"
    "&sig=k2026.VkskiG0yk-0WhN8hrj4sBA"
)
# Values that need percent-encoding (space, /, %, &, =, non-ASCII keys and values), ~ left as
# is, properties signed, conversion fields signed. Canonical form:
#   cur=EUR&e=conversion&o=A%2F1%202&p.note=50%25%20off%20%26%20more&p.plan=pro~2
#   &p.%C3%A9t%C3%A9=%C3%A0%3Dvous&s=shop&v=49.90
CONVERSION_PROPS = {"plan": "pro~2", "note": "50% off & more", "été": "à=vous"}
CONVERSION = (
    "https://t.example.com/p.gif?e=conversion&s=shop&v=49.90&cur=EUR&o=A%2F1%202"
    "&p.plan=pro~2&p.note=50%25%20off%20%26%20more&p.%C3%A9t%C3%A9=%C3%A0%3Dvous"
    "&sig=k2026.PrsBsxPRj-O5Yb0J6t4OYw"
)
# A destination normalised first (IDNA host, percent-encoded path), then signed as that text:
# canonical d=https%3A%2F%2Fxn--bcher-kva.example%2Fstra%25C3%259Fe%3Fq%3D1
IDNA_DESTINATION = "https://bücher.example/straße?q=1"
IDNA_CLICK = (
    "https://t.example.com/c?d=https%3A%2F%2Fxn--bcher-kva.example%2Fstra%25C3%259Fe%3Fq%3D1"
    "&s=shop&c=fall&r=u-77&sig=k2026.hN4yQb3yQsDkEiJjXxiw0Q"
)

# The query parameters of each vector URL, in its order, as the collector reads them.
OPEN_PARAMS = {"e": "open", "s": "shop", "c": "spring-sale", "m": "m-1042", "r": "u-77"}
CONVERSION_PARAMS = {
    "e": "conversion", "s": "shop", "v": "49.90", "cur": "EUR", "o": "A/1 2",
    "p.plan": "pro~2", "p.note": "50% off & more", "p.été": "à=vous",
}  # fmt: skip
IDNA_CLICK_PARAMS = {
    "d": "https://xn--bcher-kva.example/stra%C3%9Fe?q=1", "s": "shop", "c": "fall", "r": "u-77"
}  # fmt: skip


def path_and_pairs(url: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(url)
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


def sig_of(url: str) -> str:
    return dict(path_and_pairs(url)[1])["sig"]


def test_the_canonical_form_of_an_open():
    assert canonical("/p.gif", OPEN_PARAMS.items()) == OPEN_CANONICAL


def test_the_readme_urls_are_made_and_verified():
    keyring = Keyring([README_KEY])
    assert pixel_url(BASE, keyring, "open", **OPEN_IDS) == README_OPEN
    dest = "https://shop.example/sale?utm_source=mail"
    assert click_url(BASE, keyring, dest, **OPEN_IDS) == README_CLICK
    impression = pixel_url(BASE, keyring, "impression", site="news", campaign="fall", ad="banner-3")
    assert impression == README_IMPRESSION
    for url in (README_OPEN, README_CLICK, README_IMPRESSION):
        assert verify(keyring, *path_and_pairs(url)) == "valid", url
    # An ad server's cache buster is not signed (docs/tracking.md: `&cb=[timestamp]`).
    assert verify(keyring, *path_and_pairs(README_IMPRESSION + "&cb=1732838400123")) == "valid"


@pytest.mark.parametrize(
    ("url", "path", "params"),
    [
        (OPEN_K2026, "/p.gif", OPEN_PARAMS),
        (CONVERSION, "/p.gif", CONVERSION_PARAMS),
        (IDNA_CLICK, "/c", IDNA_CLICK_PARAMS),
    ],
    ids=["open", "conversion", "click_idna"],
)
def test_a_vector_signs_to_its_literal_and_verifies(url, path, params):
    keyring = Keyring([OLD_KEY, NEW_KEY])
    assert sign(keyring, path, params) == sig_of(url)
    assert path_and_pairs(url) == (path, [*params.items(), ("sig", sig_of(url))])
    assert verify(keyring, *path_and_pairs(url)) == "valid"


def test_the_library_makes_the_vector_urls():
    keyring = Keyring([OLD_KEY, NEW_KEY])
    assert pixel_url(BASE, keyring, "open", **OPEN_IDS) == OPEN_K2026
    conversion = pixel_url(
        BASE, keyring, "conversion", site="shop", value="49.90", currency="EUR",
        order_id="A/1 2", props=CONVERSION_PROPS,
    )  # fmt: skip
    assert conversion == CONVERSION
    click = click_url(BASE, keyring, IDNA_DESTINATION, site="shop", campaign="fall",
                      recipient="u-77")  # fmt: skip
    assert click == IDNA_CLICK


def test_rotation_a_url_signed_with_the_old_key_verifies_until_it_is_removed():
    before = Keyring([OLD_KEY])
    assert pixel_url(BASE, before, "open", **OPEN_IDS) == OPEN_K2025
    rotated = Keyring([OLD_KEY, NEW_KEY])  # the new key is added last: it signs from now on
    assert pixel_url(BASE, rotated, "open", **OPEN_IDS) == OPEN_K2026
    assert verify(rotated, *path_and_pairs(OPEN_K2025)) == "valid"  # mails already sent
    assert verify(rotated, *path_and_pairs(OPEN_K2026)) == "valid"
    assert verify(Keyring([NEW_KEY]), *path_and_pairs(OPEN_K2025)) == "unknown_key"
    # Same tag under another key id: the id picks the key.
    swapped = OPEN_K2025.replace("sig=k2025.", "sig=k2026.")
    assert verify(rotated, *path_and_pairs(swapped)) == "bad_signature"


def local(url: str) -> str:
    """The path and query a mail client would request from the collector."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_real_collector_records_the_vector_urls_as_verified(make_client):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS_SETTING, signature_policy="drop")
    for url in (OPEN_K2025, OPEN_K2026, CONVERSION):
        resp = await client.get(local(url))
        assert resp.status == 200, url
        await resp.read()
    resp = await client.get(local(IDNA_CLICK), allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith("https://xn--bcher-kva.example/stra%C3%9Fe?q=1&")
    await client.close()
    events = sink.events()
    # Under the drop policy only verified events are kept: all four are.
    assert [(e["event_type"], e["verified"]) for e in events] == [
        ("open", 1), ("open", 1), ("conversion", 1), ("click", 1)
    ]  # fmt: skip
    assert events[2]["order_id"] == "A/1 2" and events[2]["props"]["été"] == "à=vous"
