"""A batch of enriched events as columns: Arrow for chDB, JSONEachRow for the HTTP interface.

chDB parses a JSONEachRow row in ~8 us of CPU and an Arrow row in under 2 us (`python -m
loadtest.bench_consumer --insert-only`, docs/performance.md "Consumer"); the columns are
built from the dicts the enricher already holds, without encoding every row to JSON first.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
import pyarrow as pa

from consumers.enrich import json_row

STRING = pa.string()
UINT8 = pa.uint8()
# Every column of beacon.events (analytics/schema.py) that an event or the consumer fills;
# inserted_at is left to its DEFAULT. ClickHouse casts each to the column's type (String to
# UUID or LowCardinality) and reads a null as the column's default, which is what a field
# missing from an older wire version needs. tests/integration/test_event_rows.py checks this list
# against the migrated table.
COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("schema_version", UINT8),
    ("event_id", STRING),
    # The wire's milliseconds as they are: no division per row, no float rounding.
    ("received_at", pa.timestamp("ms", tz="UTC")),
    ("event_type", STRING),
    ("site", STRING),
    ("campaign", STRING),
    ("message", STRING),
    ("recipient", STRING),
    ("ad", STRING),
    ("url_host", STRING),
    ("url_path", STRING),
    ("url_query", STRING),
    ("referrer", STRING),
    ("props", pa.map_(STRING, STRING)),
    ("user_agent", STRING),
    ("browser", STRING),
    ("browser_version", STRING),
    ("os", STRING),
    ("device_type", STRING),
    ("is_bot", UINT8),
    ("machine_open", UINT8),
    ("machine_reason", STRING),
    ("mail_proxy", STRING),
    ("ip", STRING),
    ("visitor_id", pa.uint64()),
    ("dnt", UINT8),
    ("consent", STRING),
    ("transport", STRING),
    ("verified", UINT8),
    ("click_id", STRING),
    ("order_id", STRING),
    # A null String would not cast to Decimal in ClickHouse; enrich.decode checked the digits.
    ("value", pa.decimal128(18, 4)),
    ("currency", STRING),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
SCHEMA = pa.schema(COLUMNS)
# The reason label of a row whose field has a type its column cannot take (a number where
# the column is a string, a negative visitor id, ...).
BAD_FIELD_TYPE = "bad_field_type"


# Built from the dicts in one pass of pyarrow's C++ converter, which ignores keys without a
# field: cheaper than a Python list per column. `value` travels as its text and is cast
# after, since the converter takes only Decimal objects for a decimal.
ROW_TYPE = pa.struct([(name, STRING if name == "value" else kind) for name, kind in COLUMNS])
VALUE_INDEX = COLUMN_NAMES.index("value")


def to_table(events: list[dict[str, Any]]) -> pa.Table:
    """Raises pyarrow's errors (ArrowInvalid, ArrowTypeError, OverflowError, ...) when a field
    of some event does not fit its column."""
    table = pa.Table.from_struct_array(pa.array(events, ROW_TYPE))
    value = table.column(VALUE_INDEX).cast(SCHEMA.field("value").type)
    return table.set_column(VALUE_INDEX, SCHEMA.field("value"), value)


def fits(event: dict[str, Any]) -> bool:
    try:
        to_table([event])
    except (pa.ArrowException, TypeError, ValueError, OverflowError, ArithmeticError):
        return False
    return True


class EventRows:
    """Enriched events (Enricher.enrich: `received_at` in ms) bound for beacon.events."""

    columns = COLUMN_NAMES  # analytics.store.Rows: the columns an insert names

    def __init__(self, events: list[dict[str, Any]], table: pa.Table) -> None:
        self.events = events
        self.table = table

    @classmethod
    def build(cls, events: list[dict[str, Any]]) -> tuple[EventRows, list[tuple[int, str]]]:
        """The rows, and (index, reason) of each event that cannot be one."""
        try:
            return cls(events, to_table(events)), []
        except (pa.ArrowException, TypeError, ValueError, OverflowError, ArithmeticError):
            pass  # rare: find the culprits one by one, keep the rest
        bad = [i for i, event in enumerate(events) if not fits(event)]
        skip = set(bad)
        good = [event for i, event in enumerate(events) if i not in skip]
        return cls(good, to_table(good)), [(i, BAD_FIELD_TYPE) for i in bad]

    def __len__(self) -> int:
        return len(self.events)

    def arrow_stream(self) -> bytes:
        """The rows in ClickHouse's ArrowStream input format (Arrow IPC stream)."""
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, SCHEMA) as writer:
            writer.write_table(self.table)
        return sink.getvalue()

    def ndjson(self) -> bytes:
        """The rows in JSONEachRow, as Enricher.to_row writes them."""
        return b"".join(orjson.dumps(json_row(event)) + b"\n" for event in self.events)
