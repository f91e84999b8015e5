from __future__ import annotations

import pytest

from relay.admission.bulk_users import ImportFileError, NewUser, parse_users_csv


def test_header_seconds_column_and_default() -> None:
    text = "email , seconds\na@x.test,5\nb@x.test,\n"
    assert parse_users_csv(text, 60) == [NewUser("a@x.test", 5), NewUser("b@x.test", 60)]


def test_email_only() -> None:
    assert parse_users_csv("email\na@x.test\n", 7) == [NewUser("a@x.test", 7)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a@x.test\n", "header"),
        ("email\n", "no users"),
        ("email\n\nno-at\n", "line 3"),
        ("email\na@x.test\na@x.test\n", "already on line 2"),
        ("email\nana@x.test\nAna@X.test\n", "line 3: Ana@X.test already on line 2"),
        ("email,seconds\na@x.test,1.5\n", "whole number"),
        ("email,seconds\na@x.test,-1\n", "within"),
        ("email,seconds\n,3\n", "no email"),
    ],
)
def test_problems_are_named_by_line(text: str, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        parse_users_csv(text, 60)
