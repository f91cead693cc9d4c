"""A small OpenID provider on 127.0.0.1 for the OIDC tests, on the test's own event loop.

It publishes a discovery document and its keys, auto-approves its one user at `/authorize`
(a redirect back with a code and the state, remembering the nonce and PKCE challenge), and at
`/token` checks the client's credentials, the code (single-use), the redirect URI and the PKCE
verifier, then returns an RS256 ID token with a `kid`. `fault` makes it misbehave in one way:

    async with oidc_provider() as provider:
        provider.fault = "wrong_nonce"
        ...  # a login now gets an ID token with another nonce

Its address is loopback: the client that reaches it must allow it
(`EgressPolicy.parse(["127.0.0.1"])`).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from conveyor.security.oidc import pkce_challenge

Fault = Literal[
    "wrong_nonce",
    "wrong_audience",
    "wrong_issuer",
    "expired",
    "alg_none",
    "hs256",
    "unknown_kid",
    "bad_signature",
]

CLIENT_ID = "conveyor-test"
CLIENT_SECRET = "test-client-secret-of-32-bytes-or-more"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str


@dataclass
class OidcProvider:
    """The provider; `issuer` is its URL once started."""

    client_id: str = CLIENT_ID
    #: None: a public client (it sends its id in the form, and no secret).
    client_secret: str | None = CLIENT_SECRET
    user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "user-1",
            "email": "ada@example.com",
            "email_verified": True,
            "name": "Ada Lovelace",
        }
    )
    algorithms: list[str] = field(default_factory=lambda: ["RS256"])
    fault: Fault | None = None
    issuer: str = ""
    #: Requests received per path, so tests can count fetches.
    hits: dict[str, int] = field(default_factory=dict)
    _keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)
    _grants: dict[str, _Grant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rotate_keys()

    def rotate_keys(self) -> None:
        """Sign with a new key from now on, and publish only it (the old one is withdrawn)."""
        self._keys = [(f"key-{secrets.token_hex(4)}", _new_key())]

    @property
    def kid(self) -> str:
        return self._keys[0][0]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        response: web.StreamResponse = await handler(request)
        return response

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": self.algorithms,
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = []
        for kid, key in self._keys:
            public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def _authorize(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request"}, status=400)
        code = secrets.token_urlsafe(16)
        self._grants[code] = _Grant(
            query["client_id"], query["redirect_uri"], query["nonce"], query["code_challenge"]
        )
        location = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        raise web.HTTPFound(location)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id = self._client(request, form)
        if client_id is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self._grants.pop(str(form.get("code")), None)  # single use
        verifier = str(form.get("code_verifier", ""))
        if (
            grant is None
            or grant.client_id != client_id
            or grant.redirect_uri != form.get("redirect_uri")
            or pkce_challenge(verifier) != grant.challenge
        ):
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self._id_token(grant.nonce),
            }
        )

    def _client(self, request: web.Request, form: Any) -> str | None:
        """The authenticated client's id: HTTP Basic with the secret, or a public client's id."""
        if self.client_secret is None:
            return self.client_id if form.get("client_id") == self.client_id else None
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            pair = base64.b64decode(encoded, validate=True).decode()
        except ValueError:
            return None
        client_id, _, secret = (unquote_plus(part) for part in pair.partition(":"))
        if scheme != "Basic" or (client_id, secret) != (self.client_id, self.client_secret):
            return None
        return client_id

    def _id_token(self, nonce: str) -> str:
        now = int(time.time())
        fault = self.fault
        claims = {
            **self.user,
            "iss": self.issuer + "/other" if fault == "wrong_issuer" else self.issuer,
            "aud": "someone-else" if fault == "wrong_audience" else self.client_id,
            "iat": now - 3600 if fault == "expired" else now,
            "exp": now - 600 if fault == "expired" else now + 300,
            "nonce": "another-nonce" if fault == "wrong_nonce" else nonce,
        }
        kid, key = self._keys[0]
        if fault == "alg_none":
            return jwt.encode(claims, None, algorithm="none", headers={"kid": kid})
        if fault == "hs256":  # signed with the client secret, which the client knows too
            return jwt.encode(claims, CLIENT_SECRET, "HS256", headers={"kid": kid})
        if fault == "unknown_kid":
            kid = "key-nobody-published"
        if fault == "bad_signature":
            key = _new_key()
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@asynccontextmanager
async def oidc_provider(**options: Any) -> AsyncIterator[OidcProvider]:
    """Run an `OidcProvider(**options)` on 127.0.0.1 until the block ends."""
    provider = OidcProvider(**options)
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        provider.issuer = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield provider
    finally:
        await runner.cleanup()
