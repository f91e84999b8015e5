"""Field types that the API and the command line validate with, so that what passes
validation is something PostgreSQL stores: text without NUL characters and encodable as
UTF-8 (no lone surrogates, which JSON can spell), JSON whose strings hold no ``\\u0000``
(JSONB refuses it), times with a zone (a time without one is taken as UTC)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field


def storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def storable_json(value: Any) -> Any:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise ValueError("must be JSON of valid Unicode, without NaN or Infinity") from None
    if "\\u0000" in text:
        raise ValueError("must not contain NUL characters")
    return value


def utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None


def iso_utc(value: datetime) -> str:
    """``value`` as the relay writes every time it answers with (API bodies, webhook
    payloads, recordings' files): ISO 8601 in UTC with ``Z``, as pydantic serialises the
    API's models, so a client sees one form everywhere."""
    return utc(value).isoformat().replace("+00:00", "Z")


def iso_utc_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


Text = Annotated[str, AfterValidator(storable_text)]
UtcDatetime = Annotated[datetime, AfterValidator(utc)]
# An e-mail address as the relay keys users by it: one @, no spaces, of a sane length.
# One rule for the API (``Email``), `relay users add` and `relay users import`
# (``email_problem``): an address one of them refuses, none accepts.
EMAIL_MIN_LENGTH = 3
EMAIL_MAX_LENGTH = 320
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
Email = Annotated[
    str,
    Field(min_length=EMAIL_MIN_LENGTH, max_length=EMAIL_MAX_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(storable_text),
]


def email_problem(value: str) -> str | None:
    """Why ``value`` is not an address ``Email`` accepts, or None. Callers strip first
    (the command line and a CSV file do; the API takes exactly what it is sent)."""
    if not EMAIL_MIN_LENGTH <= len(value) <= EMAIL_MAX_LENGTH:
        return f"{value!r} is not an email address (3 to {EMAIL_MAX_LENGTH} characters)"
    if re.fullmatch(EMAIL_PATTERN, value) is None:
        return f"{value!r} is not an email address (one @, no spaces)"
    try:
        storable_text(value)
    except ValueError as exc:
        return f"{value!r} is not an email address: it {exc}"
    return None
