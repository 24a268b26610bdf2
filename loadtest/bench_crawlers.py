"""The crawler list's cost per distinct user agent (a miss of the UA LRU), by way of matching.

    python -m loadtest.bench_crawlers [--distinct 3000] [--rounds 3]

Agents: bench_enrich's browser and bot builds (`--distinct`) and every instance the crawler
list gives. Each way is timed over all of them in turn, `--rounds` times alternating (the
machine is shared: the best round is shown), beside ua-parser's own parse of the same agents.
Prints figures; not a timed test.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable

from crawleruseragents import CRAWLER_USER_AGENTS_DATA

from consumers import crawlers
from consumers.useragent import UserAgentParser
from loadtest.bench_enrich import distinct_user_agents


def ways(patterns: tuple[str, ...]) -> dict[str, Callable[[str], object]]:
    """Each way of matching, and ua-parser's parse (without the list) for scale."""
    one = re.compile("|".join(f"(?:{p})" for p in patterns))
    each = [re.compile(p) for p in patterns]
    parser = UserAgentParser(1, crawlers=lambda ua: False)
    return {
        "one alternation (re)": lambda ua: one.search(ua) is not None,
        "a loop, one regex each (re)": lambda ua: any(r.search(ua) for r in each),
        f"alternations of {crawlers.PY_CHUNK_PATTERNS} (re)": crawlers.python_matcher(patterns),
        "ua-parser-rs extractor (Rust)": crawlers.rust_matcher(patterns),
        "ua-parser's parse, for scale": parser._parse,
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--distinct", type=int, default=3_000)
    args.add_argument("--rounds", type=int, default=3)
    opts = args.parse_args()
    listed = [ua for entry in CRAWLER_USER_AGENTS_DATA for ua in entry["instances"]]
    agents = distinct_user_agents(opts.distinct, random.Random(7)) + listed
    patterns = crawlers.patterns()
    found = ways(patterns)
    verdicts = {name: [bool(f(ua)) for ua in agents] for name, f in found.items() if "(" in name}
    assert len({tuple(v) for v in verdicts.values()}) == 1, "the ways disagree"
    best = dict.fromkeys(found, float("inf"))
    for _ in range(opts.rounds):
        for name, match in found.items():
            started = time.process_time()
            for ua in agents:
                match(ua)
            best[name] = min(best[name], (time.process_time() - started) / len(agents) * 1e6)
    hits = sum(next(iter(verdicts.values())))
    print(
        f"{len(agents):,} distinct agents ({len(listed):,} from the list; {hits:,} match), "
        f"{len(patterns):,} patterns; CPU µs per agent, best of {opts.rounds} rounds:"
    )
    for name, us in best.items():
        print(f"  {name:34} {us:8.1f}")


if __name__ == "__main__":
    main()
