"""Kafka's record batch (format v2) read from its bytes, with header keys that are not UTF-8.

A header key is a string in Kafka's protocol; Kafka's own clients read its bytes as UTF-8 and
replace what is not (`Utils.utf8` in the Java client), so a producer that writes raw bytes
there (a C client takes a header name as bytes) is read everywhere. aiokafka's reader raises
UnicodeDecodeError instead, on every fetch of the batch and for every member of the group: one
such record would hold its partition for good. consumers/sources/aiokafka_compat.py hands that
batch to `read_batch`, which reads it as the Java client does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import CorruptRecordException
from aiokafka.record.util import decode_varint

# A batch's header as the protocol lays it out: base offset, length, leader epoch, magic, CRC,
# attributes, last offset delta, first and max timestamps, producer id, epoch, base sequence,
# record count. The records (compressed as a whole, if at all) follow.
HEADER = struct.Struct(">qiibIhiqqqhii")
LOG_OVERHEAD_BYTES = 12  # base offset and length: `length` counts what follows them
MAGIC_V2 = 2
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
DECODERS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


class Replaced(str):
    """A header key whose bytes were not UTF-8, read with them replaced: a str, told apart by
    its type (the feed counts the records that hold one)."""

    __slots__ = ()


class Record(NamedTuple):
    """A record as aiokafka's fetcher reads one (offset, timestamp, its type, key, value,
    headers; v2 records carry no checksum of their own)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


def find_batch(raw: bytes | memoryview, base_offset: int) -> bytes:
    """The bytes of the batch at `base_offset` among a fetch's batches, laid end to end."""
    view = memoryview(raw)
    pos = 0
    while pos + LOG_OVERHEAD_BYTES <= len(view):
        offset, length = struct.unpack_from(">qi", view, pos)
        end = pos + LOG_OVERHEAD_BYTES + length
        if offset == base_offset:
            return bytes(view[pos:end])
        pos = end
    raise CorruptRecordException(f"no record batch at offset {base_offset} in the fetch")


def read_batch(batch: bytes) -> list[Record]:
    """The records of one v2 batch, a header key that is not UTF-8 read as `Replaced`."""
    base_offset, _, _, magic, _, attributes, _, first_ms, max_ms, *_, count = HEADER.unpack_from(
        batch
    )
    if magic != MAGIC_V2:  # only v2 has headers: aiokafka read the others itself
        raise CorruptRecordException(f"record batch of magic {magic}, not {MAGIC_V2}")
    body = batch[HEADER.size :]
    if codec := attributes & COMPRESSION_MASK:
        if codec not in DECODERS:
            raise CorruptRecordException(f"unknown compression codec {codec}")
        body = DECODERS[codec](body)
    log_append = (attributes & TIMESTAMP_TYPE_MASK) >> 3
    records: list[Record] = []
    pos = 0
    for _ in range(count):
        length, pos = decode_varint(body, pos)
        end = pos + length
        _, pos = decode_varint(body, pos)  # the record's attributes: none used yet
        ts_delta, pos = decode_varint(body, pos)
        offset_delta, pos = decode_varint(body, pos)
        key, pos = _nullable(body, pos)
        value, pos = _nullable(body, pos)
        headers: list[tuple[str, bytes | None]] = []
        header_count, pos = decode_varint(body, pos)
        for _ in range(header_count):
            key_len, pos = decode_varint(body, pos)
            raw_key = body[pos : pos + key_len]
            pos += key_len
            try:
                name = raw_key.decode()
            except UnicodeDecodeError:
                name = Replaced(raw_key.decode(errors="replace"))
            header_value, pos = _nullable(body, pos)
            headers.append((name, header_value))
        if pos != end:
            raise CorruptRecordException(f"record at offset delta {offset_delta}: bad length")
        timestamp = max_ms if log_append else first_ms + ts_delta
        records.append(
            Record(base_offset + offset_delta, timestamp, log_append, key, value, headers)
        )
    return records


def _nullable(body: bytes, pos: int) -> tuple[bytes | None, int]:
    """Bytes after their varint length (-1: none), and the position past them."""
    length, pos = decode_varint(body, pos)
    if length < 0:
        return None, pos
    return body[pos : pos + length], pos + length
