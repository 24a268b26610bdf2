"""Malformed requests for the HTTP fuzz run (loadtest/fuzz.py): raw bytes and client calls.

Every case carries MARKER in what it sends (in its query or a header; binary noise among its
bytes), so a response header that repeats any input is found by looking for it; only a random
mutation may break it. Cases are drawn from a seeded generator: a run can be repeated.
"""

from __future__ import annotations

import gzip
import random
import zlib
from dataclasses import dataclass, field

import orjson

MARKER = "zqfuzzmark"
INJECTED_HEADER = "x-zqinjected"
VALID = b"GET /p.gif?e=open&s=fuzz&r=" + MARKER.encode() + b" HTTP/1.1\r\nHost: t\r\n"
MARKED = f"X-M: {MARKER}\r\n"  # a header line that carries the marker
# Heads the slow clients trickle: a pixel's, which the fast path holds for one header period
# before aiohttp's deadline takes it, and another's, which aiohttp takes at its first byte.
SLOW_HEADS = {
    "pixel": VALID + b"X-Slow: ",
    "other": b"POST /e HTTP/1.1\r\nHost: t\r\n" + MARKED.encode() + b"X-Slow: ",
}


@dataclass(slots=True)
class Case:
    """One request: raw bytes for a socket, or a method/path/headers/body for the client."""

    category: str
    raw: bytes = b""
    method: str = "GET"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


# Characters of every kind: URL syntax, controls and separators, non-ASCII, broken escapes.
JUNK_CHARS = (
    "abc=&?#%/+;."
    + "\r\n\t\x00\x7f\x85\u2028\u2029"
    + "é漢字😀\ufeff\u202e"
    + "%0D%0A%00%zz%E0%80%C0%AF%ff%"
)


def junk_text(rng: random.Random, max_chars: int) -> str:
    return "".join(rng.choices(JUNK_CHARS, k=rng.randint(0, max_chars)))


def junk_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def crlf_injections() -> list[bytes]:
    """Attempts to add a response header through what the collector may echo or store."""
    inj = f"%0D%0A{INJECTED_HEADER}:%20{MARKER}%0D%0ASet-Cookie:%20{MARKER}=1"
    return [
        f"GET /p.gif?e=open&s={inj}&r={inj}&u=https://a.example/{inj} HTTP/1.1\r\n".encode(),
        f"GET /c?d=https://a.example/{inj}&s=x&sig=k.{MARKER} HTTP/1.1\r\n".encode(),
        f"GET /c?d=https://a.example/%0a{MARKER} HTTP/1.1\r\n".encode(),
        f"GET /{inj} HTTP/1.1\r\n".encode(),
        f"GET /p.gif?s={MARKER}\r{INJECTED_HEADER}: 1 HTTP/1.1\r\n".encode(),
        f"OPTIONS /e?{inj} HTTP/1.1\r\n".encode(),
    ]


def post(body: bytes, extra: str = "", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n{extra}{MARKED}"
    head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def chunked(chunks: list[bytes], extra: str = "") -> bytes:
    head = f"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{extra}{MARKED}"
    head += "Connection: close"
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return head.encode() + b"\r\n\r\n" + body


def gzip_bomb(decompressed_bytes: int) -> bytes:
    return gzip.compress(b"[" + b" " * decompressed_bytes + b"]", compresslevel=9)


GZIP_BOMB = gzip_bomb(20 << 20)  # 20 MiB of JSON whitespace in ~20 KiB


def raw_case(rng: random.Random, non_utf8: bool = True) -> Case:  # noqa: C901
    """A request written byte by byte: what a client library would refuse to send.

    `non_utf8`: mutations may put bytes that are not UTF-8 into header values (a Referer or
    User-Agent so mangled is stored with U+FFFD in place of each bad byte).
    """
    kind = rng.randrange(12)
    close = b"Connection: close\r\n\r\n"
    mark = MARKER.encode()
    if kind == 0:  # a request line past the parser's limit (8190 bytes)
        raw = b"GET /p.gif?u=" + b"a" * rng.randint(8200, 40_000) + mark + b" HTTP/1.1\r\n" + close
        return Case("long_url", raw)
    if kind == 1:  # percent escapes and bytes that are not UTF-8
        query = junk_text(rng, 60).encode("utf-8", "surrogatepass") + junk_bytes(rng, 8)
        query = query.replace(b" ", b"+").replace(b"\r", b"%0d").replace(b"\n", b"%0a")
        return Case("bad_escape", b"GET /p.gif?r=" + mark + b"&" + query + b" HTTP/1.1\r\n" + close)
    if kind == 2:
        return Case("header_injection", rng.choice(crlf_injections()) + b"Host: t\r\n" + close)
    if kind == 3:  # a header value with a bare CR, LF or NUL: refused by the parser
        sep = rng.choice([b"\r", b"\n", b"\x00", b"\r\r\n"])
        raw = VALID + b"User-Agent: a" + sep + INJECTED_HEADER.encode() + b": " + mark + b"\r\n"
        return Case("header_injection", raw + close)
    if kind == 4:  # a header line too long, or too many of them
        if rng.random() < 0.5:
            raw = VALID + b"Referer: " + b"r" * rng.randint(8200, 20_000) + mark + b"\r\n" + close
        else:
            raw = VALID + b"".join(b"X-%d: %s\r\n" % (i, mark) for i in range(200)) + close
        return Case("huge_headers", raw)
    if kind == 5:  # not HTTP at all: binary noise, a TLS hello, a bad method or version
        raw = rng.choice(
            [
                junk_bytes(rng, rng.randint(1, 600)) + b"\r\n" + MARKED.encode() + b"\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + junk_bytes(rng, 64) + mark,
                b"G\x00T /p.gif?r=" + mark + b" HTTP/1.1\r\n" + close,
                b"GET /p.gif?r=" + mark + b" HTTP/9.9\r\n" + close,
                b"GET /p.gif?" + mark + b"\r\n\r\n",
                b"GET  /p.gif?r=" + mark + b"  HTTP/1.1\r\n" + close,
                b"\r\n\r\n\r\n" + VALID + close,
            ]
        )
        return Case("bad_request_line", raw)
    if kind == 6:  # JSON that is broken, of the wrong shape, or not JSON
        body = rng.choice(
            [
                junk_bytes(rng, rng.randint(0, 300)),
                b'{"e": "open", "s": "' + mark + b'", "p": {"a": {"b": 1}}}',
                b'[{"e": 1}]',
                b"[" + b'{"e":"open"},' * 150 + b"{}]",
                b'{"e": "open", "r": "' + mark + b'\\r\\nX: 1", "zz": 1}',
                b'"' + b"\\ud800" * 50 + b'"',
                b"[" * 5000,
                b"",
            ]
        )
        extra = rng.choice(["", "Content-Type: application/json\r\n", "Content-Type: x/y\r\n"])
        return Case("bad_body", post(body, extra))
    if kind == 7:  # a length that lies, or two that disagree
        body = b'{"e":"open","s":"' + mark + b'"}'
        raw = rng.choice(
            [
                post(body, length=10**12),
                post(body, length=-1),
                post(body, extra="Content-Length: 3\r\n"),
                post(body, extra="Transfer-Encoding: chunked\r\n"),
                post(body, length=len(body) + 5) + b"\r\n\r\n",  # short body: waits, then closed
            ]
        )
        return Case("bad_length", raw)
    if kind == 8:  # chunked bodies: broken framing, or more than the 64 KiB limit
        if rng.random() < 0.5:
            raw = chunked([b"{}"]).replace(b"2\r\n", b"zz\r\n")
        else:
            raw = chunked([b"[" + b" " * 16_384] * 6 + [b"]"])
        return Case("bad_chunked", raw)
    if kind == 9:  # compressed bodies: a bomb, a broken stream, an unknown coding
        raw = rng.choice(
            [
                post(GZIP_BOMB, "Content-Encoding: gzip\r\nContent-Type: application/json\r\n"),
                post(b"\x1f\x8b\x08\x00" + junk_bytes(rng, 40), "Content-Encoding: gzip\r\n"),
                post(zlib.compress(b"{}")[:-3], "Content-Encoding: deflate\r\n"),
                post(b"{}", "Content-Encoding: br\r\n"),
                post(b"{}", "Content-Encoding: zz, gzip\r\n"),
            ]
        )
        return Case("compressed_body", raw)
    if kind == 10:  # bytes of a valid request flipped, dropped or repeated at random
        buf = bytearray(VALID + b"Referer: https://r.example/?" + mark + b"\r\n" + close)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(buf))
            op = rng.randrange(3)
            if op == 0:
                buf[at] = rng.getrandbits(8 if non_utf8 else 7)
            elif op == 1:
                del buf[at]
            else:
                buf[at:at] = buf[at : at + rng.randint(1, 40)]
        return Case("mutated", bytes(buf))
    # Pipelined: a good request, then junk on the same connection.
    return Case("pipelined", VALID + b"\r\n" + junk_bytes(rng, rng.randint(1, 200)))


def client_case(rng: random.Random) -> Case:
    """A request the HTTP client can send: odd queries, header values and JSON."""
    kind = rng.randrange(4)
    if kind == 0:
        params = "&".join(
            f"{rng.choice(['e', 's', 'c', 'r', 'u', 'ref', 'v', 'cur', 'bcid', 'p.x', 'sig'])}"
            f"={junk_text(rng, 40)}"
            for _ in range(rng.randint(0, 40))
        )
        return Case("odd_query", path=f"/p.gif?r={MARKER}&{params}")
    if kind == 1:
        value = "".join(rng.choice("ab;=,\"' é%\t") for _ in range(rng.randint(0, 300)))
        headers = {
            "User-Agent": value + MARKER,
            "Referer": f"https://{MARKER}.example/{value}",
            "Cookie": f"beacon_vid={value}",
            "X-Forwarded-For": f"{value}, 1.2.3.4",
            "DNT": rng.choice(["1", "0", value]),
            "Sec-Purpose": rng.choice(["prefetch", value]),
        }
        return Case("odd_headers", path=f"/p.gif?e=open&s={MARKER}", headers=headers)
    if kind == 2:
        path = rng.choice(["/c", "/p.gif", "/e", "/t.js", "/readyz", "/nope"])
        method = rng.choice(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
        return Case("odd_method", method=method, path=f"{path}?d={MARKER}&s={junk_text(rng, 20)}")
    docs = (
        lambda: {"e": rng.choice(["open", "click", "x", 1, None]), "s": junk_text(rng, 300)},
        lambda: {"e": "conversion", "v": junk_text(rng, 10), "cur": junk_text(rng, 4), "o": MARKER},
        lambda: {"e": "open", "p": {junk_text(rng, 70): junk_text(rng, 600) for _ in range(35)}},
        lambda: [{"e": "open", "r": MARKER}] * rng.randint(0, 120),
    )
    doc = rng.choice(docs)()  # only the one drawn is built
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    ctype = rng.choice(["application/json", "text/plain", "application/json; charset=latin-1"])
    headers = {"Content-Type": ctype, "X-M": MARKER}
    return Case("odd_json", method="POST", path="/e", headers=headers, body=body)
