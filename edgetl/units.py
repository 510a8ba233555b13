"""Sizes as a person reads them in tables and messages: the one MiB formatter.

    mib(3_500_000)        # "3.34"
    mib(None, digits=0)   # "-" (not measured)
"""

from __future__ import annotations


def mib(n: float | None, digits: int = 2) -> str:
    """``n`` bytes in MiB with thousands separators (``"1,234.50"``, no unit: tables put it in the header); ``"-"``
    for None."""
    return "-" if n is None else f"{n / 2**20:,.{digits}f}"
