"""Who sends the simulation's invalid traffic (docs/reports.md "Invalid traffic"): a crawler
that names itself, a program on a cloud server's address, a browser fetching ahead.

Facts about the requests the plan makes; the truth counts them by who sent them, whatever
Beacon's lists make of them.
"""

from __future__ import annotations

# A crawler's own user agent, as Ahrefs documents it (https://ahrefs.com/robot).
CRAWLER = "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"
# An address of Amazon's published AWS ranges: iporigin 1.1.2's README gives it as Amazon AWS
# hosting (tests/unit/test_simulate.py asks iporigin whether it still is).
DATA_CENTER_IP = "52.95.110.1"
# What a browser sends with a speculative fetch: the Fetch standard's Sec-Purpose header.
PREFETCH_HEADERS = {"Sec-Purpose": "prefetch"}
