"""Accounts over HTTP: registration, verification, sign-in, the account itself, password
change and reset, with their limits and what they do not reveal."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import select

from conveyor.db import transaction
from conveyor.errors import AuthenticationError, InvalidRequestError
from conveyor.models import AuditEvent, AuthSession, Job, OneTimeToken, TokenPurpose, User
from conveyor.models.base import utcnow
from conveyor.security.passwords import hash_password
from conveyor.services import accounts, sessions, sign_in
from conveyor.services.audit import NOBODY, Client
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, MfaChallenge
from tests.stack import Stack
from tests.unit.http.test_errors import fields, problem

PASSWORD = "a long unusual passphrase"


@pytest.fixture
def stack_settings() -> dict[str, Any]:
    return {"login_account_rate": "3/15m", "reset_rate": "3/1h"}


def jobs_of(stack: Stack, job_type: str) -> list[Job]:
    with stack.db() as session:
        return list(session.scalars(select(Job).where(Job.type == job_type).order_by(Job.id)))


def user_of(stack: Stack, email: str) -> User:
    with stack.db() as session:
        user = session.scalar(select(User).where(User.email == email))
        assert user is not None
        return user


def actions(stack: Stack) -> list[str]:
    with stack.db() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def make_account(stack: Stack, email: str, *, verified: bool = True, active: bool = True) -> User:
    with stack.db.begin() as session:
        user = User(
            email=email,
            password_hash=hash_password(PASSWORD),
            email_verified_at=utcnow() if verified else None,
            active=active,
        )
        session.add(user)
    return user


def token_for(stack: Stack, user: User, purpose: TokenPurpose) -> str:
    data = {"email": user.email} if purpose is TokenPurpose.VERIFY_EMAIL else None
    return accounts.mint_token(
        stack.db, user, purpose, accounts.VERIFY_TTL, uuid.uuid4(), data=data
    )


async def post(stack: Stack, path: str, body: dict[str, Any], **headers: str) -> Any:
    return await stack.client.post(f"/v1{path}", json=body, headers=headers)


async def test_registering_creates_an_unverified_account_and_queues_its_email(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    response = await post(
        stack, "/auth/register", {"email": "New@Example.com", "password": PASSWORD, "name": "Ada"}
    )
    assert response.status == 202, await response.text()
    user = user_of(stack, "new@example.com")
    assert user.email_verified_at is None and user.name == "Ada"
    assert user.password_hash is not None and user.password_hash.startswith("$argon2id$")
    assert [j.payload for j in jobs_of(stack, "auth.send_verification")] == [
        {"user_id": str(user.id)}
    ]
    assert "registered" in actions(stack)


async def test_registering_answers_the_same_for_a_taken_address(embedded_stack: Stack) -> None:
    stack = embedded_stack
    make_account(stack, "taken@example.com")
    taken = await post(
        stack, "/auth/register", {"email": "taken@example.com", "password": PASSWORD}
    )
    fresh = await post(
        stack, "/auth/register", {"email": "fresh@example.com", "password": PASSWORD}
    )
    assert (taken.status, await taken.read()) == (fresh.status, await fresh.read())
    notices = jobs_of(stack, "auth.send_notice")
    assert [j.payload["kind"] for j in notices] == ["account_exists"]


async def test_registering_refuses_a_common_password_by_name(embedded_stack: Stack) -> None:
    response = await post(
        embedded_stack, "/auth/register", {"email": "a@example.com", "password": "password123"}
    )
    assert fields(await problem(response, 422)) == ["password"]


@pytest.mark.parametrize("stack_settings", [{"registration": "closed"}])
async def test_closed_registration_is_forbidden(embedded_stack: Stack) -> None:
    response = await post(
        embedded_stack, "/auth/register", {"email": "a@example.com", "password": PASSWORD}
    )
    assert "registration is closed" in (await problem(response, 403))["detail"]


async def test_a_verification_token_works_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = make_account(stack, "v@example.com", verified=False)
    token = token_for(stack, user, TokenPurpose.VERIFY_EMAIL)
    first = await post(stack, "/auth/verify-email", {"token": token})
    assert first.status == 204, await first.text()
    assert user_of(stack, "v@example.com").email_verified_at is not None
    again = await problem(await post(stack, "/auth/verify-email", {"token": token}), 422)
    assert fields(again) == ["token"] and "used already" in again["detail"]
    unknown = await problem(await post(stack, "/auth/verify-email", {"token": "nope"}), 422)
    assert "not a valid link" in unknown["detail"]
    assert "email_verified" in actions(stack)


async def test_signing_in_answers_tokens_and_records_it(embedded_stack: Stack) -> None:
    stack = embedded_stack
    make_account(stack, "in@example.com")
    response = await post(stack, "/auth/login", {"email": "IN@example.com", "password": PASSWORD})
    body = await response.json()
    assert response.status == 200, body
    assert body["token_type"] == "Bearer" and body["refresh_token"].startswith("cvr_")
    me = await stack.client.get("/v1/me", headers=stack.headers(body["access_token"]))
    me_body = await me.json()
    assert me_body["email"] == "in@example.com" and me_body["email_verified"] is True
    assert jobs_of(stack, "auth.send_notice") == []  # the first sign-in: no notice
    await post(stack, "/auth/login", {"email": "in@example.com", "password": PASSWORD})
    assert [j.payload["kind"] for j in jobs_of(stack, "auth.send_notice")] == ["new_sign_in"]


async def test_wrong_password_unknown_and_disabled_accounts_fail_alike(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    make_account(stack, "known@example.com")
    make_account(stack, "off@example.com", active=False)
    answers = []
    for email, password in [
        ("known@example.com", "not the password"),
        ("nobody@example.com", PASSWORD),
        ("off@example.com", PASSWORD),
    ]:
        response = await post(stack, "/auth/login", {"email": email, "password": password})
        body = await problem(response, 401)
        answers.append(body["detail"])
    assert answers == ["wrong email or password"] * 3
    with stack.db() as session:
        reasons = [
            e.details["reason"]
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == "login_failed")
                .order_by(AuditEvent.id)
            )
        ]
    assert reasons == ["wrong_password", "unknown", "disabled"]


async def test_an_unverified_address_is_refused_after_a_right_password(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    make_account(stack, "unv@example.com", verified=False)
    wrong = await post(stack, "/auth/login", {"email": "unv@example.com", "password": "x" * 9})
    await problem(wrong, 401)
    right = await post(stack, "/auth/login", {"email": "unv@example.com", "password": PASSWORD})
    assert "verify your email" in (await problem(right, 403))["detail"]


async def test_failed_sign_ins_lock_the_account_out_with_retry_after(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    make_account(stack, "lock@example.com")
    for _ in range(3):
        await problem(
            await post(
                stack, "/auth/login", {"email": "lock@example.com", "password": "wrong password"}
            ),
            401,
        )
    locked = await post(stack, "/auth/login", {"email": "lock@example.com", "password": PASSWORD})
    body = await problem(locked, 429)
    assert int(locked.headers["Retry-After"]) > 0 and fields(body) == ["email"]
    assert "lockout" in actions(stack)


async def test_a_login_rehashes_a_password_of_older_parameters(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = make_account(stack, "old@example.com")
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    with stack.db.begin() as session:
        session.get(User, user.id).password_hash = weak.hash(PASSWORD)  # type: ignore[union-attr]
    response = await post(stack, "/auth/login", {"email": "old@example.com", "password": PASSWORD})
    assert response.status == 200
    stored = user_of(stack, "old@example.com").password_hash
    assert stored is not None and "m=19456,t=2,p=1" in stored


async def test_patch_me_changes_the_name_and_refuses_an_email(embedded_stack: Stack) -> None:
    stack = embedded_stack
    changed = await stack.client.patch("/v1/me", json={"name": "Mem"}, headers=stack.headers())
    assert (await changed.json())["name"] == "Mem"
    refused = await stack.client.patch(
        "/v1/me", json={"email": "x@example.com"}, headers=stack.headers()
    )
    body = await problem(refused, 422)
    assert fields(body) == ["email"] and "not supported yet" in body["detail"]


async def test_changing_the_password_ends_the_other_sessions(embedded_stack: Stack) -> None:
    stack = embedded_stack
    make_account(stack, "pw@example.com")
    sign_ins = []
    for _ in range(2):
        response = await post(
            stack, "/auth/login", {"email": "pw@example.com", "password": PASSWORD}
        )
        sign_ins.append(await response.json())
    auth = stack.headers(sign_ins[1]["access_token"])
    wrong = await stack.client.post(
        "/v1/me/password",
        headers=auth,
        json={"current_password": "not it at all", "new_password": "another fine passphrase"},
    )
    assert fields(await problem(wrong, 422)) == ["current_password"]
    weak = await stack.client.post(
        "/v1/me/password",
        headers=auth,
        json={"current_password": PASSWORD, "new_password": "password"},
    )
    assert fields(await problem(weak, 422)) == ["new_password"]
    done = await stack.client.post(
        "/v1/me/password",
        headers=auth,
        json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
    )
    assert done.status == 204, await done.text()
    with stack.db() as session:
        open_ids = {
            str(s.id)
            for s in session.scalars(select(AuthSession).where(AuthSession.revoked_at.is_(None)))
        }
    assert sign_ins[1]["session_id"] in open_ids and sign_ins[0]["session_id"] not in open_ids
    assert "password_changed" in actions(stack)
    assert "password_changed" in [j.payload["kind"] for j in jobs_of(stack, "auth.send_notice")]


async def test_reset_requests_answer_the_same_for_every_address(embedded_stack: Stack) -> None:
    stack = embedded_stack
    make_account(stack, "reset@example.com")
    known = await post(stack, "/auth/password-reset", {"email": "reset@example.com"})
    unknown = await post(stack, "/auth/password-reset", {"email": "ghost@example.com"})
    assert known.status == 202
    assert (known.status, await known.read()) == (unknown.status, await unknown.read())
    assert sorted(j.payload["email"] for j in jobs_of(stack, "auth.send_password_reset")) == [
        "ghost@example.com",
        "reset@example.com",
    ]


async def test_reset_requests_past_the_address_limit_are_429(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for i in range(3):
        response = await post(stack, "/auth/password-reset", {"email": f"r{i}@example.com"})
        assert response.status == 202
    refused = await post(stack, "/auth/password-reset", {"email": "r9@example.com"})
    await problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0


async def test_confirming_a_reset_sets_the_password_and_ends_every_session(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    user = make_account(stack, "conf@example.com", verified=False)
    with stack.db.begin() as session:
        session.get(User, user.id).email_verified_at = utcnow()  # type: ignore[union-attr]
    signed = await (
        await post(stack, "/auth/login", {"email": "conf@example.com", "password": PASSWORD})
    ).json()
    with stack.db.begin() as session:
        session.get(User, user.id).email_verified_at = None  # type: ignore[union-attr]
    token = token_for(stack, user, TokenPurpose.PASSWORD_RESET)
    weak = await post(
        stack, "/auth/password-reset/confirm", {"token": token, "new_password": "short"}
    )
    assert fields(await problem(weak, 422)) == ["new_password"]
    done = await post(
        stack,
        "/auth/password-reset/confirm",
        {"token": token, "new_password": "a brand new passphrase"},
    )
    assert done.status == 204, await done.text()
    again = await post(
        stack,
        "/auth/password-reset/confirm",
        {"token": token, "new_password": "a brand new passphrase"},
    )
    assert "used already" in (await problem(again, 422))["detail"]
    stored = user_of(stack, "conf@example.com")
    assert stored.email_verified_at is not None and stored.tokens_valid_after is not None
    with stack.db() as session:
        ended = session.get(AuthSession, uuid.UUID(signed["session_id"]))
        assert ended is not None and ended.revoked_reason == "password_reset"
    login = await post(
        stack, "/auth/login", {"email": "conf@example.com", "password": "a brand new passphrase"}
    )
    assert login.status == 200
    assert "password_reset" in actions(stack)


async def test_a_newer_reset_token_voids_the_older_one(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = make_account(stack, "two@example.com")
    older = token_for(stack, user, TokenPurpose.PASSWORD_RESET)
    token_for(stack, user, TokenPurpose.PASSWORD_RESET)
    response = await post(
        stack,
        "/auth/password-reset/confirm",
        {"token": older, "new_password": "a brand new passphrase"},
    )
    assert fields(await problem(response, 422)) == ["token"]


async def test_resending_the_verification_answers_the_same_for_every_address(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    waiting = make_account(stack, "waiting@example.com", verified=False)
    make_account(stack, "done@example.com")
    answers = set()
    for email in ("waiting@example.com", "done@example.com", "nobody@example.com"):
        response = await post(stack, "/auth/verify-email/resend", {"email": email})
        answers.add((response.status, await response.read()))
    assert len(answers) == 1 and next(iter(answers))[0] == 202
    # The same work for each: the other two are queued for the system account (sent nothing).
    system = str(accounts.system_owner(stack.db))
    assert [j.payload for j in jobs_of(stack, "auth.send_verification")] == [
        {"user_id": str(waiting.id)},
        {"user_id": system},
        {"user_id": system},
    ]


async def test_registrations_are_limited_per_client_address(embedded_stack: Stack) -> None:
    stack = embedded_stack
    for n in range(3):
        body = {"email": f"r{n}@example.com", "password": PASSWORD}
        assert (await post(stack, "/auth/register", body)).status == 202
    refused = await post(stack, "/auth/register", {"email": "r9@example.com", "password": PASSWORD})
    await problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    with stack.db() as session:
        assert session.scalar(select(User).where(User.email == "r9@example.com")) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/auth/register"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/verify-email"),
        ("POST", "/v1/auth/verify-email/resend"),
        ("POST", "/v1/auth/password-reset"),
        ("POST", "/v1/auth/password-reset/confirm"),
        ("PATCH", "/v1/me"),
        ("POST", "/v1/me/password"),
    ],
)
async def test_malformed_json_is_a_400(embedded_stack: Stack, method: str, path: str) -> None:
    stack = embedded_stack
    response = await stack.client.request(
        method,
        path,
        data=b'{"email": ',
        headers={**stack.headers(), "Content-Type": "application/json"},
    )
    assert "not valid JSON" in (await problem(response, 400))["detail"]


async def _sign_in(stack: Stack, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await post(stack, "/auth/login", {"email": email, "password": password})
    answer: dict[str, Any] = await response.json()
    assert response.status == 200, answer
    return answer


async def _me(stack: Stack, token: str) -> Any:
    return await stack.client.get("/v1/me", headers=stack.headers(token))


async def test_a_password_change_refuses_the_other_sessions_at_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    make_account(stack, "now@example.com")
    kept, ended = [await _sign_in(stack, "now@example.com") for _ in range(2)]
    assert (await _me(stack, ended["access_token"])).status == 200  # known open here
    done = await stack.client.post(
        "/v1/me/password",
        headers=stack.headers(kept["access_token"]),
        json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
    )
    assert done.status == 204, await done.text()
    await problem(await _me(stack, ended["access_token"]), 401)
    assert (await _me(stack, kept["access_token"])).status == 200


async def test_a_reset_refuses_the_account_s_tokens_at_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user = make_account(stack, "gone@example.com")
    signed = await _sign_in(stack, "gone@example.com")
    assert (await _me(stack, signed["access_token"])).status == 200  # known here
    body = {
        "token": token_for(stack, user, TokenPurpose.PASSWORD_RESET),
        "new_password": "a brand new passphrase",
    }
    assert (await post(stack, "/auth/password-reset/confirm", body)).status == 204
    await problem(await _me(stack, signed["access_token"]), 401)


async def test_a_reset_voids_the_second_step_of_a_sign_in_under_way(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    user = make_account(stack, "half@example.com")
    with transaction(stack.db) as session:
        stored = session.get(User, user.id)
        assert stored is not None
        stored.totp_enabled_at = utcnow()
        challenge = sessions.sign_in(
            session,
            TokenConfig.of(stack.settings),
            Lifetimes.of(stack.settings),
            stored,
            amr=["pwd"],
            client=NOBODY,
        )
    assert isinstance(challenge, MfaChallenge)
    body = {
        "token": token_for(stack, user, TokenPurpose.PASSWORD_RESET),
        "new_password": "a brand new passphrase",
    }
    assert (await post(stack, "/auth/password-reset/confirm", body)).status == 204
    with stack.db() as session:
        pending = session.scalars(
            select(OneTimeToken).where(OneTimeToken.purpose == TokenPurpose.MFA_LOGIN.value)
        ).one()
    assert pending.used_at is not None


async def test_a_new_name_shows_at_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    assert (await (await _me(stack, stack.member_token)).json())["name"] != "Ada"
    changed = await stack.client.patch("/v1/me", headers=stack.headers(), json={"name": "Ada"})
    assert changed.status == 200
    assert (await (await _me(stack, stack.member_token)).json())["name"] == "Ada"


def test_a_sign_in_attempt_counts_before_its_password_is_checked(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted first, so concurrent guesses cannot all pass a look at the count."""
    stack = embedded_stack
    make_account(stack, "race@example.com")
    throttles = accounts.Throttles.of(stack.settings)
    key = "login:account:race@example.com"
    seen: list[int] = []

    def verify(hashed: str, password: str) -> bool:
        seen.append(throttles.login_account.peek(key).remaining)
        return False

    monkeypatch.setattr(sign_in, "verify_password", verify)
    with pytest.raises(AuthenticationError):
        sign_in.login(
            stack.db,
            stack.container.submissions,
            TokenConfig.of(stack.settings),
            Lifetimes.of(stack.settings),
            throttles,
            "race@example.com",
            "a guess",
            client=Client("192.0.2.1", None),
        )
    assert seen == [throttles.login_account.rule.limit - 1]


def test_a_password_change_counts_its_attempt_before_the_check(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = embedded_stack
    user = make_account(stack, "race2@example.com")
    throttles = accounts.Throttles.of(stack.settings)
    key = "login:account:race2@example.com"
    seen: list[int] = []

    def verify(hashed: str, password: str) -> bool:
        seen.append(throttles.login_account.peek(key).remaining)
        return False

    monkeypatch.setattr(accounts, "verify_password", verify)
    with pytest.raises(InvalidRequestError):
        accounts.change_password(
            stack.db,
            stack.container.submissions,
            throttles,
            user.id,
            "a guess",
            "another fine passphrase",
            keep_session=None,
            client=NOBODY,
        )
    assert seen == [throttles.login_account.rule.limit - 1]
