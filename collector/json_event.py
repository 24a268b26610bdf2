"""Validation of the events POSTed to /e: known string fields and a flat object of props."""

from __future__ import annotations

from typing import Any

import orjson

from collector import event as ev

PROP_SCALARS = (str, int, float, bool)
# Every reason a POSTed event is refused with here (besides collector/event.py's, which
# check_fields raises, and the prop notes, raised as reasons): beacon_events_dropped_total.
NOT_STRING = {key: f"{key}_not_string" for key in sorted(ev.KNOWN_KEYS)}
REJECT_REASONS = ("event_not_object", "props_not_object", "prop_value_not_scalar",
                  "unknown_field", *ev.PROP_NOTES, *NOT_STRING.values())  # fmt: skip


def parse_json_event(item: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Validate one POSTed event: known string fields and a flat `p` object of scalars, and
    everything else recording it could refuse, so a batch is refused before any is stored."""
    if not isinstance(item, dict):
        raise ev.Rejected("event_not_object")
    fields: dict[str, str] = {}
    props: dict[str, str] = {}
    for key, value in item.items():
        if key == "p":
            if not isinstance(value, dict):
                raise ev.Rejected("props_not_object")
            notes: list[str] = []
            pairs = []
            for pkey, pvalue in value.items():
                if not isinstance(pvalue, PROP_SCALARS):
                    raise ev.Rejected("prop_value_not_scalar")
                pairs.append(
                    (pkey, pvalue if isinstance(pvalue, str) else orjson.dumps(pvalue).decode())
                )
            props = ev.clean_props(pairs, notes)
            if notes:  # an API client can fix its payload: say what is wrong instead of cutting
                raise ev.Rejected(notes[0])
        elif key in ev.KNOWN_KEYS:
            fields[key] = field_text(key, value)
        else:
            raise ev.Rejected("unknown_field")
    if fields.get("e", "pageview") not in ev.EVENT_TYPES:
        raise ev.Rejected("bad_event_type")  # "" too: a JSON client names a type or none
    ev.check_fields(fields)  # ids, value, currency: what recording it would refuse
    return fields, props


def field_text(key: str, value: Any) -> str:
    """A known field's value as text; raises Rejected for what cannot be one."""
    if isinstance(value, str):
        return value
    if key == "v" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a conversion value may come as a JSON number
    if key == "consent" and isinstance(value, bool):
        return "1" if value else "0"
    raise ev.Rejected(NOT_STRING[key])
