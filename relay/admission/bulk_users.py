"""``relay users import``: many candidates from one CSV, their new tokens to another.

The input has a header row with an ``email`` column and optionally a ``seconds`` column
(interview seconds granted; ``--seconds`` for rows without one). Every problem is found
before anything is written, with its line number, so a bad file adds nobody. The tokens
go to a new file created with mode 0600 (never to the terminal: thousands of secrets in a
scroll-back or a CI log would outlive their purpose), one ``email,token`` row each.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from relay.fields import email_problem

# One import is one transaction; larger lists can be split into several files.
MAX_USERS_PER_IMPORT = 100_000
MAX_SECONDS = 2**31 - 1  # the column is a PostgreSQL INTEGER


@dataclass(frozen=True)
class NewUser:
    email: str
    seconds: int


class ImportFileError(ValueError):
    """The CSV cannot be imported; the message names every line at fault (up to 20)."""


def parse_users_csv(text: str, default_seconds: int) -> list[NewUser]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "email" not in fields:
        raise ImportFileError("the first line must be a header with an 'email' column")
    reader.fieldnames = fields
    problems: list[str] = []
    users: list[NewUser] = []
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        email = (row.get("email") or "").strip()
        raw_seconds = (row.get("seconds") or "").strip()
        if not email:
            problems.append(f"line {line}: no email")
            continue
        if (problem := email_problem(email)) is not None:
            problems.append(f"line {line}: {problem}")
            continue
        # One address in any case (migration 012): Ana@x.test repeats ana@x.test.
        key = email.lower()
        if key in first_line:
            problems.append(f"line {line}: {email} already on line {first_line[key]}")
            continue
        first_line[key] = line
        seconds = default_seconds
        if raw_seconds:
            try:
                seconds = int(raw_seconds)
            except ValueError:
                problems.append(f"line {line}: seconds {raw_seconds!r} is not a whole number")
                continue
        if not 0 <= seconds <= MAX_SECONDS:
            problems.append(f"line {line}: seconds must be within 0..{MAX_SECONDS}")
            continue
        users.append(NewUser(email, seconds))
        if len(users) > MAX_USERS_PER_IMPORT:
            raise ImportFileError(f"at most {MAX_USERS_PER_IMPORT} users per import")
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ImportFileError("; ".join(problems[:20]) + more)
    if not users:
        raise ImportFileError("no users in the file")
    return users


def write_tokens(path: Path, rows: list[tuple[str, str]]) -> None:
    """``email,token`` rows to a new file, readable by its owner only; never overwrites."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "token"])
        writer.writerows(rows)
