"""What OIDC login fetches from a provider, through the shared outbound client: its discovery
document and key set (cached per provider), and the code exchange.

The protocol's rules are `conveyor.security.oidc`'s; this module only brings the documents.
Every request has a time limit and a size cap, and goes through the outbound address policy
(a provider inside the network must be allowed by `CONVEYOR_OUTBOUND_ALLOW_HOSTS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from conveyor.errors import ProviderResponseError, ProviderUnavailableError
from conveyor.outbound import HttpClient, HttpResponse
from conveyor.security.oidc import (
    Discovery,
    Identity,
    LoginState,
    ProviderConfig,
    UnknownSigningKeyError,
    id_token_of,
    token_request,
    verify_id_token,
)

#: How long a discovery document is used before it is fetched again.
DISCOVERY_TTL_SECONDS = 3600.0
#: A key set is fetched again when a token names a key it lacks, at most this often: a flood
#: of tokens with made-up key ids must not become a flood of requests to the provider.
JWKS_REFETCH_SECONDS = 60.0
#: The largest document read from a provider (discovery documents and key sets are a few KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
TIMEOUT_SECONDS = 10.0
WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass
class _Cached:
    value: Any
    fetched_at: float


class OidcFetcher:
    """Fetches and caches what each provider publishes, and exchanges codes for identities.

    `clock` (monotonic seconds) is there for tests of the cache's timing."""

    def __init__(self, http: HttpClient, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._http = http
        self._clock = clock
        self._discovery: dict[str, _Cached] = {}
        self._jwks: dict[str, _Cached] = {}

    async def discovery(self, provider: ProviderConfig) -> Discovery:
        """The provider's checked discovery document, fetched at most once an hour."""
        cached = self._discovery.get(provider.name)
        if cached is not None and self._clock() - cached.fetched_at < DISCOVERY_TTL_SECONDS:
            return cached.value  # type: ignore[no-any-return]
        url = provider.issuer.rstrip("/") + WELL_KNOWN
        document = _json(await self._get(url), url)
        discovery = Discovery.parse(document, provider)
        self._discovery[provider.name] = _Cached(discovery, self._clock())
        return discovery

    async def jwks(self, provider: ProviderConfig, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's key set: the cached one, or a fresh one when there is none or
        `refresh` asks and the last fetch is over a minute old."""
        cached = self._jwks.get(provider.name)
        if cached is not None:
            recent = self._clock() - cached.fetched_at < JWKS_REFETCH_SECONDS
            if not refresh or recent:
                return cached.value  # type: ignore[no-any-return]
        url = (await self.discovery(provider)).jwks_uri
        document = _json(await self._get(url), url)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ProviderResponseError(f"the key set at {url} has no list of keys")
        self._jwks[provider.name] = _Cached(document, self._clock())
        return document

    async def exchange(self, provider: ProviderConfig, login: LoginState, code: str) -> str:
        """Exchange the callback's code for the provider's ID token (not yet verified)."""
        discovery = await self.discovery(provider)
        url, form, headers = token_request(
            provider, discovery, code, login.verifier, login.redirect_uri
        )
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = await self._http.arequest(
            "POST",
            url,
            data=urlencode(form),
            headers=headers,
            timeout_seconds=TIMEOUT_SECONDS,
            follow_redirects=False,
            read_at_most=MAX_DOCUMENT_BYTES + 1,
        )
        _check(response, "the token endpoint")
        return id_token_of(response.status, _json(response, url))

    async def verify(self, provider: ProviderConfig, id_token: str, nonce: str) -> Identity:
        """Verify an ID token with the provider's keys; a key the cached set lacks (the
        provider rotated its keys) has the set fetched again, once."""
        discovery = await self.discovery(provider)
        try:
            jwks = await self.jwks(provider)
            return verify_id_token(
                id_token, provider=provider, discovery=discovery, jwks=jwks, nonce=nonce
            )
        except UnknownSigningKeyError:
            jwks = await self.jwks(provider, refresh=True)
            return verify_id_token(
                id_token, provider=provider, discovery=discovery, jwks=jwks, nonce=nonce
            )

    async def finish(self, provider: ProviderConfig, login: LoginState, code: str) -> Identity:
        """The end of a login's callback: exchange the code, verify the ID token, and say who
        signed in. AuthenticationError says why a login is refused."""
        return await self.verify(provider, await self.exchange(provider, login, code), login.nonce)

    async def _get(self, url: str) -> HttpResponse:
        response = await self._http.arequest(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout_seconds=TIMEOUT_SECONDS,
            follow_redirects=False,
            read_at_most=MAX_DOCUMENT_BYTES + 1,
        )
        _check(response, url)
        if response.status != 200:
            raise ProviderResponseError(f"{url} answered {response.status}")
        return response


def _check(response: HttpResponse, what: str) -> None:
    """Refuse an answer past the size cap, and call a temporary failure one."""
    if len(response.body) > MAX_DOCUMENT_BYTES:
        raise ProviderResponseError(
            f"the answer of {what} is larger than {MAX_DOCUMENT_BYTES} bytes"
        )
    if response.status >= 500 or response.status in (408, 429):
        raise ProviderUnavailableError(f"{what} answered {response.status}")


def _json(response: HttpResponse, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProviderResponseError(f"the answer of {url} is not JSON") from None
