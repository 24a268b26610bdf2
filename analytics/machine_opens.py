"""Machine opens and clicks: every rule in one place. Classify, never drop.

Per-row rules run in the consumer (Enricher.to_row) on each open and fill `machine_open`,
`machine_reason` and `mail_proxy`. The scanner rule needs several events of one recipient
that may arrive in different batches, partitions or consumers, so it is not decided per
batch: it is a query-time rule (`scanner_bursts_sql`) that reports join on. It stays exact
whatever the batching, and a change of its thresholds applies to past data too.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

# -- per-row rules ----------------------------------------------------------------------------

# Apple Mail Privacy Protection downloads every remote image of a message when it arrives,
# through Apple's proxies, whether or not anyone reads it: SocketLabs, "Identifying Apple MPP
# opens" (help.socketlabs.com/docs/identifying-apple-mpp-opens-in-notification-api-events).
# Those fetches carry a bare "Mozilla/5.0" (no platform, no engine), which no mail client or
# browser sends; tests/unit/test_enrich.py keeps it as the MPP fixture.
APPLE_MPP_USER_AGENT = "Mozilla/5.0"
# Apple's own address block, 17.0.0.0/8 (ARIN; also the range Apple documents for Applebot,
# support.apple.com/HT204683, as alaz/legitbot checks it). ESP write-ups on MPP name it as the
# relay's source. A /24-truncated address stays inside the /8, so the rule survives the
# default IP truncation. iCloud Private Relay egress (mask-api.icloud.com/egress-ip-ranges.csv)
# is people browsing the web through Apple, not mail prefetch: deliberately not used.
APPLE_NETWORK = ipaddress.ip_network("17.0.0.0/8")
# Image proxies of webmail providers fetch when a person opens the message: a real open, but
# its IP and UA are the proxy's. Flag the proxy, count the open (DESIGN.md).
#  - Gmail: "... (via ggpht.com GoogleImageProxy)", since December 2013
#    (wordtothewise.com/2013/12/gmail-deploys-image-proxy-servers/).
#  - Yahoo: "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", the
#    help page its UA links to.
IMAGE_PROXIES = (("GoogleImageProxy", "gmail"), ("YahooMailProxy", "yahoo"))


class OpenClass(NamedTuple):
    """What the consumer stores about an open (columns of schema migration 3)."""

    machine_open: int  # UInt8: 1 when no person is behind this open
    machine_reason: str  # which rule said so ("" for a human open)
    mail_proxy: str  # the proxy it came through: apple, gmail, yahoo, or ""


HUMAN = OpenClass(0, "", "")


def rule_apple_mpp(user_agent: str, ip: str) -> OpenClass | None:
    """Apple MPP prefetch: the bare proxy user agent, or any open from Apple's network."""
    if user_agent.strip() == APPLE_MPP_USER_AGENT or in_apple_network(ip):
        return OpenClass(1, "apple_mpp", "apple")
    return None


def rule_image_proxy(user_agent: str) -> OpenClass | None:
    """A webmail image proxy: a person's open, with the proxy noted."""
    for token, proxy in IMAGE_PROXIES:
        if token in user_agent:
            return OpenClass(0, "", proxy)
    return None


def rule_bot_user_agent(is_bot: int) -> OpenClass | None:
    """Crawlers, HTTP libraries and headless browsers (consumers/useragent.py BOT_TOKENS and
    ua-parser's "Spider" device): a program fetched the pixel, nobody read the mail."""
    return OpenClass(1, "bot_user_agent", "") if is_bot else None


def in_apple_network(ip: str) -> bool:
    # An address of 17.0.0.0/8 is written "17." and three more octets (ip_address refuses
    # leading zeros and spaces; IPv4-mapped IPv6 is not in an IPv4 network): the prefix test
    # answers every other open without parsing it, which took ~40% of enriching an open.
    if not ip.startswith("17."):
        return False
    try:
        return ipaddress.ip_address(ip) in APPLE_NETWORK
    except ValueError:
        return False


def classify_open(user_agent: str, ip: str, is_bot: int) -> OpenClass:
    """The first rule that matches; proxies before bots, since ua-parser calls some of them
    spiders."""
    return (
        rule_image_proxy(user_agent)
        or rule_apple_mpp(user_agent, ip)
        or rule_bot_user_agent(is_bot)
        or HUMAN
    )


# -- the scanner rule (query time) ------------------------------------------------------------

# Link-protection scanners (Microsoft Defender Safe Links, Proofpoint URL Defense, Mimecast,
# Barracuda) fetch every URL of a message on delivery to check it. Signs listed in
# support.arternal.com/en/articles/15216436 ("clickthroughs triggered by email security
# scanners"): every link clicked together, within seconds, right after delivery, before a
# realistic open. The issue (#4) asks for the same: an open and clicks on all links within a
# second or two, tens of seconds after sending. Thresholds:
SCANNER_WINDOW_MS = 2000  # all links clicked within this window
SCANNER_MIN_LINKS = 2  # one link clicked fast is something a person does
SCANNER_MAX_AFTER_SEND_S = 900  # when a send time is known, the burst starts within this


LINK = "cityHash64(url_host, url_path, url_query)"  # a destination: one link of a message


def scanner_candidates_sql(events: str, where: str) -> str:
    """(message, recipient, t, t_ms) of every click that starts a window of SCANNER_WINDOW_MS
    in which its recipient clicked every link of the message (at least SCANNER_MIN_LINKS).

    `events` is what to read: the events table with FINAL, or without it where a replayed
    click changes nothing (it repeats a time and a link); `where` a filter on it (campaign,
    time). The links of a message are the distinct destinations anyone clicked in it.
    """
    return f"""
SELECT message, recipient, t, toUnixTimestamp64Milli(t) AS t_ms FROM (
    SELECT message, recipient, received_at AS t,
           uniqExact({LINK}) OVER (
               PARTITION BY message, recipient ORDER BY toUnixTimestamp64Milli(received_at)
               RANGE BETWEEN CURRENT ROW AND {SCANNER_WINDOW_MS} FOLLOWING
           ) AS covered,
           uniqExact({LINK}) OVER (PARTITION BY message) AS links
    FROM {events}
    WHERE event_type = 'click' AND ({where})
)
WHERE recipient != '' AND links >= {SCANNER_MIN_LINKS} AND covered = links"""


def scanner_bursts_sql(events: str, where: str) -> str:
    """(message, recipient, burst_at): the first candidate click of each recipient, unless a
    send to them is known and the click is not within SCANNER_MAX_AFTER_SEND_S after it.

    `events` and `where` as in scanner_candidates_sql; send times are read only for the
    recipients with a candidate. A machine event is then an open or click of that recipient
    within SCANNER_WINDOW_MS of burst_at.
    """
    candidates = scanner_candidates_sql(events, where)
    people = f"SELECT message, recipient FROM ({candidates})"
    return f"""
SELECT c.message AS message, c.recipient AS recipient, min(c.t) AS burst_at
FROM ({candidates}) AS c
LEFT JOIN (
    SELECT message, recipient, min(received_at) AS sent_at
    FROM {events}
    WHERE event_type = 'send' AND ({where})
      AND (message, recipient) IN ({people})
    GROUP BY message, recipient
) AS s ON c.message = s.message AND c.recipient = s.recipient
WHERE s.sent_at = toDateTime64(0, 3, 'UTC')
   OR dateDiff('second', s.sent_at, c.t) BETWEEN 0 AND {SCANNER_MAX_AFTER_SEND_S}
GROUP BY c.message, c.recipient"""
