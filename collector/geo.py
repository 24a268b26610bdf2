"""The country of a client address: the IP-to-country data loaded once per process into
compact sorted arrays (collector/address_table.py), a bisect, and a bounded cache in front
(docs/privacy.md "Countries").

The collector asks with the full client address, before it is truncated or dropped, so the
country works in every BEACON_IP_MODE; the address itself is only a cache key in memory
(docs/performance.md "Address lookups" has the figures of `python -m loadtest.bench_geo`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from collector.address_table import AddressTable, CachedLookup, release_freed_memory
from collector.geo_data import data_files, read_ranges
from contract.geo import ATTRIBUTION

log = logging.getLogger("beacon.collector")

# Where `make install` and the image put the default data set (ip-location-db's
# geo-whois-asn-country: deploy/geo-data.sh), beside the Python that runs the collector.
DEFAULT_DIR = Path(sys.prefix) / "share" / "beacon" / "geo"
OFF = "off"


class CountryTable(AddressTable):
    """The country data: each segment's label a country code (ISO 3166-1 alpha-2) or ""."""

    country = AddressTable.find

    @classmethod
    def from_files(cls, files: list[Path]) -> CountryTable:
        """Read `files` (geo_data's formats); raises OSError, UnicodeDecodeError, ValueError."""
        ranges = read_ranges(files)
        return cls.from_ranges(tuple(ranges.names), ranges.v4, ranges.v6, ranges.skipped_lines)


_loaded: dict[tuple[str, ...], CountryTable | None] = {}


def load_countries(setting: str) -> CachedLookup:
    """The lookup for BEACON_GEO_DB: "" the installed data, `off` none, else a directory or
    comma-separated files. The data is read once per process (each worker its own); when it
    cannot be, one log line says why and every country is ""."""
    if setting.strip().lower() == OFF:
        return CachedLookup(None)
    paths = tuple(p.strip() for p in setting.split(",") if p.strip()) or (str(DEFAULT_DIR),)
    if paths not in _loaded:
        _loaded[paths] = _read(paths, default=not setting.strip())
    return CachedLookup(_loaded[paths])


def _read(paths: tuple[str, ...], default: bool) -> CountryTable | None:
    started = time.perf_counter()
    try:
        table = CountryTable.from_files(data_files(Path(p) for p in paths))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        hint = " (`make install` puts it there when npm is found)" if default else ""
        log.warning(
            "no country data, every event's country stays empty: %s%s; BEACON_GEO_DB names "
            "another (docs/privacy.md)",
            exc,
            hint,
        )
        return None
    finally:
        release_freed_memory()
    skipped = f" ({table.skipped_lines} lines that are no range left out)"
    log.info(
        "country data: %d ranges from %s in %.1f s%s. %s",
        table.segments,
        ", ".join(paths),
        time.perf_counter() - started,
        skipped if table.skipped_lines else "",
        ATTRIBUTION,
    )
    return table
