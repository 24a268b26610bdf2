"""Ad slots the /a.js tag measured: page sessions that send its `impression` and, for the
chosen ones, its `viewable` event, exactly as docs/tracking.md ("Ad viewability") says it does.

Which impressions the browser could not observe and which became viewable is chosen here by
the plan's seeded generator, and written down as chosen: the truth never asks Beacon's rules.
"""

from __future__ import annotations

import random
from typing import Protocol

from collector.simulate.steps import Script, Step
from collector.simulate.truth import Truth

# The MRC rule of each kind, as a.js applies it: share of the ad's pixels in view (percent)
# and continuous time (ms); the tag's viewable event reports at least both.
RULES = {"display": (50, 1000), "large": (30, 1000), "video": (50, 2000)}
KIND_WEIGHTS = (5, 2, 1)  # display, large, video


class AdTagConfig(Protocol):
    """What the measured sessions are made of: the simulation's Config (plan.py)."""

    @property
    def tag_impressions(self) -> int: ...
    @property
    def unmeasured_share(self) -> float: ...
    @property
    def viewable_rate(self) -> float: ...


class AdTagPlanner:
    """Per ad, `tag_impressions` page sessions: round(unmeasured_share x n) of them in a
    browser that cannot observe the slot (measured "0", never viewable), and of the measured
    ones exactly round(viewable_rate x measured) viewable."""

    def __init__(self, config: AdTagConfig, rng: random.Random, truth: Truth) -> None:
        for name in ("unmeasured_share", "viewable_rate"):
            if not 0 <= getattr(config, name) <= 1:
                raise ValueError(f"{name}: a fraction, 0 to 1")
        self.config = config
        self.rng = rng
        self.truth = truth

    def ad(self, site: str, host: str, campaign: str, ad: str) -> list[Script]:
        c = self.config
        n = c.tag_impressions
        unmeasured = set(self.rng.sample(range(n), round(n * c.unmeasured_share)))
        measured = [i for i in range(n) if i not in unmeasured]
        viewable = set(self.rng.sample(measured, round(len(measured) * c.viewable_rate)))
        kinds = list(RULES)
        scripts = []
        for i in range(n):
            # Every kind once first, so that a small run has each; then by weight.
            kind = kinds[i] if i < len(kinds) else self.rng.choices(kinds, KIND_WEIGHTS)[0]
            page = f"https://{host}/story-{self.rng.randrange(1, 50)}"
            scripts.append(self.session(site, page, campaign, ad, kind, i not in unmeasured,
                                        i in viewable))  # fmt: skip
        return scripts

    def session(
        self, site: str, page: str, campaign: str, ad: str, kind: str, measured: bool,
        viewable: bool,
    ) -> Script:  # fmt: skip
        """One page with the slot: its impression, then its viewable event when chosen, one
        POST each, as the tag sends them."""
        imp = f"{self.rng.getrandbits(64):x}"  # as the tag's random 64-bit id
        ids = {"s": site, "c": campaign, "ad": ad, "u": page}
        shown = {"e": "impression", **ids,
                 "p": {"imp": imp, "kind": kind, "measured": "1" if measured else "0"}}  # fmt: skip
        steps = [Step("post", {"events": [shown]})]
        self.truth.tag_impression(site, campaign, ad, measured)
        if viewable:
            pct, ms = RULES[kind]
            seen = {"e": "viewable", **ids,
                    "p": {"imp": imp, "kind": kind, "in_view_ms": ms + self.rng.randrange(400),
                          "max_visible_pct": self.rng.randint(pct, 100)}}  # fmt: skip
            steps.append(Step("post", {"events": [seen]}))
            self.truth.viewable(site, campaign, ad)
        return steps
