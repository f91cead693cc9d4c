"""Who is asking, and whether they may: the principal a request's credentials speak for, and
the role and scope checks of the route table.

Credentials are `Authorization: Bearer <access token>` (a JWT from a sign-in or from
`conveyor tokens issue`) or `Authorization: Bearer <API key>`. Each route of the table names
the least role that may call it and the scope an API key needs; this module is the one place
those are enforced."""

from __future__ import annotations

import functools
import ipaddress
import uuid

from aiohttp import web

from conveyor.errors import AuthenticationError, InvalidTokenError, PermissionDeniedError
from conveyor.http.keys import (
    API_KEY_CACHE,
    CONTAINER,
    PRINCIPAL,
    SESSION_CACHE,
    TOKENS,
    USER,
    USER_CACHE,
)
from conveyor.http.principal import Principal
from conveyor.http.routes import Route
from conveyor.http.runtime import run_db
from conveyor.models import Role, User
from conveyor.models.base import utcnow
from conveyor.services import api_keys, mfa, sessions, users
from conveyor.services.audit import Client
from conveyor.settings import Settings

#: Authentication methods (RFC 8176 `amr` values) that count as a second factor; `cli`: a
#: token issued on the server by someone who can run `conveyor` there.
STRONG_METHODS = frozenset({mfa.OTP, "cli"})


def client_of(request: web.Request) -> Client:
    """Where the request came from, for the audit log and the attempt limits: the peer, or,
    when the peer is a trusted proxy (CONVEYOR_TRUSTED_PROXIES), the address it forwarded;
    and the API key it was made with, if any."""
    proxies = networks(request.config_dict[CONTAINER].settings.trusted_proxies)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    principal = request.get(PRINCIPAL)
    return Client(
        ip=client_address(request.remote, forwarded, proxies),
        user_agent=request.headers.get("User-Agent"),
        api_key_id=principal and principal.api_key_id,
    )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str | None, forwarded: str, proxies: tuple[Network, ...]) -> str | None:
    """The client's address: walking `X-Forwarded-For` from its right end (the hop nearest
    us), the first address that is not a trusted proxy. Entries a client wrote itself sit to
    the left of what our proxies appended, so they are never reached while a proxy is
    trusted; a malformed entry stops the walk at the proxy that passed it on."""
    address = peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    while address is not None and hops and trusted(address, proxies):
        hop = hops.pop()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
    return address


def bearer_credential(request: web.Request) -> str:
    """The credential of `Authorization: Bearer <credential>`; AuthenticationError otherwise."""
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise AuthenticationError("send 'Authorization: Bearer <token or API key>'")
    return credential


async def principal_of(request: web.Request) -> Principal:
    """The principal of the request's bearer token; AuthenticationError otherwise.

    A token of a sign-in session is refused once the session is ended (logout, revoked,
    stolen refresh token) or past its end. Verified tokens, users and sessions are cached
    (TokenVerifier, UserCache, SessionCache), so most requests cost no signature check and
    no query."""
    credential = bearer_credential(request)
    if credential.startswith(api_keys.KEY_PREFIX):
        return await _api_key_principal(request, credential)
    state = request.config_dict
    claims = state[TOKENS].verify(credential)
    user = await active_user(request, claims.user_id)
    valid_after = user.tokens_valid_after
    # `iat` has whole seconds: a token of the second the revocation happened in stays good.
    if valid_after is not None and claims.issued_at < valid_after.replace(microsecond=0):
        raise InvalidTokenError("the token was revoked: sign in again")
    if claims.session_id is not None and not await session_open(request, claims.session_id):
        raise InvalidTokenError("the session was ended: sign in again")
    role = acting_role(state[CONTAINER].settings, user, claims.amr)
    return Principal(user, role, session_id=claims.session_id, amr=claims.amr)


async def _api_key_principal(request: web.Request, key: str) -> Principal:
    """The principal of an API key: its owner, with the user's role, narrowed to its scopes.
    A key counts as a second factor while its owner has MFA on (keys of a role that needs
    one are made only from a session that used one)."""
    state = request.config_dict
    cache = state[API_KEY_CACHE]
    row = await cache.get(key, functools.partial(run_db, state, api_keys.find))
    row = api_keys.check_usable(row, utcnow())
    user = await active_user(request, row.user_id)
    if cache.due_for_touch(row.id):
        await run_db(state, api_keys.touch, row.id)
    role = acting_role(state[CONTAINER].settings, user, (mfa.OTP,))
    return Principal(user, role, scopes=frozenset(row.scopes), api_key_id=row.id)


async def active_user(request: web.Request, user_id: uuid.UUID) -> User:
    """The user with this id (cached); InvalidTokenError if it is gone or deactivated."""
    state = request.config_dict
    user = await state[USER_CACHE].get(user_id, functools.partial(run_db, state, users.get_by_id))
    if user is None or not user.active:
        raise InvalidTokenError("the account does not exist or is deactivated")
    return user


async def session_open(request: web.Request, session_id: uuid.UUID) -> bool:
    """Whether a sign-in session is open (cached for SESSION_TTL; at once after a `drop`)."""
    state = request.config_dict
    return await state[SESSION_CACHE].get(
        session_id, functools.partial(run_db, state, sessions.is_open)
    )


def acting_role(settings: Settings, user: User, amr: tuple[str, ...]) -> Role:
    """The user's role, or `member` when their role must use a second factor and this
    sign-in used none (or the user has since turned MFA off)."""
    role = Role(user.role)
    if role in settings.mfa_required_roles and not _strong(user, amr):
        return Role.MEMBER
    return role


def _strong(user: User, amr: tuple[str, ...]) -> bool:
    """Whether the sign-in used a second factor the user still has (one made before MFA was
    turned off no longer counts), or was made on the server (`cli`)."""
    if "cli" in amr:
        return True
    return user.mfa_enabled and bool(STRONG_METHODS.intersection(amr))


def authorize(principal: Principal, route: Route) -> None:
    """PermissionDeniedError unless the principal's role and scopes allow the route."""
    least = route.role or Role.ADMIN
    if not principal.role.at_least(least):
        if principal.role != principal.user.role:
            raise PermissionDeniedError(
                f"{principal.user.role}s must sign in with a second factor to act as "
                f"{principal.user.role}: enrol with POST /v1/me/mfa/totp, then sign in again"
            )
        raise PermissionDeniedError(f"this needs the {least} role (you are {principal.role})")
    if principal.scopes is not None:
        if route.scope is None:
            raise PermissionDeniedError("API keys may not do this: sign in as the user")
        if route.scope not in principal.scopes:
            raise PermissionDeniedError(f"the API key lacks the scope {route.scope!r}")


async def authenticate(request: web.Request, route: Route | None) -> None:
    """The table's authenticator: the principal becomes `request[PRINCIPAL]` and its viewer
    `request[USER]`; a route its role or scopes do not allow is refused (403)."""
    principal = await principal_of(request)
    if route is not None:
        authorize(principal, route)
    request[PRINCIPAL] = principal
    request[USER] = principal.viewer
