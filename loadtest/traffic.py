"""The requests a Beacon load test makes, each checked and written in the ledger.

Shared by the realistic mix (loadtest/locustfile.py) and the capacity run
(loadtest/capacity.py). The locust processes learn the run from their environment, set by
loadtest/locust_run.py:

- BEACON_SIGNING_KEYS: the collector's keys, to sign /c click URLs and the mail and ad pixels
  with the project's own code (collector/urls.py). Without it, clicks go as unsigned pixels.
- BEACON_LOADTEST_RUN: a tag put on every event (`p.loadtest`), so the run's rows can be
  counted in a store that holds other traffic.
- BEACON_LOADTEST_LEDGER_DIR: where each locust process writes its ledger (loadtest/ledger.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from locust import FastHttpUser, events

from collector.signing import Keyring, load_keyring
from collector.urls import click_url, pixel_url
from loadtest.ledger import Ledger

GIF_BYTES = 43
RUN_PROP = "loadtest"
# Why a request kind stores other than one event per request: printed beside the counts.
NOT_AN_EVENT = "the snippet's script, not an event"
HEAD_NOTE = "HEAD: redirected, nothing recorded"
PREFETCH_NOTE = "Sec-Purpose: prefetch: a click, stored flagged with its purpose"
GPC_DROP_NOTE = "Sec-GPC: the collector drops it (BEACON_DNT_POLICY=passive)"
BATCH_NOTE = "one request carries an array of 1-3 events"
# /c requests: method, a note on what it stores, headers, the events it must store.
PROBES: dict[str, tuple[str, str, dict[str, str], dict[str, int]]] = {
    "": ("GET", "", {}, {"click": 1}),
    "head": ("HEAD", HEAD_NOTE, {}, {}),
    "prefetch": ("GET", PREFETCH_NOTE, {"Sec-Purpose": "prefetch"}, {"click": 1}),
}


@dataclass(frozen=True)
class RunSettings:
    keyring: Keyring
    run_tag: str
    ledger_dir: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunSettings:
        ledger_dir = env.get("BEACON_LOADTEST_LEDGER_DIR", "")
        return cls(
            keyring=load_keyring(env.get("BEACON_SIGNING_KEYS", ""), None),
            run_tag=env.get("BEACON_LOADTEST_RUN", ""),
            ledger_dir=Path(ledger_dir) if ledger_dir else None,
        )


# A locust process is the entry point here: it has no `__main__` of ours to pass settings.
RUN = RunSettings.from_env(os.environ)
# One ledger per locust process, as locust keeps one statistics table per process.
LEDGER = Ledger()


@events.test_stop.add_listener
@events.quitting.add_listener
def _write_ledger(**_: Any) -> None:
    if RUN.ledger_dir is not None:
        LEDGER.write(RUN.ledger_dir)


def run_props() -> dict[str, str]:
    return {RUN_PROP: RUN.run_tag} if RUN.run_tag else {}


class BeaconUser(FastHttpUser):
    """One simulated person or slot with one user agent; every request goes to the ledger."""

    abstract = True
    user_agent = "Mozilla/5.0"
    requests_made = 0  # paced users (loadtest/capacity.py) count requests, not tasks

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {"User-Agent": self.user_agent, **(extra or {})}

    def pixel(
        self,
        label: str,
        query: str,
        event_type: str,
        *,
        stores: bool = True,
        note: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """GET /p.gif: always 200 with the GIF; `stores` False when the collector drops it."""
        self.requests_made += 1
        with (
            LEDGER.request(f"GET {label}", {event_type: 1}, note) as entry,
            self.client.get(
                "/p.gif?" + query, headers=self._headers(headers), name=label, catch_response=True
            ) as r,
        ):
            size = len(r.content or b"")
            if r.status_code == 200 and size == GIF_BYTES:
                entry.answered({event_type: 1} if stores else {})
                r.success()
            else:  # no answer, or a broken one: it may have been recorded before that
                entry.failed()
                r.failure(f"pixel answered {r.status_code} with {size} bytes")

    def post_events(
        self,
        label: str,
        batch: list[dict[str, Any]],
        note: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """POST /e as navigator.sendBeacon sends it (text/plain): 204, all events stored."""
        self.requests_made += 1
        event_type = batch[0]["e"]  # one type a batch, so a 503's count names its events
        for event in batch:
            event["p"] = {**event.get("p", {}), **run_props()}
        sent_headers = self._headers({"Content-Type": "text/plain", **(headers or {})})
        with (
            LEDGER.request(f"POST {label}", {event_type: len(batch)}, note) as entry,
            self.client.post(
                "/e", data=orjson.dumps(batch).decode(), headers=sent_headers, name=label,
                catch_response=True,
            ) as r,
        ):  # fmt: skip
            if r.status_code == 204:
                entry.answered({event_type: len(batch)})
                r.success()
                return
            body = r.content or b""
            if r.status_code == 503:  # busy: it says how many of the batch it kept
                entry.failed(recorded_of_busy(body, event_type))
            elif 400 <= r.status_code < 500:
                entry.failed({})
            else:
                entry.failed()
            r.failure(f"POST /e answered {r.status_code}: {body[:100]!r}")

    def script(self, label: str, etag: str = "") -> str:
        """GET /t.js (or its revalidation with If-None-Match): no event. Returns the ETag."""
        self.requests_made += 1
        headers = self._headers({"If-None-Match": etag} if etag else None)
        with (
            LEDGER.request(f"GET {label}", {}, NOT_AN_EVENT) as entry,
            self.client.get("/t.js", headers=headers, name=label, catch_response=True) as r,
        ):
            if r.status_code == (304 if etag else 200):
                entry.answered({})
                r.success()
                return str(r.headers.get("ETag", etag))
            entry.failed({})
            r.failure(f"/t.js answered {r.status_code}")
            return ""

    def click(
        self,
        label: str,
        destination: str,
        ids: Mapping[str, str],
        probe: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A signed /c link: 302 to the destination, not followed. Returns the click id the
        landing page gets. `probe` "head" (a link checker: redirected, nothing recorded) or
        "prefetch" (a browser's speculation: a click recorded with its purpose)."""
        method, note, probe_headers, sent = PROBES[probe]
        if not RUN.keyring:  # /c needs the collector's key: report the click by pixel
            if sent:
                query = plain_query({"e": "click", **ids, "u": destination})
                self.pixel(
                    "/p.gif click (no key for /c)", query, "click",
                    headers={**probe_headers, **(headers or {})},
                )  # fmt: skip
            return ""
        self.requests_made += 1
        url = click_url("", RUN.keyring, destination, props=run_props(), **ids)
        with (
            LEDGER.request(f"{method} {label}", sent, note) as entry,
            self.client.request(
                method, url, headers=self._headers({**probe_headers, **(headers or {})}),
                name=label,
                allow_redirects=False, catch_response=True,
            ) as r,
        ):  # fmt: skip
            location = str((r.headers or {}).get("Location", ""))
            click_id = dict(parse_qsl(urlsplit(location).query)).get("bcid", "")
            if r.status_code != 302 or not location.startswith(destination):
                entry.failed({} if not sent or r.status_code else None)
                r.failure(f"/c answered {r.status_code} to {location[:100]!r}")
            elif sent and not click_id:
                # A recorded click always gets its id; without one the collector could not
                # keep it (its buffer was full).
                entry.failed({})
                r.failure("302 without a click id: the click was not recorded")
            else:
                entry.answered(sent)
                r.success()
            return click_id

    def signed_pixel_query(self, event_type: str, **ids: str) -> str:
        """The query of a pixel URL signed as `beacon url` signs it (unsigned without keys)."""
        url = pixel_url("", RUN.keyring or None, event_type, props=run_props(), **ids)
        return url.partition("?")[2]


def recorded_of_busy(body: bytes, event_type: str) -> dict[str, int] | None:
    """What a 503 busy kept of a batch, from its `recorded` count; None if it does not say."""
    try:
        return {event_type: int(orjson.loads(body)["recorded"])}
    except (ValueError, KeyError, TypeError):
        return None


def plain_query(params: Mapping[str, str]) -> str:
    """An unsigned pixel query, as a page template writes it, with the run tag."""
    return urlencode({**params, **{f"p.{k}": v for k, v in run_props().items()}})


class Paced:
    """A wait_time that paces a user's requests (not tasks) to `user_rps` a second.

    Tasks make one to three requests, so locust's constant_throughput (tasks per second)
    would not give a known request rate. A user that falls behind (slow answers) does not
    burst to catch up: its schedule restarts, and the shortfall shows in the achieved rate.
    """

    user_rps = 5.0
    _origin_s = 0.0
    _origin_requests = 0
    requests_made = 0

    def wait_time(self) -> float:
        now = time.monotonic()
        if not self._origin_s:
            self._origin_s, self._origin_requests = now, self.requests_made
        due_s = self._origin_s + (self.requests_made - self._origin_requests) / self.user_rps
        if now - due_s > 1.0:
            self._origin_s, self._origin_requests = now, self.requests_made
            return 0.0
        return max(0.0, due_s - now)
