"""Users: which addresses an account may have."""

from __future__ import annotations

import pytest

from conveyor.errors import InvalidRequestError
from conveyor.services.users import normalize_email


@pytest.mark.parametrize(
    "address",
    [
        "a:b@example.com",
        "a b@example.com",
        "a@b@example.com",
        '"a"@example.com',
        "a,b@example.com",
        "a<b>@example.com",
        "a@exa;mple.com",
        "a\x00@example.com",
        "a\\b@example.com",
        "a@[127.0.0.1]",
        "@example.com",
        "a@",
        "nobody",
    ],
)
def test_an_address_with_specials_or_spaces_is_refused_naming_email(address: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        normalize_email(address)
    assert [error["field"] for error in refused.value.errors or ()] == ["email"]


@pytest.mark.parametrize(
    ("address", "normalized"),
    [
        (" Ada.Lovelace+tag@Example.COM ", "ada.lovelace+tag@example.com"),
        ("o'brien@example.com", "o'brien@example.com"),
        ("ü@bücher.de", "ü@bücher.de"),
    ],
)
def test_ordinary_addresses_are_trimmed_and_lowercased(address: str, normalized: str) -> None:
    assert normalize_email(address) == normalized
