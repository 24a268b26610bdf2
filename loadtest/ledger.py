"""What a load test sent and what each request should leave in the store, per request kind.

Every request of the locustfiles goes through `Ledger.request`: it counts the events the
request carries ("sent"), and when the answer comes back, the events the collector must store
for it ("expected"). Until then they are "maybe": a request that failed without a clear answer
(a timeout, a reset) or was still in flight when locust stopped may or may not have been
stored. A failure whose answer says what was kept (a 400, a 503 busy) moves the rest to
"refused". So the store must hold between `expected` and `expected + maybe` of each type.

Each locust process (one, or each worker of `--processes N`) writes its own ledger file when
the test stops and when it quits; `merge` adds them up. Files, not locust's worker reports:
the master waits only half a second for the last of those.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

LEDGER_GLOB = "ledger-*.json"


@dataclass
class Row:
    """One request kind: how many were answered or failed, and their events by type."""

    note: str = ""
    started: int = 0
    answered: int = 0
    failed: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    maybe: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # failed, and said so: not stored

    @property
    def in_flight(self) -> int:
        return self.started - self.answered - self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "note": self.note,
            "started": self.started,
            "answered": self.answered,
            "failed": self.failed,
            "sent": dict(+self.sent),
            "expected": dict(+self.expected),
            "maybe": dict(+self.maybe),
            "refused": dict(+self.refused),
        }

    def add(self, other: Mapping[str, Any]) -> None:
        self.note = self.note or other.get("note", "")
        for name in ("started", "answered", "failed"):
            setattr(self, name, getattr(self, name) + int(other.get(name, 0)))
        for name in ("sent", "expected", "maybe", "refused"):
            getattr(self, name).update(other.get(name, {}))


class Request:
    """One request's bookkeeping; call `answered` or `failed` once, or it stays in flight."""

    def __init__(self, row: Row, sent: Mapping[str, int]) -> None:
        self.row = row
        self.sent = sent
        self.done = False

    def answered(self, stored: Mapping[str, int]) -> None:
        """The collector answered as it must: `stored` is what it keeps of this request."""
        self._settle(stored)
        self.row.answered += 1

    def failed(self, stored: Mapping[str, int] | None = None) -> None:
        """A wrong or missing answer; `stored` when the answer says what was kept (a 503 busy
        names how many events of its batch were recorded, a 400 keeps none), else unknown."""
        if stored is not None:
            self._settle(stored)
            self.row.refused.update(self.sent)
            self.row.refused.subtract(stored)
        else:
            assert not self.done, "a request is settled once"
            self.done = True  # its events stay "maybe"
        self.row.failed += 1

    def _settle(self, stored: Mapping[str, int]) -> None:
        assert not self.done, "a request is settled once"
        self.done = True
        self.row.maybe.subtract(self.sent)
        self.row.expected.update(stored)


class Ledger:
    """Per-process counts by request label (the same name locust's statistics use)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    @contextmanager
    def request(self, label: str, sent: Mapping[str, int], note: str = "") -> Iterator[Request]:
        row = self.rows.get(label)
        if row is None:
            row = self.rows[label] = Row(note=note)
        row.started += 1
        row.sent.update(sent)
        row.maybe.update(sent)  # until the answer says otherwise
        yield Request(row, sent)

    def to_json(self) -> dict[str, Any]:
        return {label: row.to_json() for label, row in self.rows.items()}

    def write(self, directory: Path) -> None:
        """This process's file, replaced atomically (it is written at stop and at quit)."""
        if not self.rows:
            return  # a master process sends nothing
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"ledger-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.to_json()))
        tmp.replace(path)


def merge(directory: Path) -> dict[str, Row]:
    """Every process's ledger in `directory`, added up by label."""
    rows: dict[str, Row] = {}
    for path in sorted(directory.glob(LEDGER_GLOB)):
        for label, data in orjson.loads(path.read_bytes()).items():
            rows.setdefault(label, Row()).add(data)
    return rows


def totals(rows: Mapping[str, Row], name: str) -> Counter[str]:
    """One counter (`sent`, `expected`, `maybe`, `refused`) summed over every request kind."""
    total: Counter[str] = Counter()
    for row in rows.values():
        total.update(getattr(row, name))
    return +total  # drop zeros
