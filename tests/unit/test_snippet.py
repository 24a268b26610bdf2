"""GET /t.js and GET /a.js through a real server on loopback: bytes, caching, compression."""

from __future__ import annotations

import gzip

import pytest

from collector import snippet
from collector.snippet import AD_TAG, SCRIPTS, SNIPPET, Script
from tests.support.helpers import metric_value

# What every page pays once a cache lifetime, gzipped: well under the 2 KB the snippet's issue
# allows; the ad tag, once per ad frame, about as much.
MAX_GZIP_BYTES = {"/t.js": 1700, "/a.js": 1800}
# What each script must hold: how it sends, and the privacy signals it honours.
MUST_HOLD = {
    "/t.js": (b"sendBeacon", b"globalPrivacyControl"),
    "/a.js": (b"sendBeacon", b"globalPrivacyControl", b"IntersectionObserver", b"visibilityState"),
}
by_path = pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.path)


@by_path
async def test_script_is_served_cacheable_and_small(make_client, metrics, script: Script):
    client = await make_client()
    resp = await client.get(script.path, headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    body = await resp.read()
    assert body == script.body
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == f"public, max-age={snippet.MAX_AGE_S}"
    etag = script.headers["ETag"]
    assert resp.headers["ETag"] == etag and not etag.startswith("W/")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in resp.headers
    assert len(script.gzip_body) < MAX_GZIP_BYTES[script.path], len(script.gzip_body)
    for needed in MUST_HOLD[script.path]:
        assert needed in body, needed
    assert b"\n//" not in body and not body.startswith(b"//")  # comments stay in the source
    served = {"endpoint": script.endpoint, "outcome": "served"}
    assert metric_value(metrics, "beacon_requests_total", **served) == 1
    others = [s for s in SCRIPTS if s is not script]
    for other in others:  # each script counted on its own label
        assert not metric_value(metrics, "beacon_requests_total", endpoint=other.endpoint)


@by_path
async def test_gzip_has_its_own_strong_etag(make_client, script: Script):
    client = await make_client()
    # auto_decompress off: the bytes as they travel.
    resp = await client.get(
        script.path, headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False
    )
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["ETag"] == script.gzip_headers["ETag"] != script.headers["ETag"]
    raw = await resp.read()
    assert raw == script.gzip_body and gzip.decompress(raw) == script.body
    refused = await client.get(script.path, headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


@by_path
async def test_revalidation_answers_304_without_a_body(make_client, metrics, script: Script):
    client = await make_client()
    for headers, encoding in ((script.headers, "identity"), (script.gzip_headers, "gzip")):
        etag = headers["ETag"]
        for if_none_match in (etag, f"W/{etag}", f'"old", {etag}', "*"):
            resp = await client.get(
                script.path, headers={"If-None-Match": if_none_match, "Accept-Encoding": encoding}
            )
            assert resp.status == 304, if_none_match
            assert await resp.read() == b""
            assert resp.headers["ETag"] == etag
    stale = await client.get(script.path, headers={"If-None-Match": '"old"'})
    assert stale.status == 200
    not_modified = {"endpoint": script.endpoint, "outcome": "not_modified"}
    assert metric_value(metrics, "beacon_requests_total", **not_modified) == 8


async def test_one_scripts_etag_does_not_revalidate_the_other(make_client):
    client = await make_client()
    assert SNIPPET.headers["ETag"] != AD_TAG.headers["ETag"]
    for script, other in ((SNIPPET, AD_TAG), (AD_TAG, SNIPPET)):
        for headers, encoding in ((other.headers, "identity"), (other.gzip_headers, "gzip")):
            resp = await client.get(
                script.path,
                headers={"If-None-Match": headers["ETag"], "Accept-Encoding": encoding},
            )
            assert resp.status == 200, (script.path, encoding)


@by_path
async def test_head_gets_the_headers(make_client, script: Script):
    client = await make_client()
    resp = await client.head(script.path, headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.headers["ETag"] == script.headers["ETag"]


def test_strip_source_keeps_code_and_drops_whole_line_comments() -> None:
    source = '// header\n(function () {\n  // why\n  var url = "http://x/";\n})();\n'
    assert snippet.strip_source(source) == b'(function () {\nvar url = "http://x/";\n})();\n'


def test_accepts_gzip() -> None:
    assert snippet.accepts_gzip("gzip, deflate, br")
    assert snippet.accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert snippet.accepts_gzip("*")
    assert not snippet.accepts_gzip("gzip;q=0")
    assert not snippet.accepts_gzip("identity")
    assert not snippet.accepts_gzip("")
