"""The dashboard page: read-only, behind a token, charts drawn on the server as SVG.

Served on the store owner's loopback port in embedded mode (analytics/query_server.py),
and by `beacon dashboard` (service.py) in front of a ClickHouse server.
"""
