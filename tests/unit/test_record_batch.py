"""Kafka record batches read from their bytes (consumers/sources/record_batch.py) as aiokafka's
own reader reads them, and a header key that is not UTF-8 read with its bytes replaced, where
aiokafka's reader raises (consumers/sources/aiokafka_compat.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder, _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy

from consumers.sources import aiokafka_compat
from consumers.sources.record_batch import Replaced, find_batch, read_batch

CODECS = {
    0: True,
    1: codec.has_gzip(),
    2: codec.has_snappy(),
    3: codec.has_lz4(),
    4: codec.has_zstd(),
}
RECORDS: list[tuple[bytes | None, bytes | None, list[tuple[Any, bytes | None]]]] = [
    (None, b'{"event_id":"a"}', []),
    (b"key", b'{"event_id":"b"}\n{"event_id":"c"}', [("trace", b"1"), ("empty", None)]),
    (b"", None, [("\u00e9t\u00e9", b"")]),
    (None, b"x" * 3000, []),
]


class RawKey(str):
    """A header key written as bytes that are not UTF-8, as a C client can: aiokafka's pure
    Python builder asks the key for its bytes."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"\xffk\xfe"


def built(
    compression: int,
    records: list[tuple[Any, Any, list[Any]]],
    base_offset: int = 0,
    python: bool = False,
) -> bytes:
    """One batch's bytes, its records 1 ms apart from base_offset on."""
    builder_class: Any = _DefaultRecordBatchBuilderPy if python else DefaultRecordBatchBuilder
    builder = builder_class(2, compression, 0, -1, -1, -1, batch_size=1 << 20)
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[:8] = base_offset.to_bytes(8, "big")  # the broker's offsets, as a fetch gives them
    return bytes(raw)


def as_read(record: Any) -> tuple[Any, ...]:
    headers = [(k, None if v is None else bytes(v)) for k, v in record.headers]
    key = None if record.key is None else bytes(record.key)
    value = None if record.value is None else bytes(record.value)
    return (record.offset, record.timestamp, record.timestamp_type, key, value, headers)


@pytest.mark.parametrize("compression", [c for c, there in CODECS.items() if there])
def test_a_batch_reads_as_aiokafka_reads_it(compression: int) -> None:
    raw = built(compression, RECORDS, base_offset=700)
    theirs = [as_read(r) for r in MemoryRecords(raw).next_batch()]
    ours = read_batch(find_batch(raw, 700))
    assert [as_read(r) for r in ours] == theirs
    assert [r[0] for r in theirs] == [700, 701, 702, 703]
    assert not any(type(k) is Replaced for r in ours for k, _ in r.headers)


@pytest.mark.parametrize("compression", [0, 3])
def test_a_header_key_that_is_not_utf8_is_read_replaced_and_counted(compression: int) -> None:
    bad = (None, b"{}", [(RawKey(), b"v"), ("ok", b"")])
    raw = built(compression, [*RECORDS[:2], bad], 0, python=True)
    with pytest.raises(UnicodeDecodeError):
        list(MemoryRecords(raw).next_batch())
    records = read_batch(find_batch(raw, 0))
    assert records[2].headers == [("\ufffdk\ufffd", b"v"), ("ok", b"")]
    assert [type(k) for k, _ in records[2].headers] == [Replaced, str]
    assert [r.value for r in records] == [b'{"event_id":"a"}', RECORDS[1][1], b"{}"]


@pytest.mark.parametrize("reader", ["compiled", "python"])
def test_the_fetcher_reads_every_record_of_a_fetch_past_a_header_key_not_utf8(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches in one fetch, the middle one with a bad key in its second record: every
    record, once each, as the fetcher iterates a batch (skipping those below its position);
    with aiokafka's own pure Python reader too (AIOKAFKA_NO_EXTENSIONS), which raises the
    decode error as a CorruptRecordException."""
    if reader == "python":
        monkeypatch.setattr(aiokafka_compat, "MemoryRecords", _MemoryRecordsPy)
    first = built(3, RECORDS[:2], base_offset=10)
    bad = built(0, [RECORDS[0], (None, b"bad", [(RawKey(), None)]), RECORDS[1]], 12, python=True)
    last = built(3, RECORDS[2:], base_offset=15)
    before = aiokafka_compat.fallbacks()
    records = aiokafka_compat.Records(first + bad + last)
    got: list[Any] = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()  # the batch's own attributes, as the fetcher reads them
        for record in batch:
            if got and record.offset < got[-1].offset + 1:
                continue  # the fetcher's position
            got.append(record)
    assert [r.offset for r in got] == [10, 11, 12, 13, 14, 15, 16]
    assert [r.offset for r in got if any(type(k) is Replaced for k, _ in r.headers)] == [13]
    assert aiokafka_compat.fallbacks() == before + 1


@pytest.mark.parametrize("reader", ["compiled", "python"])
def test_a_batch_broken_otherwise_is_raised_on_as_aiokafka_does(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a header key's decode falls back: any other fault is aiokafka's to raise."""
    if reader == "python":
        monkeypatch.setattr(aiokafka_compat, "MemoryRecords", _MemoryRecordsPy)
    raw = bytearray(built(0, RECORDS[:2], python=True))
    raw[-20:] = b"\xff" * 20  # a varint that never ends (the CRC is not checked here)
    before = aiokafka_compat.fallbacks()
    with pytest.raises(CorruptRecordException):
        list(aiokafka_compat.Records(bytes(raw)).next_batch())
    assert aiokafka_compat.fallbacks() == before


def test_a_batch_not_in_the_fetch_is_named() -> None:
    with pytest.raises(CorruptRecordException, match="offset 5"):
        find_batch(built(0, RECORDS[:1]), 5)


def test_the_private_name_is_where_it_was_read() -> None:
    """The guard `make test-latest` runs: the fetcher still makes its reader by this name."""
    assert hasattr(fetcher, "MemoryRecords")
    aiokafka_compat.install()
    assert fetcher.MemoryRecords is aiokafka_compat.Records
