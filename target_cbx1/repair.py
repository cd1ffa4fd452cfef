"""Text repair in decoded records: lone surrogates always, mojibake with ftfy when repair_text is on."""

from __future__ import annotations

import typing as t

Fix = t.Callable[[str], str]


def map_texts(value: t.Any, fix: Fix) -> tuple[t.Any, int]:
    """The value with `fix` applied to every text it holds (keys stay as they are), and how many
    texts changed; containers are copied only where something changed.

    Raises RecursionError for a value nested too deeply to walk (its record then fails).
    """
    if isinstance(value, str):
        fixed = fix(value)
        return fixed, int(fixed is not value and fixed != value)
    if isinstance(value, dict):
        items = {key: map_texts(item, fix) for key, item in value.items()}
        changed = sum(count for _, count in items.values())
        return ({key: item for key, (item, _) in items.items()}, changed) if changed else (value, 0)
    if isinstance(value, list):
        entries = [map_texts(item, fix) for item in value]
        changed = sum(count for _, count in entries)
        return ([item for item, _ in entries], changed) if changed else (value, 0)
    return value, 0


def without_lone_surrogates(text: str) -> str:
    """Lone surrogates (from "\\ud800" escapes) as U+FFFD; valid text comes back as it is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def without_mojibake(text: str) -> str:
    """UTF-8 that was decoded as Latin-1 or Windows-1252 upstream, decoded right (CafÃ© -> Café).
    ASCII text cannot be mojibake and is passed over at once.
    """
    if text.isascii():
        return text
    import ftfy  # only runs with repair_text pay for its import

    return ftfy.fix_encoding(text)
