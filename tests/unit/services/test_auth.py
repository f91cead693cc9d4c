"""API tokens: a bounded lifetime, checked at verification as well as at issue."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from conveyor.errors import AuthenticationError, InvalidRequestError
from conveyor.services.auth import ALGORITHM, TokenConfig, TokenVerifier, issue_token
from conveyor.settings import Settings

DAY = 24 * 3600
CONFIG = TokenConfig(
    secret="a-secret-key-that-is-long-enough-for-hs256-signatures",
    issuer="conveyor",
    audience="conveyor-api",
    ttl=dt.timedelta(days=30),
    max_lifetime=dt.timedelta(days=90),
)
USER = uuid.uuid4()


def forged(**claims: Any) -> str:
    """A token signed with the right key, with these claims over sound defaults (a value of
    None leaves the claim out)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(USER),
        "iss": CONFIG.issuer,
        "aud": CONFIG.audience,
        "iat": now,
        "exp": now + 3600,
    }
    base.update(claims)
    return jwt.encode(
        {k: v for k, v in base.items() if v is not None}, CONFIG.secret, algorithm=ALGORITHM
    )


def refused(token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        TokenVerifier(CONFIG).verify(token)
    return caught.value.detail


def test_a_token_within_the_maximum_lifetime_is_accepted() -> None:
    now = int(time.time())
    assert TokenVerifier(CONFIG).verify(forged(exp=now + 90 * DAY)).user_id == USER
    assert TokenVerifier(CONFIG).verify(issue_token(CONFIG, USER)).user_id == USER


def test_a_token_that_expires_in_the_year_9999_is_refused() -> None:
    assert "lives longer" in refused(forged(exp=253402300799))


def test_a_token_whose_exp_is_too_far_after_its_iat_is_refused() -> None:
    # Issued long ago with a long life that has not run out yet: exp - iat is too long.
    now = int(time.time())
    assert "lives longer" in refused(forged(iat=now - 60 * DAY, exp=now + 60 * DAY))


def test_a_token_issued_in_the_future_cannot_stretch_the_life_it_has_left() -> None:
    # exp - iat is within the bound, exp - now is not.
    now = int(time.time())
    refused(forged(iat=now + 30 * DAY, exp=now + 100 * DAY))


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_a_token_without_iat_or_exp_is_refused(claim: str) -> None:
    assert claim in refused(forged(**{claim: None}))


@pytest.mark.parametrize(
    "claims",
    [{"iat": True}, {"iat": "1700000000"}, {"exp": str(int(time.time()) + 60)}],
    ids=["boolean iat", "string iat", "string exp"],
)
def test_times_that_are_not_numbers_are_refused(claims: dict[str, Any]) -> None:
    refused(forged(**claims))


def test_issuing_a_token_longer_than_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS"):
        issue_token(CONFIG, USER, ttl=dt.timedelta(days=91))


def test_settings_refuse_a_ttl_longer_than_the_maximum_lifetime() -> None:
    with pytest.raises(ValidationError, match="CONVEYOR_TOKEN_MAX_LIFETIME_SECONDS"):
        Settings(_env_file=None, token_ttl_seconds=100, token_max_lifetime_seconds=99)  # type: ignore[call-arg]
