"""repair_text: mojibake in a record's text (UTF-8 that was decoded as Latin-1 upstream) fixed with ftfy."""

from __future__ import annotations

import typing as t

import ftfy


def repaired(value: t.Any) -> tuple[t.Any, int]:
    """The value with mojibake fixed in every text it holds (keys stay as they are), and how many
    texts changed. ASCII text cannot be mojibake and is passed over at once.
    """
    if isinstance(value, str):
        if value.isascii():
            return value, 0
        fixed = ftfy.fix_encoding(value)
        return fixed, int(fixed != value)
    if isinstance(value, dict):
        changed = 0
        result = {}
        for key, item in value.items():
            result[key], count = repaired(item)
            changed += count
        return (result, changed) if changed else (value, 0)
    if isinstance(value, list):
        items = [repaired(item) for item in value]
        changed = sum(count for _, count in items)
        return ([item for item, _ in items], changed) if changed else (value, 0)
    return value, 0
