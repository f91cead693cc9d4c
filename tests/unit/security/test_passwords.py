"""Password hashing with OWASP's argon2id parameters, and the rules of a new password."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from conveyor.errors import InvalidRequestError
from conveyor.security import passwords
from conveyor.security.passwords import (
    check_password,
    common_passwords,
    dummy_verify,
    hash_password,
    needs_rehash,
    verify_password,
)


def refusal(password: str, *, email: str | None = None) -> str:
    """The message naming `password` of the refusal of `password`."""
    with pytest.raises(InvalidRequestError) as caught:
        check_password(password, email=email)
    [error] = caught.value.errors
    assert error["field"] == "password"
    return str(error["message"])


def test_hashes_are_argon2id_with_owasp_parameters() -> None:
    hashed = hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    parameters = extract_parameters(hashed)
    assert (parameters.memory_cost, parameters.time_cost, parameters.parallelism) == (
        19456,
        2,
        1,
    )


def test_a_password_verifies_against_its_hash_and_no_other_does() -> None:
    hashed = hash_password("correct horse battery staple")
    assert verify_password(hashed, "correct horse battery staple")
    assert not verify_password(hashed, "correct horse battery stapler")
    assert hash_password("correct horse battery staple") != hashed  # a salt of its own


@pytest.mark.parametrize("hashed", ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$AAAA$BBBB"])
def test_a_malformed_hash_verifies_nothing_and_raises_nothing(hashed: str) -> None:
    assert not verify_password(hashed, "correct horse battery staple")


def test_a_password_typed_in_another_unicode_form_still_matches() -> None:
    composed, decomposed = "caf\u00e9 au lait!", "cafe\u0301 au lait!"
    assert verify_password(hash_password(composed), decomposed)


def test_a_hash_made_with_other_parameters_needs_rehashing() -> None:
    older = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    assert needs_rehash(older.hash("correct horse battery staple"))
    assert not needs_rehash(hash_password("correct horse battery staple"))
    assert needs_rehash("not a hash")


def test_the_dummy_verification_costs_what_a_real_one_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def spy(hashed: str, password: str) -> bool:
        seen.append(hashed)
        return verify_password(hashed, password)

    monkeypatch.setattr(passwords, "verify_password", spy)
    dummy_verify("whatever was typed")
    dummy_verify("something else")
    [first, second] = seen
    assert first == second  # computed once
    assert extract_parameters(first) == extract_parameters(hash_password("x" * 8))


@pytest.mark.parametrize(
    "password",
    [
        "Tr0ub4dor&3",
        "correct horse battery staple",
        "\u00e9t\u00e9 \u00e0 la plage",  # accented letters
        "\u5bc6\u7801\u5f88\u957f\u5f88\u957f\u7684\u4e86",  # 8 CJK characters
        "x" * 256,
    ],
)
def test_acceptable_passwords_pass(password: str) -> None:
    check_password(password, email="ada@example.com")


def test_length_is_counted_in_code_points_after_nfkc() -> None:
    assert "at least 8 characters" in refusal("abc1234")
    # 8 code points composed (NFKC): "é" written as e + combining accent counts once.
    assert "at least 8" in refusal("e\u0301" * 7)
    check_password("\u00e9" * 8)
    assert "at most 256 characters" in refusal("x" * 257)


def test_common_passwords_are_refused_whatever_their_case() -> None:
    for password in ("password1", "PASSWORD1", "Iloveyou1", "qwertyuiop"):
        assert "most common passwords" in refusal(password)


def test_the_email_or_its_local_part_is_refused() -> None:
    assert "email address" in refusal("ada.lovelace@example.com", email="Ada.Lovelace@example.com")
    assert "email address" in refusal("Ada.Lovelace", email="ada.lovelace@example.com")
    check_password("ada.lovelace.1815", email="ada.lovelace@example.com")


def test_the_refusal_is_an_unprocessable_request_with_a_reason() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_password("short")
    assert caught.value.status == 422
    assert "cannot be used" in caught.value.detail


def test_the_common_list_ships_with_the_package_lowercase_and_long_enough() -> None:
    common = common_passwords()
    assert len(common) > 10_000
    assert {"password", "iloveyou", "qwertyuiop"} <= common
    assert all(entry == entry.lower() and len(entry) >= 8 for entry in common)
    assert common_passwords() is common  # loaded once
