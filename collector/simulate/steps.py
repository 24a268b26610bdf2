"""One request of a simulation, and a script: one person's requests, sent in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


@dataclass
class Step:
    """One request, or a pause. `convert`: a conversion pixel for the click id the last
    `click` got; `pause`: nothing sent for `params["seconds"]`; `headers`: more request
    headers (Sec-Purpose ...)."""

    kind: str  # pixel, post, click, convert, pause
    params: dict[str, Any] = field(default_factory=dict)
    ua: str = BROWSER
    ip: str = ""  # the client's address, sent as X-Forwarded-For ("": none sent)
    mark: str = ""  # a visit this request begins: the sender notes when it went
    headers: dict[str, str] = field(default_factory=dict)


Script = list[Step]
