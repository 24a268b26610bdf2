"""Storage and reading: schema and migrations, rollups, queries, reports, the dashboard, the
store port, erasure and export."""
