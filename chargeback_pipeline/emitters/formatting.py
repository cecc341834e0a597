"""Money as text in emitted files: exactly four decimals, plain notation.

Shared by every emitter that writes amounts (CSV cells, OpenMetrics sample values), so
a number reads the same in a spreadsheet and on a dashboard and never passes through
``float``.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from chargeback_pipeline.models import QUANTUM


def format_amount(amount: Decimal) -> str:
    """Plain notation, exactly four decimals, never ``-0.0000`` (``str(Decimal)`` is unstable).

    An amount with more precision is an upstream bug and raises instead of being
    rounded here, because rounding in an output would make it disagree with storage.
    """
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be Decimal, got {type(amount).__name__} {amount!r}")
    if not amount.is_finite():
        raise ValueError(f"amount {amount} is not a finite number")
    try:
        quantized = amount.quantize(QUANTUM)
    except InvalidOperation as exc:
        raise ValueError(f"amount {amount} is too large to write with four decimals") from exc
    if quantized != amount:
        raise ValueError(f"amount {amount} has more than four decimal places")
    if quantized.is_zero():
        quantized = abs(quantized)
    return f"{quantized:f}"
