"""Two-factor sign-in over HTTP: enrolment, confirmation, single-use codes, the second step of
a sign-in, recovery codes and the attempt limit."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import select

from conveyor.db import transaction
from conveyor.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidTokenError,
    TooManyRequestsError,
)
from conveyor.models import AuditEvent, AuthSession, RecoveryCode, User
from conveyor.security import totp
from conveyor.security.passwords import hash_password
from conveyor.security.throttle import MemoryStore, Rule, Throttle
from conveyor.services import mfa, sessions
from conveyor.services.audit import NOBODY, Client
from conveyor.services.auth import TokenConfig, TokenVerifier
from conveyor.services.sessions import Lifetimes, MfaChallenge
from tests.stack import Stack
from tests.stack import test_settings as settings_of
from tests.unit.http.test_errors import fields, problem

MEMBER = "member@example.com"
ADMIN = "admin@example.com"


def _user(stack: Stack, email: str) -> User:
    with stack.db() as session:
        return session.scalars(select(User).where(User.email == email)).one()


def _actions(stack: Stack, action: str) -> list[AuditEvent]:
    with stack.db() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def _signed_in(stack: Stack, email: str, amr: tuple[str, ...] = ("pwd",)) -> str:
    """An access token of a session that began now (first factor `amr`): an account without a
    password changes its second factor only from a recent sign-in."""
    with transaction(stack.db) as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        tokens = sessions.start(
            session,
            TokenConfig.of(stack.settings),
            Lifetimes.of(stack.settings),
            user,
            amr=amr,
            client=NOBODY,
        )
    return tokens.access_token


async def _post(stack: Stack, path: str, token: str | None, body: dict[str, Any]) -> Any:
    headers = stack.headers(token) if token else {}
    return await stack.client.post(f"/v1{path}", json=body, headers=headers)


async def _enrol(stack: Stack, token: str, **body: Any) -> str:
    response = await _post(stack, "/me/mfa/totp", token, body)
    answer = await response.json()
    assert response.status == 200, answer
    return answer["secret"]  # type: ignore[no-any-return]


async def _enable(stack: Stack, token: str) -> tuple[str, dict[str, Any]]:
    """Enrol and confirm with the current code: the secret and the confirmation's answer."""
    secret = await _enrol(stack, token)
    response = await _post(stack, "/me/mfa/totp/confirm", token, {"code": totp.code_at(secret)})
    answer = await response.json()
    assert response.status == 200, answer
    return secret, answer


def _next_code(secret: str) -> str:
    """The code of the next time step: not used yet, and within the accepted window."""
    return totp.code_at(secret, time.time() + totp.PERIOD)


def _challenge(stack: Stack, email: str) -> str:
    """The mfa_token of a sign-in whose password was right."""
    with transaction(stack.db) as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        result = sessions.sign_in(
            session,
            TokenConfig.of(stack.settings),
            Lifetimes.of(stack.settings),
            user,
            amr=["pwd"],
            client=NOBODY,
        )
    assert isinstance(result, MfaChallenge)
    return result.mfa_token


async def test_enrolling_stores_the_secret_sealed_and_confirming_turns_mfa_on(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    response = await _post(stack, "/me/mfa/totp", member, {})
    enrolment = await response.json()
    assert response.status == 200, enrolment
    secret = enrolment["secret"]
    assert enrolment["provisioning_uri"].startswith("otpauth://totp/Conveyor:member%40example.com?")
    pending = _user(stack, MEMBER)
    assert pending.totp_secret is not None and pending.totp_secret.startswith("v1.")
    assert secret not in pending.totp_secret and not pending.mfa_enabled

    response = await _post(stack, "/me/mfa/totp/confirm", member, {"code": totp.code_at(secret)})
    enabled = await response.json()
    assert response.status == 200, enabled
    assert enabled["token_type"] == "Bearer" and enabled["refresh_token"].startswith("cvr_")
    assert len(set(enabled["recovery_codes"])) == mfa.RECOVERY_CODES
    assert _user(stack, MEMBER).mfa_enabled
    with stack.db() as session:
        stored = {row.code_hash for row in session.scalars(select(RecoveryCode))}
    assert stored == {totp.hash_recovery_code(code) for code in enabled["recovery_codes"]}
    assert [e.subject_id for e in _actions(stack, "mfa_enabled")] == [pending.id]

    again = await _post(stack, "/me/mfa/totp", member, {})
    assert "already on" in (await problem(again, 409))["detail"]


async def test_enrolling_needs_the_current_password_when_the_account_has_one(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    with transaction(stack.db) as session:
        user = session.scalars(select(User).where(User.email == MEMBER)).one()
        user.password_hash = hash_password("correct horse battery staple")
    for body in ({}, {"password": "wrong"}):
        response = await _post(stack, "/me/mfa/totp", member, body)
        assert fields(await problem(response, 422)) == ["password"]
    await _enrol(stack, member, password="correct horse battery staple")


async def test_a_code_is_good_once_and_only_near_the_current_time(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    secret = await _enrol(stack, member)
    stale = totp.code_at(secret, time.time() - 3 * totp.PERIOD)
    response = await _post(stack, "/me/mfa/totp/confirm", member, {"code": stale})
    assert fields(await problem(response, 422)) == ["code"]
    code = totp.code_at(secret)
    response = await _post(stack, "/me/mfa/totp/confirm", member, {"code": code})
    assert response.status == 200
    replay = await stack.client.delete(
        "/v1/me/mfa", json={"code": code}, headers=stack.headers(member)
    )
    assert fields(await problem(replay, 422)) == ["code"]
    assert _user(stack, MEMBER).mfa_enabled


async def test_confirming_makes_an_admin_act_as_admin_at_once_and_disabling_undoes_it(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    weak = _signed_in(stack, ADMIN)
    refused = await stack.client.get("/admin/", headers=stack.headers(weak))
    assert refused.status == 403
    secret, enabled = await _enable(stack, weak)
    strong = enabled["access_token"]
    assert (await stack.client.get("/admin/", headers=stack.headers(strong))).status == 200

    response = await stack.client.delete(
        "/v1/me/mfa", json={"code": _next_code(secret)}, headers=stack.headers(strong)
    )
    assert response.status == 204
    user = _user(stack, ADMIN)
    assert user.totp_secret is None and not user.mfa_enabled
    with stack.db() as session:
        assert not session.scalars(select(RecoveryCode)).all()
    assert len(_actions(stack, "mfa_disabled")) == 1
    assert (await stack.client.get("/admin/", headers=stack.headers(strong))).status == 403


async def test_signing_in_takes_a_code_after_the_password(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    secret, _ = await _enable(stack, member)
    mfa_token = _challenge(stack, MEMBER)
    assert mfa_token.startswith("cvm_")

    wrong = await _post(stack, "/auth/login/mfa", None, {"mfa_token": mfa_token, "code": "000000"})
    assert fields(await problem(wrong, 401)) == ["code"]
    body = {"mfa_token": mfa_token, "code": _next_code(secret)}
    response = await _post(stack, "/auth/login/mfa", None, body)
    tokens = await response.json()
    assert response.status == 200, tokens
    assert set(tokens) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "session_id",
    }
    jobs = await stack.client.get("/v1/jobs", headers=stack.headers(tokens["access_token"]))
    assert jobs.status == 200
    assert _actions(stack, "login")[-1].details["amr"] == ["pwd", "otp"]

    reused = await _post(stack, "/auth/login/mfa", None, body)
    assert "sign in again" in (await problem(reused, 401))["detail"]


async def test_an_unknown_mfa_token_is_refused(embedded_stack: Stack) -> None:
    response = await _post(
        embedded_stack, "/auth/login/mfa", None, {"mfa_token": "cvm_nope", "code": "123456"}
    )
    await problem(response, 401)


async def test_a_recovery_code_signs_in_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    _, enabled = await _enable(stack, member)
    code = enabled["recovery_codes"][0].upper()  # typed loosely: case does not matter
    body = {"mfa_token": _challenge(stack, MEMBER), "code": code}
    assert (await _post(stack, "/auth/login/mfa", None, body)).status == 200
    assert len(_actions(stack, "recovery_code_used")) == 1
    again = {"mfa_token": _challenge(stack, MEMBER), "code": code}
    assert fields(await problem(await _post(stack, "/auth/login/mfa", None, again), 401)) == [
        "code"
    ]


async def test_new_recovery_codes_replace_the_old_ones(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    secret, enabled = await _enable(stack, member)
    response = await _post(stack, "/me/mfa/recovery-codes", member, {"code": _next_code(secret)})
    renewed = await response.json()
    assert response.status == 200, renewed
    assert not set(renewed["recovery_codes"]) & set(enabled["recovery_codes"])
    assert len(_actions(stack, "recovery_codes_regenerated")) == 1
    old = {"mfa_token": _challenge(stack, MEMBER), "code": enabled["recovery_codes"][0]}
    assert (await _post(stack, "/auth/login/mfa", None, old)).status == 401
    new = {"mfa_token": _challenge(stack, MEMBER), "code": renewed["recovery_codes"][0]}
    assert (await _post(stack, "/auth/login/mfa", None, new)).status == 200


async def test_second_factor_attempts_are_limited_per_account(embedded_stack: Stack) -> None:
    stack = embedded_stack
    member = _signed_in(stack, MEMBER)
    secret, _ = await _enable(stack, member)  # two attempts of the five
    mfa_token = _challenge(stack, MEMBER)
    for _ in range(3):
        response = await _post(
            stack, "/auth/login/mfa", None, {"mfa_token": mfa_token, "code": "000000"}
        )
        assert response.status == 401
    refused = await _post(
        stack, "/auth/login/mfa", None, {"mfa_token": mfa_token, "code": _next_code(secret)}
    )
    await problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    with stack.db() as session:
        failures = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "login_failed")
        ).all()
    assert len(failures) == 4
    assert [e.details["reason"] for e in _actions(stack, "lockout")] == ["mfa"]


def test_enrolment_needs_a_secret_key() -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_SECRET_KEY"):
        mfa.sealer_of(settings_of(secret_key=None))


def _age(stack: Stack, token: str, by: dt.timedelta) -> None:
    """Make the session of `token` have begun `by` earlier."""
    session_id = TokenVerifier(TokenConfig.of(stack.settings)).verify(token).session_id
    with transaction(stack.db) as session:
        auth_session = session.get(AuthSession, session_id)
        assert auth_session is not None
        auth_session.created_at -= by


async def test_an_account_without_a_password_changes_mfa_only_from_a_recent_sign_in(
    embedded_stack: Stack,
) -> None:
    """A stolen access token of an old sign-in cannot turn on a second factor (and so act
    with the account's full role), nor turn it off or read new recovery codes."""
    stack = embedded_stack
    for stale in (stack.member_token, _signed_in(stack, MEMBER, ("oidc:example",))):
        if stale != stack.member_token:
            _age(stack, stale, mfa.FRESH_SIGN_IN + dt.timedelta(minutes=1))
        refused = await _post(stack, "/me/mfa/totp", stale, {})
        assert "sign in again" in (await problem(refused, 403))["detail"]
    assert _user(stack, MEMBER).totp_secret is None

    fresh = _signed_in(stack, ADMIN, ("oidc:example",))  # an account of its own limit
    secret, _ = await _enable(stack, fresh)
    _age(stack, fresh, mfa.FRESH_SIGN_IN + dt.timedelta(minutes=1))
    renew = await _post(stack, "/me/mfa/recovery-codes", fresh, {"code": _next_code(secret)})
    await problem(renew, 403)
    off = await stack.client.delete(
        "/v1/me/mfa", json={"code": _next_code(secret)}, headers=stack.headers(fresh)
    )
    await problem(off, 403)
    assert _user(stack, ADMIN).mfa_enabled


def _checker(stack: Stack, per_address: int = 100) -> mfa.Checker:
    return mfa.Checker(
        mfa.sealer_of(stack.settings),
        Throttle(MemoryStore(), Rule(100, 60)),
        stack.container.submissions,
        Throttle(MemoryStore(), Rule(per_address, 60)),
    )


def _finish(stack: Stack, checker: mfa.Checker, mfa_token: str, code: str) -> Any:
    return mfa.finish_sign_in(
        stack.db,
        checker,
        TokenConfig.of(stack.settings),
        Lifetimes.of(stack.settings),
        mfa_token,
        code,
        client=Client("192.0.2.7", None),
    )


def test_the_second_step_is_limited_per_client_address(embedded_stack: Stack) -> None:
    stack = embedded_stack
    checker = _checker(stack, per_address=2)
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            _finish(stack, checker, "cvm_guess", "123456")
    with pytest.raises(TooManyRequestsError):
        _finish(stack, checker, "cvm_guess", "123456")


async def test_a_second_step_that_fails_late_keeps_the_account_s_count(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count is cleared only once the sign-in is committed."""
    stack = embedded_stack
    secret, _ = await _enable(stack, _signed_in(stack, MEMBER))
    checker = _checker(stack)
    mfa_token = _challenge(stack, MEMBER)
    with pytest.raises(AuthenticationError):
        _finish(stack, checker, mfa_token, "000000")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(mfa.sessions, "start", broken)
    with pytest.raises(RuntimeError):
        _finish(stack, checker, mfa_token, _next_code(secret))
    key = f"mfa:account:{_user(stack, MEMBER).id}"
    assert checker.throttle.peek(key).remaining == 100 - 2
