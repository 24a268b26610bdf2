"""Numbers that come from outside (cookies, query and form values, JSON strings, request
bodies), read as ASCII decimal digits and nothing else.

`str.isdigit()` is true for "²", "①" and hundreds of other characters; `int()` refuses some
of those (a ValueError where the check promised digits: a 500 or a traceback), reads others
as digits of another script ("٣" is 3, and so is the fullwidth U+FF13), and also takes
spaces, a sign and underscores. None of that is a number a client of Beacon has reason to
send. This module imports nothing of Beacon, so every part can use it.
"""

from __future__ import annotations


def parse_uint(
    text: str, max_value: int, *, min_value: int = 0, canonical: bool = False
) -> int | None:
    """`text` as an integer in [min_value, max_value], or None when it is anything else.

    Only ASCII 0-9, at least one, no sign, space or underscore. At most as many digits as
    `max_value` has, so a long string costs nothing (and never meets `int()`'s own limit of
    4300 digits, a ValueError). `canonical`: also no leading zero, i.e. the form `str(n)`
    prints, for values Beacon itself issued and so knows the form of.
    """
    if not (type(text) is str and text.isascii() and text.isdigit()):
        return None  # on ASCII text, isdigit() is true for 0-9 only
    if len(text) > len(str(max_value)):
        return None
    if canonical and len(text) > 1 and text[0] == "0":
        return None
    value = int(text)
    return value if min_value <= value <= max_value else None
