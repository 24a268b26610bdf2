"""Control characters out of every stored string: no CR/LF from a request reaches a row,
and so no header or log line built from one.

A percent-encoded CR/LF (`r=alice%0D%0A`) is how header and log injection starts (CWE-93,
CWE-117); NUL and other controls break tools that read the rows. They are removed, not
replaced, so an id sent with a stray newline still matches the id without it.

Unicode bidirectional overrides and isolates go the same way: in a dashboard, a report or a
terminal they reorder the text around them, so a stored id or URL could read as another
(CVE-2021-42574, "Trojan Source").
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from contract.text import BIDI_CHARS, CONTROL_RE

BIDI_RE = re.compile(f"[{BIDI_CHARS}]")
NOTE = "control_chars"
BIDI_NOTE = "bidi_chars"  # counted apart: a reordering attempt, rarely an accident
# aiohttp decodes header bytes that are not UTF-8 with surrogateescape: they reach a row as
# lone surrogates, which no JSON encoder takes. Each becomes U+FFFD, as a browser shows it.
SURROGATE_RE = re.compile("[\ud800-\udfff]")
SURROGATE_NOTE = "invalid_utf8"


def clean(text: str) -> str:
    """`text` without control characters."""
    return CONTROL_RE.sub("", text)


def may_hold_controls(blob: bytes) -> bool:
    """False when the JSON of a row certainly holds no control character: the cheap test.

    JSON escapes C0 controls (a backslash appears), DEL is ASCII 0x7f, and C1 controls and
    U+2028/9 are non-ASCII: an ASCII row without either byte is clean. That is one C scan of
    bytes made anyway, instead of a check per field (~0.5 us against ~2.5 us per event).
    """
    return not blob.isascii() or b"\\" in blob or b"\x7f" in blob


def scrub_event(row: dict[str, Any], notes: list[str]) -> bool:
    """Remove control characters from every string of an event row in place; note it once
    (and bidi controls once more, under their own note).

    Returns True when something was removed. `str.isprintable` is a C loop that is false for
    every control character (and for some harmless ones, like a no-break space): the regex
    runs only for those rare strings.
    """
    removed: list[str] = []  # what was taken out, for the notes
    for key, value in row.items():
        if type(value) is str and not value.isprintable():
            cleaned = _strip(value, removed)
            if cleaned != value:
                row[key] = cleaned
    props = row.get("props")
    if props and not all(k.isprintable() and v.isprintable() for k, v in props.items()):
        cleaned_props = {}
        for key, value in props.items():
            new_key = _strip(key, removed)
            if new_key:  # a key made only of controls is dropped with its value
                cleaned_props[new_key] = _strip(value, removed)
        if cleaned_props != props:
            row["props"] = cleaned_props
    if not removed:
        return False
    found = "".join(removed)
    if BIDI_RE.search(found):
        notes.append(BIDI_NOTE)
    if BIDI_RE.sub("", found):  # any other: C0, C1, DEL, line separators
        notes.append(NOTE)
    return True


def _strip(text: str, removed: list[str]) -> str:
    """`text` without control characters; those removed are added to `removed`."""
    removed += CONTROL_RE.findall(text)
    return CONTROL_RE.sub("", text)


def serialise(row: dict[str, Any], notes: list[str]) -> bytes:
    """The row's JSON, with control characters removed and invalid UTF-8 replaced (noted)."""
    try:
        blob = orjson.dumps(row)
    except TypeError:  # rare, so the common path pays nothing for it
        replace_surrogates(row, notes)
        blob = orjson.dumps(row)
    if may_hold_controls(blob) and scrub_event(row, notes):
        blob = orjson.dumps(row)
    return blob


def replace_surrogates(row: dict[str, Any], notes: list[str]) -> None:
    """Lone surrogates in the row's strings (and props) become U+FFFD, in place; noted once."""
    for key, value in row.items():
        if type(value) is str:
            row[key] = SURROGATE_RE.sub("\ufffd", value)
    if props := row.get("props"):
        row["props"] = {
            SURROGATE_RE.sub("\ufffd", k): SURROGATE_RE.sub("\ufffd", v) for k, v in props.items()
        }
    notes.append(SURROGATE_NOTE)
