"""Known crawlers by user agent: the patterns of the crawler-user-agents package (the maintained
list of github.com/monperrus/crawler-user-agents, MIT), less the few that match people.

Matched once per distinct user agent (consumers/useragent.py keeps the result in its LRU), with
ua-parser's Rust core, which runs a large set of regexes behind a literal prefilter, when it is
installed; Python's re otherwise. docs/performance.md "Consumer" has what each costs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache

from crawleruseragents import CRAWLER_USER_AGENTS_DATA

# Patterns of the list (1.67.0) that also match people's browsers, found by running through it
# the agents ua-parser calls no bot among uap-core's test agents (tests/test_ua.yaml,
# test_device.yaml: 17,576) and three dumps of real traffic (mwnciau/user_agent_dumps: the top
# agents, 2019-2023 web logs, intoli's May 2026 browsers: ~217,000), then reading the patterns
# whose instances look like browsers. Each is narrowed to what still matches every instance the
# list gives for it, or dropped (None) when nothing in it tells the crawler from a person. A
# pattern named here that the list no longer has fails tests/unit/test_crawlers.py: look again
# when the pin moves.
NARROWED: dict[str, str | None] = {
    # Facebook's in-app browser: a person who tapped a link in the app (uap-core issue #665
    # and inapp-spy issue #57 show it on phones). The list's one instance is that browser.
    "MetaIAB Facebook": None,
    # An Android 15 build number (OPPO, OnePlus, realme phones): every browser on those phones.
    r"AP3A\.240617\.008": None,
    r"008\/": r"\b008/",  # 80legs' "008/0.83"; not Opera Mini "4.4.39008/", nor "sprd-L008/"
    "Butterfly": "Butterfly/",  # Topsy's crawler; not the HTC Butterfly phones
    r"RED\/": r"\bRED/",  # redbot.org; not the WIRED app ("WIRED/3.2")
    # Entireweb's Speedy Spider; not HTC's "speedy" phone in its mail app's agent.
    "speedy": "[Ss]peedy[ _][Ss]pider",
    # Waseda's Sonic and RankSonic; not ViewSonic tablets, nor Slack's desktop app ("Sonic
    # Slack_SSB/4.36").
    "Sonic": r"\bSonic/|RankSonic",
}
# The Python matcher's regexes each join this many patterns: one alternation of all of them
# costs ~3x as much a miss, one regex each ~1.5x (docs/performance.md "Consumer").
PY_CHUNK_PATTERNS = 25

Matcher = Callable[[str], bool]


def patterns() -> tuple[str, ...]:
    """The list's patterns, with NARROWED applied (case-sensitive, as the list writes them)."""
    out = []
    for entry in CRAWLER_USER_AGENTS_DATA:
        pattern = NARROWED.get(entry["pattern"], entry["pattern"])
        if pattern is not None:
            out.append(pattern)
    return tuple(out)


def python_matcher(pats: Iterable[str]) -> Matcher:
    """`pats` with Python's re: one alternation per PY_CHUNK_PATTERNS patterns."""
    pats = list(pats)
    chunks = [
        re.compile("|".join(f"(?:{p})" for p in pats[i : i + PY_CHUNK_PATTERNS]))
        for i in range(0, len(pats), PY_CHUNK_PATTERNS)
    ]
    return lambda ua: any(chunk.search(ua) for chunk in chunks)


def rust_matcher(pats: Iterable[str]) -> Matcher:
    """`pats` with ua-parser-rs (the Rust regex crate behind an Aho-Corasick prefilter): its
    user-agent extractor answers with the first pattern that matches, or None."""
    from ua_parser_rs import UserAgentExtractor  # type: ignore[import-not-found,unused-ignore]

    # (regex, family, major, minor, patch, patch_minor): the family is a constant here.
    extractor = UserAgentExtractor((p, "crawler", None, None, None, None) for p in pats)
    return lambda ua: extractor.extract(ua) is not None


@cache
def best_matcher() -> Matcher:
    """The Rust matcher when ua-parser-rs is installed (as for ua-parser's own core), the
    Python one otherwise; built once a process (~20 ms), immutable, shared."""
    try:
        return rust_matcher(patterns())
    except ImportError:  # ua-parser-rs missing: the same answers, ~50x slower a miss
        return python_matcher(patterns())
