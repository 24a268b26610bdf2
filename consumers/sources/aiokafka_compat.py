"""Every private name of aiokafka the consumer reads, in one place: the record reader its
fetcher makes for each fetch (`aiokafka.consumer.fetcher.MemoryRecords`).

`install` has the fetcher read a record batch that aiokafka's reader refuses for a header key
that is not UTF-8 with consumers/sources/record_batch.py instead, as Kafka's own clients read
it (the bytes replaced), rather than raise on every fetch of it. The dependency is pinned below
its next minor (pyproject.toml); `make test-latest` runs the tests that guard this
(tests/unit/test_record_batch.py, tests/integration/test_kafka_consumer.py) against the newest
release before the pin is moved. KNOWN names the releases this was read from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aiokafka
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords

from consumers.sources.record_batch import find_batch, read_batch

log = logging.getLogger("beacon.consumer")

KNOWN = ("0.14",)
# Batches read by record_batch in this process: the fetcher is the process's, not a
# consumer's; once there was one, a Kafka feed looks for its records' replaced keys.
_fallbacks = 0


def tested_release() -> bool:
    """This aiokafka is of a minor release the name was read from."""
    return aiokafka.__version__.startswith(KNOWN)


def install() -> None:
    """The fetcher of every aiokafka consumer in this process reads its fetches with
    `Records`; idempotent."""
    if not tested_release():
        log.warning("aiokafka %s is not a release consumers/sources/aiokafka_compat.py was read "
                    "from (%s)", aiokafka.__version__, ", ".join(KNOWN))  # fmt: skip
    fetcher.MemoryRecords = Records  # type: ignore[attr-defined, misc]


def fallbacks() -> int:
    """Record batches read in this process past a header key that was not UTF-8."""
    return _fallbacks


class Records:
    """A fetch's batches as MemoryRecords reads them, each able to fall back on
    record_batch.read_batch."""

    __slots__ = ("_raw", "_records")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._records = MemoryRecords(raw)

    def size_in_bytes(self) -> int:
        size: int = self._records.size_in_bytes()
        return size

    def has_next(self) -> bool:
        more: bool = self._records.has_next()
        return more

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None or batch.is_control_batch:
            return batch  # a control batch's one record has no headers; it is read with next()
        return Batch(batch, self._raw)


class Batch:
    """A batch of aiokafka's reader, its attributes as they are, its records read again by
    record_batch.read_batch once a header key stops that reader."""

    __slots__ = ("_batch", "_raw")

    def __init__(self, batch: Any, raw: bytes) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        global _fallbacks
        try:
            yield from self._batch
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            # aiokafka's pure Python reader (AIOKAFKA_NO_EXTENSIONS) raises the one from the other
            cause = exc if isinstance(exc, UnicodeDecodeError) else exc.__cause__
            if not isinstance(cause, UnicodeDecodeError):
                raise
            records = read_batch(find_batch(self._raw, self._batch.base_offset))
            _fallbacks += 1
            # All of them again: the fetcher skips those below its position, handed over
            # already.
            yield from records
