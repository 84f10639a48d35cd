"""Strict parsing of the numbers clients send in headers and query strings.

`int()` accepts what no client means (`²`, Arabic-Indic digits, `1_000`) and raises
ValueError past 4,300 digits: both used to end as a 500. Here a number is 1-16 ASCII
digits, at most `MAX_COUNT`, and anything else is an `InvalidField` naming the field.
"""

from __future__ import annotations

from deployments.protocol import InvalidField

MAX_COUNT = 2**53 - 1
"""Largest sequence number or chunk index a client may send (exact in JavaScript too)."""


def parse_count(raw: str, field: str, maximum: int = MAX_COUNT) -> int:
    """A non-negative whole number written in ASCII digits, at most `maximum`; else InvalidField."""
    text = raw.strip()
    if 0 < len(text) <= len(str(maximum)) and text.isascii() and text.isdigit() and int(text) <= maximum:
        return int(text)
    shown = raw if len(raw) <= 32 else raw[:32] + "..."
    raise InvalidField(f"{field}: must be a whole number from 0 to {maximum} in ASCII digits, got {shown!r}", field=field)
