"""The sent-versus-stored printout of a load test: per request kind, per event type, and the
arithmetic from requests to events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from loadtest.ledger import Row, totals
from loadtest.reconcile import Stored, arithmetic, expected_by_transport


def counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counter.items()) if n) or "-"


def table(header: Sequence[str], lines: Sequence[Sequence[object]]) -> list[str]:
    """Columns padded to their widest cell; the first one left-aligned, numbers right."""
    cells = [[str(c) for c in header], *([str(c) for c in line] for line in lines)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    out = []
    for row in cells:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) if c[:1].isdigit() or c[:1] in "+-" else c.ljust(w)
                  for c, w in zip(row[1:], widths[1:], strict=True)]  # fmt: skip
        out.append("  ".join(parts).rstrip())
    return out


def request_lines(rows: Mapping[str, Row]) -> list[str]:
    lines = [
        (label, row.answered, row.failed, row.in_flight, counts(row.sent), counts(+row.expected),
         row.note)
        for label, row in sorted(rows.items())
    ]  # fmt: skip
    header = ("request", "answered", "failed", "in flight", "events sent", "should store", "why")
    return table(header, lines)


def by_type(rows: Mapping[str, Row], stored: Counter[str]) -> dict[str, dict[str, int]]:
    """Per event type: requests carrying it, sent, dropped by design, refused, uncertain,
    should store, stored."""
    out: dict[str, dict[str, int]] = {}
    for row in rows.values():
        for kind, sent in row.sent.items():
            figures = out.setdefault(kind, Counter())
            figures["requests"] += row.started
            figures["sent"] += sent
            figures["should_store"] += row.expected[kind]
            figures["uncertain"] += row.maybe[kind]
            figures["refused"] += row.refused[kind]
    for kind in set(stored) - set(out):  # stored but never sent: shows as a difference
        out[kind] = Counter()
    for kind, figures in out.items():
        figures["dropped_by_design"] = (
            figures["sent"] - figures["should_store"] - figures["uncertain"] - figures["refused"]
        )
        figures["stored"] = stored[kind]
    return {kind: dict(figures) for kind, figures in sorted(out.items())}


def agrees(figures: Mapping[str, int]) -> bool:
    low = figures.get("should_store", 0)
    return low <= figures.get("stored", 0) <= low + figures.get("uncertain", 0)


def type_lines(types: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = []
    for kind, f in types.items():
        should = str(f.get("should_store", 0))
        if f.get("uncertain"):
            should += f" (+0..{f['uncertain']})"
        diff = f.get("stored", 0) - f.get("should_store", 0)
        lines.append((kind, f.get("requests", 0), f.get("sent", 0), f.get("dropped_by_design", 0),
                      f.get("refused", 0), should, f.get("stored", 0), f"{diff:+d}",
                      "ok" if agrees(f) else "MISMATCH"))  # fmt: skip
    header = ("event type", "requests", "sent", "dropped by design", "refused", "should store",
              "stored", "stored - should", "")  # fmt: skip
    return table(header, lines)


def explanation(rows: Mapping[str, Row], stored: Stored) -> list[str]:
    """Why N requests are not N events, and where the events went, term by term."""
    a = arithmetic(rows)

    def labels(pick: Callable[[Row], bool]) -> str:
        return ", ".join(sorted(label for label, row in rows.items() if pick(row))) or "none"

    dropped = labels(lambda r: r.sent.total() > (r.expected + r.maybe + r.refused).total())
    return [
        f"{a['requests']} requests - {a['not_events']} that are not events"
        f" ({labels(lambda r: not r.sent)}) + {a['extra_in_batches']} more events than requests"
        f" in POST /e arrays = {a['sent']} events sent",
        f"{a['sent']} sent - {a['dropped_by_design']} dropped by design ({dropped})"
        f" - {a['refused']} refused by the collector ({labels(lambda r: bool(+r.refused))})"
        f" - {a['uncertain']} uncertain (failed or in flight when locust stopped)"
        f" = {a['expected']} should be stored; {stored.by_type.total()} stored"
        + (f" ({stored.by_type.total() - a['expected']} of the uncertain reached the store)"
           if a["uncertain"] else ""),
    ]  # fmt: skip


def collector_lines(
    counters: Mapping[str, Mapping[str, float]], rows: Mapping[str, Row]
) -> list[str]:
    accepted = {k: int(v) for k, v in counters.get("accepted", {}).items()}
    dropped = {k: int(v) for k, v in counters.get("dropped", {}).items()}
    a = arithmetic(rows)
    return [
        f"collector /metrics: accepted {sum(accepted.values())} ({counts(accepted)}); should "
        f"store {a['expected']} ({counts(expected_by_transport(rows))})",
        f"collector /metrics: dropped {sum(dropped.values())} ({counts(dropped)}); dropped by "
        f"design {a['dropped_by_design']}, refused {a['refused']}",
    ]


def summary(
    rows: Mapping[str, Row], stored: Stored | None, counters: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Everything printed, as JSON for scripts and tests."""
    types = by_type(rows, stored.by_type if stored else Counter())
    return {
        "requests": {label: row.to_json() for label, row in rows.items()},
        "by_type": types,
        "arithmetic": arithmetic(rows),
        "stored_by_transport": dict(stored.by_transport) if stored else None,
        "expected_by_transport": dict(expected_by_transport(rows)),
        "store_wait": {"seconds": round(stored.waited_s, 1), "ended": stored.how}
        if stored
        else None,
        "collector": counters,
        "sent_total": totals(rows, "sent").total(),
        "agrees": bool(stored) and all(agrees(f) for f in types.values()),
    }
