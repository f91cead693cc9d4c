"""Password hashing (argon2id, OWASP's parameters) and the rules a new password must meet.

A password is compared as its NFKC normalisation (NIST SP 800-63B): the same password typed
on another keyboard or input method, composed differently, still matches. Rules follow
OWASP's ASVS: 8 to 256 characters, no composition rules, not one of the most common
passwords, not the account's email. The common passwords are the entries of 8 characters or
more of the NCSC's list of the 100,000 most used passwords (from SecLists, MIT licence),
lowercased: `common_passwords.txt`, shipped in the package.
"""

from __future__ import annotations

import functools
import secrets
import unicodedata
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from conveyor.errors import InvalidRequestError

MIN_LENGTH = 8
MAX_LENGTH = 256

#: OWASP Password Storage Cheat Sheet: argon2id, 19 MiB of memory, 2 iterations, 1 lane.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.ID)


def _normalized(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    """The argon2id hash of `password` (PHC string, with its salt and parameters)."""
    return HASHER.hash(_normalized(password))


def verify_password(hashed: str, password: str) -> bool:
    """Whether `password` matches `hashed`; False for a mismatch and for a malformed hash."""
    try:
        return HASHER.verify(hashed, _normalized(password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(hashed: str) -> bool:
    """Whether `hashed` was made with other parameters than today's (or is not an argon2
    hash): after a successful login, store a new hash of the password."""
    try:
        return HASHER.check_needs_rehash(hashed)
    except InvalidHashError:
        return True


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def dummy_verify(password: str) -> None:
    """Spend what verifying `password` against a real hash costs, for an unknown account:
    a login's time does not tell whether the account exists."""
    verify_password(_dummy_hash(), password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped common passwords, lowercase; read once, on first use."""
    text = resources.files("conveyor.security").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(text.splitlines())


def _problem(password: str, email: str | None) -> str | None:
    """Why `password` may not be chosen, or None."""
    length = len(password)
    if length < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters long (it has {length})"
    if length > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters long (it has {length})"
    folded = password.lower()
    if folded in common_passwords():
        return "is one of the most common passwords: choose one that is harder to guess"
    if email:
        address = _normalized(email).strip().lower()
        if folded in {address, address.rpartition("@")[0]}:
            return "must not be your email address, nor its part before the @"
    return None


def check_password(password: str, *, email: str | None = None) -> None:
    """Refuse a new password that breaks a rule: length 8..256 (Unicode code points, after
    NFKC), not a common password, not the email or its local part (both compared without
    regard to case). Raises InvalidRequestError naming the field `password`."""
    problem = _problem(_normalized(password), email)
    if problem is not None:
        raise InvalidRequestError(
            f"this password cannot be used: it {problem}",
            errors=[{"field": "password", "message": problem}],
        )
