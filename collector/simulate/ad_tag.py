"""Ad slots the /a.js tag measured: page sessions that send its `impression` and, for the
chosen ones, its `viewable` event, exactly as docs/tracking.md ("Ad viewability") says it does.

Which impressions the browser could not observe and which became viewable is chosen here by
the plan's seeded generator, and written down as chosen: the truth never asks Beacon's rules.
Some sessions come from a cloud server's address (a program loading the page, whose slot it
sees whole): invalid traffic, as docs/reports.md ("Invalid traffic") says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from collector.simulate.invalid import DATA_CENTER_IP
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
    @property
    def data_center_tag_impressions(self) -> int: ...


@dataclass(frozen=True)
class Slot:
    """Where a session's ad is: the site, the page, the campaign's ad and its kind (RULES)."""

    site: str
    page: str
    campaign: str
    ad: str
    kind: str


class AdTagPlanner:
    """Per ad, `tag_impressions` page sessions: round(unmeasured_share x n) of them in a
    browser that cannot observe the slot (measured "0", never viewable), and of the measured
    ones exactly round(viewable_rate x measured) viewable; then `data_center_tag_impressions`
    sessions from a cloud server's address, each measured and viewable."""

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
        for i in range(n + c.data_center_tag_impressions):
            # Every kind once first, so that a small run has each; then by weight.
            kind = kinds[i] if i < len(kinds) else self.rng.choices(kinds, KIND_WEIGHTS)[0]
            page = f"https://{host}/story-{self.rng.randrange(1, 50)}"
            slot = Slot(site, page, campaign, ad, kind)
            if i < n:
                scripts.append(self.session(slot, i not in unmeasured, i in viewable))
            else:
                scripts.append(self.session(slot, True, True, "data_center", DATA_CENTER_IP))
        return scripts

    def session(
        self, slot: Slot, measured: bool, viewable: bool, actor: str = "person", ip: str = ""
    ) -> Script:
        """One page with the slot: its impression, then its viewable event when chosen, one
        POST each, as the tag sends them; `actor` (truth.py ACTORS) from address `ip`."""
        site, campaign, ad, kind = slot.site, slot.campaign, slot.ad, slot.kind
        imp = f"{self.rng.getrandbits(64):x}"  # as the tag's random 64-bit id
        ids = {"s": site, "c": campaign, "ad": ad, "u": slot.page}
        shown = {"e": "impression", **ids,
                 "p": {"imp": imp, "kind": kind, "measured": "1" if measured else "0"}}  # fmt: skip
        steps = [Step("post", {"events": [shown]}, ip=ip)]
        self.truth.tag_impression(site, campaign, ad, measured, actor)
        if viewable:
            pct, ms = RULES[kind]
            seen = {"e": "viewable", **ids,
                    "p": {"imp": imp, "kind": kind, "in_view_ms": ms + self.rng.randrange(400),
                          "max_visible_pct": self.rng.randint(pct, 100)}}  # fmt: skip
            steps.append(Step("post", {"events": [seen]}, ip=ip))
            self.truth.viewable(site, campaign, ad, actor)
        return steps
