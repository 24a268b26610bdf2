"""How the truth rounds its figures: as the reports do."""

from __future__ import annotations

from decimal import Decimal


def ratio(part: int, whole: int | None) -> float | None:
    """A rate to 4 places; None without a whole."""
    return round(part / whole, 4) if whole else None


def money(total: Decimal) -> str:
    return str(total.quantize(Decimal("0.01")))
