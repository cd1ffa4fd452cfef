"""JSON in and out with msgspec: exact numbers (Decimal), compact output, one C call per message."""

from __future__ import annotations

import decimal
import typing as t

import msgspec

_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(float_hook=decimal.Decimal)

DecodeError = msgspec.DecodeError


def encode(value: t.Any) -> bytes:
    """Compact JSON bytes; Decimals are written as the numbers they are."""
    return _encoder.encode(value)


def encode_text(value: t.Any) -> str:
    return _encoder.encode(value).decode()


def decode(text: str | bytes) -> t.Any:
    """A JSON value; numbers with a fraction or exponent become Decimal, so nothing is rounded."""
    return _decoder.decode(text)


def pretty(value: t.Any) -> str:
    """Indented JSON for people to read, numbers still exact."""
    return msgspec.json.format(_encoder.encode(value), indent=2).decode()


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words: null, true/false, a number, text, a list, an object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float, decimal.Decimal)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"
