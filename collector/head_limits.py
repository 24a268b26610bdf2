"""The limits of a request head, for aiohttp's parser (collector/limits.py) and the pixel
fast path alike (collector/fastpath.py)."""

# aiohttp's own defaults, set here so they are visible and documented (docs/security.md):
# the request line (a pixel URL with its page URL and properties fits well within it), each
# header line, and the number of header lines. Beyond them the parser answers 400.
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
