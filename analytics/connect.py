"""The store a process opens: a ClickHouse server over HTTP when a URL is set, else the embedded
chDB store in the data directory; and the read-only way into the same store."""

from __future__ import annotations

from analytics.settings import StoreSettings
from analytics.store import Writer
from analytics.store.http import HttpWriter
from analytics.store.readers import ChdbReader, HttpReader, Reader


def open_writer(settings: StoreSettings) -> Writer:
    """The ClickHouse server at `clickhouse_url`, or the embedded store in `store_dir`."""
    if settings.clickhouse_url:
        return _http_writer(settings)
    from analytics.store.chdb import ChdbWriter  # chDB is a heavy import: only its owner pays

    return ChdbWriter(settings.store_dir)


def open_reader(settings: StoreSettings) -> Reader:
    """A read-only way into the same store, apart from the writer (analytics/store/readers.py);
    the embedded store's once its owner opened it (open_writer)."""
    if settings.clickhouse_url:
        # A writer of its own: a session takes one statement at a time, and a day's settling
        # may hold the writer's for up to BEACON_CLICKHOUSE_DAY_TIMEOUT_S.
        return HttpReader(_http_writer(settings), settings.read_limits, owns_writer=True)
    return ChdbReader(settings.store_dir, settings.read_limits)


def _http_writer(settings: StoreSettings) -> HttpWriter:
    return HttpWriter(
        settings.clickhouse_url,
        settings.clickhouse_user,
        settings.clickhouse_password,
        compression=settings.clickhouse_compression,
        day_timeout_s=settings.clickhouse_day_timeout_s,
        cluster=settings.cluster,
        replicas_cluster=settings.clickhouse_replicas_cluster,
        insert_quorum=settings.clickhouse_insert_quorum,
    )
