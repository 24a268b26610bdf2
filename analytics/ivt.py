"""General invalid traffic (GIVT, after the MRC's Invalid Traffic Detection and Filtration
Guidelines): what it is, and the reason each kind is kept under (docs/reports.md "Invalid
traffic").

Every reason but the last is decided per event by the consumer and stored in the `ivt`
column of beacon.events ('' for valid traffic), by one rule kept below in Python (`classify`,
the reference) and in SQL (`classify_sql`, what the ingest runs); duplicate clicks need each
visitor's clicks in time order, so reports find them when they read
(analytics/duplicate_clicks.py).
"""

from __future__ import annotations

from contract.event import NETWORK_CRAWLER, NETWORK_DATA_CENTER

CRAWLER = "crawler"  # a known crawler's user agent or address range
DATA_CENTER = "data_center"  # a data-center, cloud or CDN address
PREFETCH = "prefetch"  # a speculative, prerender or preview fetch: nobody saw it yet
DUPLICATE_CLICK = "duplicate_click"  # the same ad clicked again by the same person, soon
STORED_REASONS = (CRAWLER, DATA_CENTER, PREFETCH)
REASONS = (*STORED_REASONS, DUPLICATE_CLICK)
# The events reports leave invalid traffic out of. Sends and opens are email's, with rules
# of their own (analytics/machine_opens.py: a crawler's open is a machine open there).
FILTERED_TYPES = ("impression", "viewable", "click")
# BEACON_DUPLICATE_CLICK_WINDOW_S: a click this soon after the same person's click on the same
# ad is a duplicate (0: none is).
DUPLICATE_CLICK_WINDOW_S = 30

# -- the consumer's rule (per row) ------------------------------------------------------------

# Besides the agent, the rule reads the wire's `network` (contract/event.py: the collector's
# class of the whole client address) and `purpose` (set when the request said it was
# speculative: prefetch, prerender, preview).
# The machine-open rules' proxies (analytics/machine_opens.py IMAGE_PROXIES) that fetch when
# a person opens the mail.
PERSONS_PROXIES = ("gmail", "yahoo")


def classify(mail_proxy: str, is_bot: int, network: str, purpose: str) -> str:
    """The reason a row is invalid traffic, '' when it is valid: the first rule that holds.
    `mail_proxy` and `is_bot` are what the consumer makes of the agent (for every event type,
    analytics/machine_opens.py), `network` and `purpose` the wire's fields ('' when left out)."""
    if mail_proxy in PERSONS_PROXIES:
        # A webmail image proxy fetches for a person, from its provider's ranges (Gmail's from
        # Google's, a "crawler" network): never invalid. Apple's fetches every message on
        # arrival, read or not, and its address range holds Applebot too: not exempt.
        return ""
    if is_bot or network == NETWORK_CRAWLER:
        return CRAWLER
    if network == NETWORK_DATA_CENTER:
        return DATA_CENTER
    if purpose:
        return PREFETCH
    return ""


def classify_sql(mail_proxy: str, is_bot: str, network: str, purpose: str) -> str:
    """`classify` as a ClickHouse expression over four column expressions (String, UInt8,
    String, String): consumers/ingest.py fills the `ivt` column with it."""
    return (
        f"multiIf({mail_proxy} IN ({', '.join(repr(p) for p in PERSONS_PROXIES)}), '', "
        f"{is_bot} != 0 OR {network} = '{NETWORK_CRAWLER}', '{CRAWLER}', "
        f"{network} = '{NETWORK_DATA_CENTER}', '{DATA_CENTER}', "
        f"{purpose} != '', '{PREFETCH}', '')"
    )
