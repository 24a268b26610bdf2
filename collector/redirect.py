"""GET /c: the click redirect. It goes only where a valid signature says, and only to http(s).

Never an open redirect (CWE-601, https://cwe.mitre.org/data/definitions/601.html): the
signature binds the destination to the ids, and the destination is checked again on its own,
so a leaked key still cannot send a reader to `javascript:` or through a parser confusion.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from collector import event as ev
from collector import signing
from collector.destinations import CLICK_PATH as PATH
from collector.destinations import check_destination
from collector.handlers import Collector
from collector.loglimit import LimitedLog
from collector.signing import VALID, Keyring, verify

CLICK_ID_PARAM = "bcid"

log = logging.getLogger("beacon.collector")

# Why a link was refused, for whoever reads the log: the counter says how often, this says what
# to do. The ids and the destination stay out of the log (they may name a person).
REFUSAL_HINTS = {
    "signing_disabled": "this collector has no signing key",
    signing.UNSIGNED: "the link carries no signature",
    signing.UNKNOWN_KEY: "signed with a key id this collector does not have (BEACON_SIGNING_KEYS, "
    "BEACON_SIGNING_KEY_FILE, or the data directory's kept signing-keys file)",
    signing.BAD_SIGNATURE: "the link was changed after signing, or signed with another secret",
    signing.MALFORMED: "the signature is cut off or mangled (a wrapped or truncated link)",
    signing.DUPLICATE_PARAM: "a signed parameter appears twice",
}

# Every response here: nothing cached (each click is an event), and the tracking URL with its
# ids and signature is not sent on to the destination as a Referer.
COMMON_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
REFUSED_PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>Link not valid</title></head>"
    b"<body><h1>This link is not valid</h1>"
    b"<p>It may have been changed or cut off. Please use the link in the original message.</p>"
    b"</body></html>\n"
)
REFUSED_HEADERS = CIMultiDictProxy(
    CIMultiDict({**COMMON_HEADERS, "Content-Type": "text/html; charset=utf-8"})
)


def with_click_id(url: str, click_id: str) -> str:
    """The landing URL with the click id as a query parameter, before any fragment."""
    base, hash_, fragment = url.partition("#")
    sep = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        sep = ""
    return f"{base}{sep}{CLICK_ID_PARAM}={click_id}{hash_}{fragment}"


class ClickRedirect:
    """The /c handler: verify, check the destination, record the click, answer 302."""

    def __init__(self, collector: Collector, keyring: Keyring) -> None:
        self.collector = collector
        self.keyring = keyring
        self.metrics = collector.metrics
        self.fallback_url = collector.settings.click_fallback_url
        self.refusals = LimitedLog(log)

    async def click(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome, response = self._click(request)
        self.collector.metrics.requests.labels("click", outcome).inc()
        self.metrics.hot_path_seconds.labels("click").observe(time.perf_counter() - started)
        return response

    def _click(self, request: web.Request) -> tuple[str, web.Response]:
        reason = self._refusal(request)
        if reason:
            self.metrics.click_refused.labels(reason).inc()
            hint = REFUSAL_HINTS.get(reason, "the destination is not a plain http(s) URL")
            self.refusals.warning(
                reason, "click link refused (%s): %s; key ids here: %s",
                reason, hint, ", ".join(self.keyring.kids) or "none",
            )  # fmt: skip
            if self.fallback_url:
                self.metrics.click_redirects.labels("fallback").inc()
                return "refused", self._redirect(self.fallback_url)
            self.metrics.click_redirects.labels("refused").inc()
            return "refused", web.Response(status=400, body=REFUSED_PAGE, headers=REFUSED_HEADERS)
        destination = request.query["d"]
        self.metrics.click_redirects.labels("redirected").inc()
        # Link checkers probe with HEAD: they get where the link goes, and it is no click. A
        # browser's prefetch is recorded with its `purpose` (Collector.prepare) and gets the
        # click id: when the person follows the link, the browser uses the prefetched answer
        # and sends nothing more, so this is the only request of that click.
        if request.method == "HEAD":
            return "head", self._redirect(destination)
        outcome, click_id = self._record(request, destination)
        if outcome == "recorded" and click_id:
            # Not for a row kept without consent (aggregate): it keeps no click id, and the
            # id's time bits would tell the landing page the very millisecond of the click.
            destination = with_click_id(destination, click_id)
        return outcome, self._redirect(destination)

    def _refusal(self, request: web.Request) -> str:
        if not self.keyring:
            return "signing_disabled"
        signature = verify(self.keyring, PATH, request.query.items())
        self.metrics.signature_checks.labels("click", signature).inc()
        if signature != VALID:
            return signature
        return check_destination(request.query.get("d", ""))

    def _record(self, request: web.Request, destination: str) -> tuple[str, str]:
        """The click's outcome label, and the click id its row keeps ("" when none)."""
        fields = {k: v for k, v in request.query.items() if k in ev.KNOWN_KEYS}
        fields["e"] = "click"  # whatever `e` said: this endpoint records clicks only
        notes: list[str] = []
        props = ev.clean_props(
            ((k[2:], v) for k, v in request.query.items() if k.startswith("p.")), notes
        )
        collector = self.collector
        try:
            prepared = collector.prepare(
                request, fields, props, destination, "redirect", notes, verified=True
            )
        except ev.Rejected as exc:
            # Signed but unstorable (an id over its limit): still take the reader there.
            self.metrics.events_dropped.labels(exc.reason).inc()
            return "rejected", ""
        return collector.commit(prepared), prepared.click_id

    @staticmethod
    def _redirect(location: str) -> web.Response:
        return web.Response(status=302, headers={**COMMON_HEADERS, "Location": location})
