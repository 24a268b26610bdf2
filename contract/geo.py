"""The country data set both sides name: the collector looks countries up in it
(collector/geo.py), the dashboard credits it in its footer."""

from __future__ import annotations

# The licence of the data asks for this line wherever the countries are shown.
ATTRIBUTION = (
    "Countries: ip-location-db geo-whois-asn-country (CC0 1.0), from the regional internet "
    "registries' data published by the NRO (CC BY 4.0)"
)
