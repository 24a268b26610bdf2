"""Characters no stored text keeps: the collector strips them, erasure refuses them."""

import re

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators, which JSON
# readers, JavaScript and some log viewers take for line breaks; and the bidi embeddings,
# overrides (U+202A-E) and isolates (U+2066-9). Each is "not printable" to str.isprintable.
BIDI_CHARS = "\u202a-\u202e\u2066-\u2069"
CONTROL_RE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_CHARS}]")
