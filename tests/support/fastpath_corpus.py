"""Raw pixel requests for the fast-path tests: one corpus through both paths and both parsers."""

from __future__ import annotations

UA = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def pixel(query: str, *fields: bytes) -> bytes:
    target = f"/p.gif?{query}" if query else "/p.gif"
    return b"\r\n".join([f"GET {target} HTTP/1.1".encode(), b"Host: beacon.test", *fields]) + (
        b"\r\n\r\n"
    )


PAGE = "https%3A%2F%2Fshop.test%2Fitem%3Futm_source%3Dnews%26utm_medium%3Demail%26id%3D7%26x%3D"
CORPUS = [
    pixel("e=open&s=news&c=spring&m=m1&r=alice", b"User-Agent: Mozilla/5.0 (GoogleImageProxy)"),
    pixel(f"s=shop&u={PAGE}&ref=https%3A%2F%2Fsearch.test%2F%3Fq%3Dshoes", UA),
    pixel("s=a%2Bb&c=x%2By&r=%2B", UA),
    pixel("s=bad%zz&c=%&m=%e9%28&r=%C3%A9", UA),
    pixel("s=plus&c=spring+sale&p.note=a+b+c", UA),
    pixel("s=blank&c=&m=&r=", UA),
    pixel("s=one&s=two&c=a&c=b&p.k=1&p.k=2", UA),
    pixel("e=custom&s=props&p.plan=pro&p.n=3&p.=empty&p.long=" + "v" * 600, UA),
    pixel("s=long&u=https%3A%2F%2Flong.test%2F" + "a" * 3000, UA),
    pixel("s=ua", b"User-Agent: Bot\xff\xfe/1.0"),
    pixel("s=referer", UA, b"Referer: https://r.test/\xff\xfe?utm_source=x&q=1"),
    pixel("s=dnt", UA, b"DNT: 1"),
    pixel("s=gpc", UA, b"Sec-GPC: 1"),
    pixel("s=prefetch", UA, b"Sec-Purpose: prefetch"),
    pixel("s=purpose", UA, b"Purpose: prefetch"),
    pixel("s=case", b"user-AGENT: Odd/1.0", b"rEFERER: https://case.test/a?utm_campaign=c"),
    pixel("s=spaces", b"User-Agent: \t  Spaced UA/2  \t", b"Referer:https://tight.test/"),
    pixel("s=keepalive", UA, b"Connection: keep-alive"),
    pixel("e=nonsense&s=unknown", UA),
    pixel("s=granted&consent=1", UA),
    pixel("s=denied&consent=0", UA),
    pixel("s=odd-consent&consent=maybe", UA),
    pixel("e=conversion&s=shop&v=12.50&cur=eur&o=A1&bcid=not-a-uuid", UA),
    pixel("e=conversion&s=shop&v=abc", UA),
    pixel("", UA),
    pixel("e=engagement&s=eng&p.depth=75&u=https://eng.test/%C3%A9t%C3%A9", UA),
    pixel("e=click&s=ads&ad=ad1;x=1&r=semi", UA),
    pixel("s=" + "x" * 300, UA),
    pixel("s=headers", UA, b"Accept: image/*", b"X-Forwarded-For: 203.0.113.9", b"X-Empty:"),
    pixel("s=chars&p.q=a|b{c}\"d<e>\\^`'!$*", UA),
]
