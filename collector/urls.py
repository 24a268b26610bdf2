"""Ready-to-paste tracking URLs and HTML snippets: the library behind `beacon url`.

Call these from the code that renders an email (one open pixel and one set of links per
recipient) or an ad tag; the same keys must be configured on the collector.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import orjson

from collector import event as ev
from collector.destinations import CLICK_PATH, check_destination
from collector.signing import SIG_PARAM, Keyring, sign

PIXEL_PATH = "/p.gif"
KINDS = ("open", "click", "impression", "conversion")
# Characters RFC 3986 allows unescaped in a path, query or fragment, plus "%" (already encoded).
URL_SAFE = "/?#[]@!$&'()*+,;=:-._~%"


def _params(
    event_type: str, ids: Mapping[str, str], props: Mapping[str, str] | None
) -> dict[str, str]:
    """Short parameters in a stable order; empty values are left out (and not signed)."""
    params = {"e": event_type} if event_type else {}
    params.update({k: v for k, v in ids.items() if v})
    params.update({f"p.{k}": v for k, v in (props or {}).items()})
    return params


def _url(base: str, path: str, params: dict[str, str], keyring: Keyring | None) -> str:
    if keyring:
        params = {**params, SIG_PARAM: sign(keyring, path, params)}
    return f"{base.rstrip('/')}{path}?{urlencode(params, quote_via=quote)}"


def pixel_url(
    base: str,
    keyring: Keyring | None,
    event_type: str,
    *,
    site: str = "",
    campaign: str = "",
    message: str = "",
    recipient: str = "",
    ad: str = "",
    value: str = "",
    currency: str = "",
    order_id: str = "",
    click_id: str = "",
    props: Mapping[str, str] | None = None,
) -> str:
    """An open, impression or conversion pixel URL, signed when `keyring` has a key."""
    ids = {"s": site, "c": campaign, "m": message, "r": recipient, "ad": ad}
    ids.update(v=value, cur=currency, o=order_id, bcid=click_id)
    return _url(base, PIXEL_PATH, _params(event_type, ids, props), keyring)


def normalise_destination(url: str) -> str:
    """A destination as a browser would send it: IDNA host, percent-encoded non-ASCII.

    Raises ValueError with the reason when the result is still not a safe http(s) URL.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = parts.netloc
        if host and not host.isascii():
            netloc = netloc.replace(host, host.encode("idna").decode())
    except (ValueError, UnicodeError):
        raise ValueError("bad_url") from None
    path, query, fragment = (
        quote(p, safe=URL_SAFE) for p in (parts.path, parts.query, parts.fragment)
    )
    normal = urlunsplit((parts.scheme, netloc, path, query, fragment))
    reason = check_destination(normal)
    if reason:
        raise ValueError(reason)
    return normal


def click_url(
    base: str,
    keyring: Keyring,
    destination: str,
    *,
    site: str = "",
    campaign: str = "",
    message: str = "",
    recipient: str = "",
    ad: str = "",
    props: Mapping[str, str] | None = None,
) -> str:
    """A signed /c URL for a link; raises ValueError for a destination /c would refuse."""
    if not keyring:
        raise ValueError("click links need a signing key (BEACON_SIGNING_KEYS)")
    params = {"d": normalise_destination(destination)}
    params.update(
        _params("", {"s": site, "c": campaign, "m": message, "r": recipient, "ad": ad}, props)
    )
    return _url(base, CLICK_PATH, params, keyring)


def img_tag(url: str) -> str:
    return (
        f'<img src="{html.escape(url)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0">'
    )


def link_tag(url: str, text: str) -> str:
    return f'<a href="{html.escape(url)}">{html.escape(text)}</a>'


# -- the `beacon url` command ----------------------------------------------------------------

COMMON_OPTIONS = (
    ("--site", "site or property (s)"),
    ("--campaign", "campaign (c)"),
    ("--ad", "ad (ad)"),
)
EMAIL_OPTIONS = (("--message", "message, one per email sent (m)"), ("--recipient", "recipient (r)"))
KIND_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "open": EMAIL_OPTIONS,
    "click": (
        *EMAIL_OPTIONS,
        ("--dest", "where the link goes (http or https)"),
        ("--text", "link text"),
    ),
    "impression": (),
    "conversion": (
        ("--value", "order value, e.g. 49.90"),
        ("--currency", "ISO 4217 code, e.g. EUR"),
        ("--order", "order id: a repeated one counts once"),
        ("--click-id", "the bcid parameter the landing page received"),
    ),
}
KIND_HELP = {
    "open": "email open pixel for one message and recipient",
    "click": "tracked link through /c (always signed)",
    "impression": "ad impression pixel",
    "conversion": "conversion pixel for the thank-you page",
}


def add_url_kinds(sub: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`beacon url KIND ...` parsers; the caller adds its shared flags to each."""
    kinds = sub.add_subparsers(dest="url_kind", required=True)
    parsers = []
    for kind in KINDS:
        p = kinds.add_parser(kind, help=KIND_HELP[kind], description=KIND_HELP[kind])
        for flag, text in (*COMMON_OPTIONS, *KIND_OPTIONS[kind]):
            p.add_argument(flag, default="", help=text)
        p.add_argument(
            "-p",
            "--prop",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="custom property (p.KEY)",
        )
        p.add_argument("--base", help="collector URL (default BEACON_PUBLIC_URL)")
        if kind != "click":
            p.add_argument("--unsigned", action="store_true", help="leave the URL unsigned")
        p.add_argument("--format", choices=("text", "json"), default="text")
        parsers.append(p)
    return parsers


def build(args: argparse.Namespace, base: str, keyring: Keyring) -> dict[str, str]:
    """{"url": ..., "html": ...} for the parsed `beacon url` arguments; raises ValueError."""
    props = {}
    for item in args.prop:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--prop {item!r}: expected KEY=VALUE")
        props[key] = value
    base = args.base or base
    ids = {"site": args.site, "campaign": args.campaign, "ad": args.ad}
    if args.url_kind == "click":
        url = click_url(
            base,
            keyring,
            args.dest,
            message=args.message,
            recipient=args.recipient,
            props=props,
            **ids,
        )
        return {"url": url, "html": link_tag(url, args.text or args.dest)}
    keys = None if args.unsigned else keyring
    if not args.unsigned and not keyring:
        raise ValueError("no signing key: set BEACON_SIGNING_KEYS, or pass --unsigned")
    extra: dict[str, str] = {}
    if args.url_kind == "open":
        extra = {"message": args.message, "recipient": args.recipient}
    elif args.url_kind == "conversion":
        given = {"v": args.value, "cur": args.currency, "o": args.order, "bcid": args.click_id}
        notes: list[str] = []
        try:  # the collector's own checks, so a bad value fails here, not in the field
            ev.conversion_fields(given, notes)
        except ev.Rejected as exc:
            raise ValueError(exc.reason) from None
        if notes:
            raise ValueError(notes[0])
        extra = {
            "value": args.value,
            "currency": args.currency,
            "order_id": args.order,
            "click_id": args.click_id,
        }
    url = pixel_url(base, keys, args.url_kind, props=props, **ids, **extra)
    return {"url": url, "html": img_tag(url)}


def render(result: Mapping[str, str], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(dict(result), option=orjson.OPT_INDENT_2).decode() + "\n"
    return f"{result['url']}\n{result['html']}\n"


__all__: Sequence[str] = ("click_url", "img_tag", "link_tag", "normalise_destination", "pixel_url")
