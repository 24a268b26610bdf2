"""The fault suite's figures: one line per case on stdout and in a JSON-lines file.

docs/reliability.md quotes these lines; `make faults` prints them as a table at the end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RESULTS = Path(os.environ.get("BEACON_FAULTS_RESULTS", "data/faults/results.jsonl"))


def record(
    case: str,
    *,
    sent: int,
    stored: int,
    loss_window_s: float | None,
    promise: str,
    **figures: float | int | str,
) -> dict[str, object]:
    """Print and append one case's outcome: requests answered (`sent`), distinct events stored
    after dedup, the measured window during which answered events could be lost (None: no loss
    possible under this fault), the promise docs/reliability.md makes, and any other figures."""
    line: dict[str, object] = {
        "case": case,
        "sent": sent,
        "stored": stored,
        "lost": sent - stored,
        "loss_window_s": loss_window_s,
        "promise": promise,
        **figures,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(
        f"\nFAULT {case}: sent={sent} stored={stored} lost={sent - stored} "
        f"window={loss_window_s} {figures or ''}",
        flush=True,
    )
    return line
