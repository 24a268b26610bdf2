"""GET /t.js through a real server on loopback: bytes, caching, compression."""

from __future__ import annotations

import gzip

from collector import snippet
from tests.support.helpers import metric_value


async def test_script_is_served_cacheable_and_small(make_client, metrics):
    client = await make_client()
    resp = await client.get("/t.js", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    body = await resp.read()
    assert body == snippet.SCRIPT_BYTES
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == f"public, max-age={snippet.MAX_AGE_S}"
    assert resp.headers["ETag"] == snippet.ETAG and not snippet.ETAG.startswith("W/")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in resp.headers
    # Well under the 2 KB the issue allows, as every page pays it once a cache lifetime.
    assert len(snippet.SCRIPT_GZIP) < 1700, len(snippet.SCRIPT_GZIP)
    assert b"sendBeacon" in body and b"globalPrivacyControl" in body
    assert b"\n//" not in body and not body.startswith(b"//")  # comments stay in the source
    assert metric_value(metrics, "beacon_requests_total", endpoint="snippet", outcome="served")


async def test_gzip_has_its_own_strong_etag(make_client):
    client = await make_client()
    # auto_decompress off: the bytes as they travel.
    resp = await client.get("/t.js", headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["ETag"] == snippet.ETAG_GZIP != snippet.ETAG
    raw = await resp.read()
    assert raw == snippet.SCRIPT_GZIP and gzip.decompress(raw) == snippet.SCRIPT_BYTES
    refused = await client.get("/t.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


async def test_revalidation_answers_304_without_a_body(make_client, metrics):
    client = await make_client()
    for etag, encoding in ((snippet.ETAG, "identity"), (snippet.ETAG_GZIP, "gzip")):
        for if_none_match in (etag, f"W/{etag}", f'"old", {etag}', "*"):
            resp = await client.get(
                "/t.js", headers={"If-None-Match": if_none_match, "Accept-Encoding": encoding}
            )
            assert resp.status == 304, if_none_match
            assert await resp.read() == b""
            assert resp.headers["ETag"] == etag
    stale = await client.get("/t.js", headers={"If-None-Match": '"old"'})
    assert stale.status == 200
    assert metric_value(
        metrics, "beacon_requests_total", endpoint="snippet", outcome="not_modified"
    )


async def test_head_gets_the_headers(make_client):
    client = await make_client()
    resp = await client.head("/t.js", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.headers["ETag"] == snippet.ETAG


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
