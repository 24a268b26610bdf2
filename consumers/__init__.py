"""Beacon consumers: read events from a source, enrich them, insert them into ClickHouse."""
