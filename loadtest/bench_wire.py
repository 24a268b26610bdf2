"""What a wire format costs at both ends: the collector making it, ClickHouse reading it.

    python -m loadtest.bench_wire [--events 300000] [--rounds 3] [--write-lines PATH]

The consumer hands ClickHouse the collector's JSON lines (consumers/ingest.py); the storage
limit of `make bench-consumer` reads `Native`, which needs no parsing. This prints, per event
of bench_enrich's mix, what ClickHouse (chDB, one thread) pays to read the same rows in each
format it could take instead, into a typed table, and what Python pays to write an event as
JSON (orjson, what the collector does) and in the two cheapest formats to read, and a batch of
them as columns (what a collector's pump could write once a flush). Run it pinned
to one CPU (`taskset -c 1`): chDB's threads count in the process's CPU time. Best of
`--rounds`; prints figures, not a timed test. `--write-lines` also writes the run's lines to a
file, for a reader outside Python to time on the same events (loadtest/parse_rs).
"""

from __future__ import annotations

import argparse
import io
import struct
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from chdb import session
from pyarrow import json as arrow_json

from consumers.ingest import REASON, STAGED, WIRE_FIELDS, _columns
from loadtest.bench_enrich import wire_lines

FORMATS = ("JSONEachRow", "JSONCompactEachRow", "CSV", "TabSeparated", "RowBinary", "Native")
STRINGS = tuple(name for name, kind in WIRE_FIELDS if kind == "String")
NUMBERS = struct.Struct("<BqQBB")  # schema_version, received_at, visitor_id, dnt, verified


def best_us(run: Callable[[], object], per: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best / per * 1e6


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


def row_binary(event: dict[str, Any]) -> bytes:
    """An event as ClickHouse's RowBinary, the way Python would have to write it."""
    parts = [event["event_id"].encode()]
    for name in STRINGS:
        value = event.get(name, "").encode()
        parts += [leb128(len(value)), value]
    props = event.get("props", {})
    parts.append(leb128(len(props)))
    for key, value in props.items():
        parts += [leb128(len(key)), key.encode(), leb128(len(value)), value.encode()]
    numbers = (event[n] for n in ("schema_version", "received_at", "visitor_id", "dnt"))
    parts.append(NUMBERS.pack(*numbers, event.get("verified", 0)))
    return b"".join(parts)


def tab_separated(event: dict[str, Any]) -> bytes:
    """An event as TSV without escaping (so cheaper than a correct writer)."""
    fields = [event["event_id"], str(event["received_at"]), *(event.get(n, "") for n in STRINGS)]
    return "\t".join(fields).encode()


# The columns of a batch: every wire field, each event holding all of them (a columnar writer
# reads them without a default per value); props is Map(String, String).
COLUMNS = tuple(
    (name, kind[9:-1] if kind.startswith("Nullable(") else kind) for name, kind in WIRE_FIELDS
)
FIXED = {"Int64": "q", "UInt64": "Q", "UInt8": "B"}
# ClickHouse's Native strings: each value after its length as LEB128; one or two bytes here.
LENGTHS = [leb128(n) for n in range(1 << 14)]


def string_column(values: list[str]) -> tuple[array[int], bytes]:
    """Arrow's layout of a string column: offsets and the bytes, without a Python step a value
    when the column is ASCII."""
    joined = "".join(values)
    if joined.isascii():
        return array("i", accumulate(map(len, values), initial=0)), joined.encode()
    encoded = [v.encode() for v in values]
    return array("i", accumulate(map(len, encoded), initial=0)), b"".join(encoded)


def arrow_layout(events: list[dict[str, Any]]) -> list[object]:
    """A batch as Arrow's buffers, the least Python a columnar writer needs: C-level maps, a
    join and an encode a column (the IPC framing around them left out)."""
    out: list[object] = []
    for name, kind in COLUMNS:
        values = list(map(itemgetter(name), events))
        if kind in FIXED:
            out.append(array(FIXED[kind], values))
        elif kind == "String":
            out.append(string_column(values))
        else:
            out.append(array("i", accumulate(map(len, values), initial=0)))
            out.append(string_column(list(chain.from_iterable(map(dict.keys, values)))))
            out.append(string_column(list(chain.from_iterable(map(dict.values, values)))))
    return out


def native_strings(values: list[str]) -> bytes:
    encoded = [v.encode() for v in values]
    lengths = map(LENGTHS.__getitem__, map(len, encoded))
    return b"".join(chain.from_iterable(zip(lengths, encoded, strict=True)))


def native_block(events: list[dict[str, Any]]) -> bytes:
    """A batch as ClickHouse's Native block (columns of values after their lengths)."""
    parts = [leb128(len(COLUMNS)), leb128(len(events))]
    for name, kind in COLUMNS:
        parts += [leb128(len(name)), name.encode(), leb128(len(kind)), kind.encode()]
        values = list(map(itemgetter(name), events))
        if kind in FIXED:
            parts.append(array(FIXED[kind], values).tobytes())
        elif kind == "String":
            parts.append(native_strings(values))
        else:
            parts.append(array("Q", accumulate(map(len, values))).tobytes())
            parts.append(native_strings(list(chain.from_iterable(map(dict.keys, values)))))
            parts.append(native_strings(list(chain.from_iterable(map(dict.values, values)))))
    return b"".join(parts)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=300_000)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--write-lines", type=Path, help="also write the run's lines to this file")
    opts = args.parse_args()
    n = opts.events
    lines = wire_lines(n, 3_000)
    body = b"\n".join(lines)
    if opts.write_lines:
        opts.write_lines.write_bytes(body + b"\n")
    # Python first: once chDB is open, its threads count in the process's CPU time. A thousand
    # events written over and over: the hot path writes the event it has just built, in cache.
    events = [orjson.loads(line) for line in lines[:1_000]] * 50
    print(f"{n:,} events of ~{len(body) // n} bytes as JSON; µs an event, best of {opts.rounds}")
    print("Python writing one (the collector's hot path):")
    for label, write in (
        ("JSON, orjson (today)", orjson.dumps),
        ("RowBinary", row_binary),
        ("TabSeparated, without escaping", tab_separated),
    ):
        # Each output dropped at once, as the hot path's is once in a chunk: keeping them all
        # would time the allocator's first touch of fresh pages instead.
        us = best_us(lambda write=write: deque(map(write, events), 0), len(events), opts.rounds)
        print(f"  {label:44s} {us:6.2f}")
    print("Python writing a batch of 1,000 as columns (a collector's pump, once a flush):")
    defaults = {n: {} if k.startswith("Map") else "" if k == "String" else 0 for n, k in COLUMNS}
    full = [{**defaults, **e, "value": str(e.get("value", ""))} for e in events[:1_000]]
    for label, batch_write in (
        ("Arrow's buffers (offsets + bytes a column)", arrow_layout),
        ("Native", native_block),
    ):
        us = best_us(lambda w=batch_write: [w(full) for _ in range(50)], 50_000, opts.rounds)
        print(f"  {label:44s} {us:6.2f}")

    # A compiled reader of the lines in the consumer's process instead of ClickHouse's: the
    # one installed already (chDB depends on pyarrow). It has no map type: props come out as a
    # struct of the keys it meets.
    kinds = {"String": "string", "Int64": "int64", "UInt64": "uint64", "UInt8": "uint8"}
    schema = pa.schema([(c, kinds[k]) for c, k in COLUMNS if k in kinds])
    parse = arrow_json.ParseOptions(explicit_schema=schema)
    read_options = arrow_json.ReadOptions(use_threads=False, block_size=1 << 24)
    us = best_us(
        lambda: arrow_json.read_json(io.BytesIO(body), read_options, parse), n, opts.rounds
    )
    print("A compiled reader in Python, one thread:")
    print(f"  {'pyarrow.json.read_json into an Arrow table':44s} {us:6.2f}")

    db = session.Session(tempfile.mkdtemp(prefix="beacon-bench-wire-"))

    def insert(table: str, fmt: str, data: bytes) -> None:
        with db.send_insert(f"INSERT INTO {table}", fmt) as inserter:
            inserter.append(data)
            inserter.finish()

    staged = [("n", "UInt32"), ("reason", "String"), *((c, t) for c, t, _ in STAGED)]
    plain = [(c, t[9:-1] if t.startswith("Nullable(") else t) for c, t in WIRE_FIELDS]
    for table, columns in (("lines", "line String"), ("stage", _columns(staged))):
        db.query(f"CREATE TEMPORARY TABLE {table} ({columns}) ENGINE = Memory")
    parsed = f"Tuple({_columns(WIRE_FIELDS)})".replace("'", "''")
    exprs = ", ".join(f"{expr} AS {name}" for name, _, expr in STAGED)

    def today() -> None:
        db.query("TRUNCATE TABLE lines")
        db.query("TRUNCATE TABLE stage")
        insert("lines", "LineAsString", body)
        db.query(
            f"INSERT INTO stage SELECT n, reason, {exprs} FROM (SELECT rowNumberInAllBlocks() AS n,"
            f" line, JSONExtract(line, '{parsed}') AS w, {REASON} AS reason FROM lines) "
            "SETTINGS max_threads = 1, short_circuit_function_evaluation = 'force_enable'"
        )

    print("ClickHouse reading them into a typed table:")
    print(
        f"  {'the lines + JSONExtract + checks (today)':44s} {best_us(today, n, opts.rounds):6.2f}"
    )
    # The same rows in each format, written by ClickHouse from the parsed lines.
    values = ", ".join(
        f"ifNull(w.{c}, {'0' if 'Int' in t else chr(39) * 2})"
        if t.startswith("Nullable")
        else f"w.{c}"
        for c, t in WIRE_FIELDS
    )
    source = f"SELECT {values} FROM (SELECT JSONExtract(line, '{parsed}') AS w FROM lines)"
    for fmt in FORMATS:
        data = db.query(source, fmt).bytes()

        def read(fmt: str = fmt, data: bytes = data) -> None:
            db.query("DROP TEMPORARY TABLE IF EXISTS typed")
            db.query(f"CREATE TEMPORARY TABLE typed ({_columns(plain)}) ENGINE = Memory")
            insert("typed", fmt, data)

        label = f"{fmt} ({len(data) // n} bytes)"
        print(f"  {label:44s} {best_us(read, n, opts.rounds):6.2f}")
    db.close()


if __name__ == "__main__":
    main()
