"""The second step of a sign-in on PostgreSQL: a TOTP code, or a recovery code, sent in two
concurrent sign-ins lets exactly one of them in."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
from sqlalchemy.orm import Session, sessionmaker

from conveyor.db import transaction
from conveyor.errors import AuthenticationError
from conveyor.models import User
from conveyor.security import totp
from conveyor.security.throttle import MemoryStore, Rule, Throttle
from conveyor.services import mfa, sessions
from conveyor.services.audit import NOBODY
from conveyor.services.auth import TokenConfig
from conveyor.services.sessions import Lifetimes, MfaChallenge, Tokens
from tests.stack import Stack
from tests.stack import test_settings as settings_of

pytestmark = pytest.mark.integration

SETTINGS = settings_of()


def _user_with_mfa(db: sessionmaker[Session], checker: mfa.Checker) -> tuple[User, str, list[str]]:
    """A user with MFA on: the user, the TOTP secret and the recovery codes."""
    with transaction(db) as session:
        user = User(email="mfa@example.com", role="member", active=True)
        session.add(user)
        session.flush()
        signed_in = sessions.start(
            session,
            TokenConfig.of(SETTINGS),
            Lifetimes.of(SETTINGS),
            user,
            amr=["oidc:example"],
            client=NOBODY,
        )
    enrolment = mfa.begin_enrolment(
        db,
        checker,
        user.id,
        password=None,
        session_id=signed_in.session_id,
        issuer="Conveyor",
    )
    enabled = mfa.confirm_enrolment(
        db,
        checker,
        TokenConfig.of(SETTINGS),
        Lifetimes.of(SETTINGS),
        user.id,
        totp.code_at(enrolment.secret),
        amr=["pwd"],
        client=NOBODY,
    )
    return user, enrolment.secret, enabled.recovery_codes


def _challenge(db: sessionmaker[Session], user: User) -> str:
    with transaction(db) as session:
        result = sessions.sign_in(
            session,
            TokenConfig.of(SETTINGS),
            Lifetimes.of(SETTINGS),
            session.merge(user),
            amr=["pwd"],
            client=NOBODY,
        )
    assert isinstance(result, MfaChallenge)
    return result.mfa_token


def _race(db: sessionmaker[Session], checker: mfa.Checker, tokens: list[str], code: str) -> int:
    """How many of the concurrent second steps (one per mfa_token, the same code) got in."""
    barrier = Barrier(len(tokens))

    def step(mfa_token: str) -> Tokens | None:
        barrier.wait(timeout=10)
        try:
            return mfa.finish_sign_in(
                db,
                checker,
                TokenConfig.of(SETTINGS),
                Lifetimes.of(SETTINGS),
                mfa_token,
                code,
                client=NOBODY,
            )
        except AuthenticationError:
            return None

    with ThreadPoolExecutor(len(tokens)) as pool:
        results = list(pool.map(step, tokens))
    return sum(result is not None for result in results)


@pytest.fixture
def checker(stack: Stack) -> mfa.Checker:
    return mfa.Checker(
        mfa.sealer_of(SETTINGS),
        Throttle(MemoryStore(), Rule(100, 60)),
        stack.container.submissions,
        Throttle(MemoryStore(), Rule(100, 60)),
    )


def test_concurrent_sign_ins_with_the_same_totp_code_let_one_in(
    stack: Stack, checker: mfa.Checker
) -> None:
    pg_db = stack.db
    user, secret, _ = _user_with_mfa(pg_db, checker)
    tokens = [_challenge(pg_db, user) for _ in range(4)]
    code = totp.code_at(secret, totp.time_step() * totp.PERIOD + totp.PERIOD)  # the next step's
    assert _race(pg_db, checker, tokens, code) == 1


def test_concurrent_sign_ins_with_the_same_recovery_code_let_one_in(
    stack: Stack, checker: mfa.Checker
) -> None:
    pg_db = stack.db
    user, _, codes = _user_with_mfa(pg_db, checker)
    tokens = [_challenge(pg_db, user) for _ in range(4)]
    assert _race(pg_db, checker, tokens, codes[0]) == 1
