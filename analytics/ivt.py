"""General invalid traffic (GIVT, after the MRC's Invalid Traffic Detection and Filtration
Guidelines): what it is, and the reason each kind is kept under (docs/reports.md "Invalid
traffic").

Every reason but the last is decided per event by the consumer and stored in the `ivt`
column of beacon.events ('' for valid traffic); duplicate clicks need each visitor's clicks in
time order, so reports find them when they read (analytics/duplicate_clicks.py).
"""

from __future__ import annotations

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
