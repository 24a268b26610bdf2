"""The network class of a client address: a data center's (cloud, hosting, CDN) or a declared
crawler's, from the range table the `iporigin` package ships (docs/privacy.md "Data-center and
crawler addresses"), loaded once per process into the arrays countries use
(collector/address_table.py), with the same bounded cache in front.

The table is read here from its file, not through iporigin's loader: that loader is private
(`iporigin._data`) and keeps IPv6 as Python ints (2.2 MB in all, against 0.65 here), and this
way the lookup, the cache and the special-purpose blocks are the countries' own code. The
format is iporigin's format 1 (header `<8sHQHII`: magic, version, build time, label, IPv4 and
IPv6 counts; the labels `provider<TAB>kind` each after a 16-bit length; IPv4 records `<IIH`:
start, end, label; IPv6 records `<16s16sH`, addresses big-endian), pinned with the package in
pyproject.toml; tests/unit/test_networks.py compares every range with `iporigin.classify`, so
a release that changes the format or its meaning fails there before the pin moves.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import struct
import time
from operator import gt
from pathlib import Path

from collector.address_table import AddressTable, CachedLookup, release_freed_memory
from collector.geo_data import Family
from contract.event import NETWORK_CRAWLER, NETWORK_DATA_CENTER, NETWORKS

log = logging.getLogger("beacon.collector")

PACKAGE = "iporigin"
OFF = "off"
# iporigin's kinds: a cloud or hosting machine and a CDN's edge are data centers; a declared
# crawler's own range is a crawler. A VPN, Tor exit or Apple Private Relay address has a
# person behind it, and "reserved" and "unknown" say nothing: none of them is flagged.
CLASS_OF_KIND = {
    "hosting": NETWORK_DATA_CENTER,
    "cdn": NETWORK_DATA_CENTER,
    "bot": NETWORK_CRAWLER,
}
NAMES = ("", *NETWORKS)  # label index -> class; 0 is ""

MAGIC = b"IPORIGIN"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHQHII")
LABEL_LENGTH = struct.Struct("<H")
V4_RECORD = struct.Struct("<IIH")
V6_RECORD = struct.Struct("<16s16sH")


def bundled_file() -> Path:
    """The range table inside the installed iporigin package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {PACKAGE} package is not installed (`make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "ranges.bin"


def read_table(blob: bytes) -> tuple[AddressTable, int]:
    """The table of an iporigin format-1 file, and its build time (Unix seconds); raises
    ValueError for anything else."""
    try:
        magic, version, built_at, n_labels, n_v4, n_v6 = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ValueError("not an iporigin range table")
        if version != FORMAT_VERSION:
            raise ValueError(f"iporigin format {version}; this collector reads {FORMAT_VERSION}")
        offset = HEADER.size
        codes = []  # per label of the file, its class's index in NAMES
        for _ in range(n_labels):
            (length,) = LABEL_LENGTH.unpack_from(blob, offset)
            _, _, kind = blob[offset + 2 : offset + 2 + length].decode().partition("\t")
            codes.append(NAMES.index(CLASS_OF_KIND.get(kind, "")))
            offset += 2 + length
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not an iporigin range table: {exc}") from exc
    v6_at = offset + n_v4 * V4_RECORD.size
    if v6_at + n_v6 * V6_RECORD.size != len(blob):
        raise ValueError("its size is not what its header says")
    v4, v6 = Family(), Family()
    for family, records, as_int in (
        (v4, V4_RECORD.iter_unpack(blob[offset:v6_at]), int),
        (v6, V6_RECORD.iter_unpack(blob[v6_at:]), lambda b: int.from_bytes(b, "big")),
    ):
        rows = list(records)
        starts, ends = [as_int(r[0]) for r in rows], [as_int(r[1]) for r in rows]
        if any(map(gt, starts, ends)):
            raise ValueError("a range that ends before it starts")
        try:
            family.extend(starts, ends, [codes[r[2]] for r in rows])
        except IndexError:
            raise ValueError("a range whose label is not in the file") from None
    # Kinds not flagged stay in the table as "": where a range sits inside another, the
    # inner one holds (iporigin's ranges do not overlap; another file's may).
    return AddressTable.from_ranges(NAMES, v4, v6), built_at


_loaded: dict[str, AddressTable | None] = {}


def load_networks(setting: str) -> CachedLookup:
    """The lookup for BEACON_NETWORK_DB: "" the table of the installed iporigin package,
    `off` none, else a file of its format. Read once per process (each worker its own); when
    it cannot be, one log line says why and every event's `network` stays empty."""
    choice = setting.strip()
    if choice.lower() == OFF:
        return CachedLookup(None)
    if choice not in _loaded:
        _loaded[choice] = _read(choice)
    return CachedLookup(_loaded[choice])


def _read(choice: str) -> AddressTable | None:
    started = time.perf_counter()
    try:
        path = Path(choice) if choice else bundled_file()
        table, built_at = read_table(path.read_bytes())
        built = time.strftime("%Y-%m-%d", time.gmtime(built_at))
    except (OSError, ValueError, OverflowError) as exc:
        log.warning(
            "no network data, no event is marked data_center or crawler: %s; "
            "BEACON_NETWORK_DB names another (docs/privacy.md)",
            exc,
        )
        return None
    finally:
        release_freed_memory()
    source = str(path)
    if not choice:
        source = f"{PACKAGE} {importlib.metadata.version(PACKAGE)} ({path})"
    log.info(
        "network data: %d segments from %s, built %s, in %.2f s",
        table.segments,
        source,
        built,
        time.perf_counter() - started,
    )
    return table
