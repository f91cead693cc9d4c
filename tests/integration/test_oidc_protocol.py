"""The OpenID Connect code flow against the local test provider, through the fetch layer and
the shared outbound client: a login that works, and each way the provider can misbehave,
refused with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from conveyor.aio import LoopThread
from conveyor.egress import EgressPolicy
from conveyor.errors import AuthenticationError, ProviderResponseError
from conveyor.http.oidc_fetch import JWKS_REFETCH_SECONDS, OidcFetcher
from conveyor.httpclient import SharedHttpClient
from conveyor.security.oidc import Identity, LoginState, ProviderConfig, begin
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider, oidc_provider

pytestmark = pytest.mark.integration

REDIRECT_URI = "https://jobs.example.com/v1/auth/oidc/local/callback"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[SharedHttpClient]:
    loop = LoopThread("oidc-test")
    client = SharedHttpClient(loop, egress=EgressPolicy.parse(["127.0.0.1"]))
    yield client
    client.close()
    loop.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fetcher(http: SharedHttpClient, clock: Clock) -> OidcFetcher:
    return OidcFetcher(http, clock=clock)


@pytest.fixture
async def provider() -> AsyncIterator[OidcProvider]:
    async with oidc_provider() as provider:
        yield provider


def config_of(provider: OidcProvider, **changes: Any) -> ProviderConfig:
    fields = {"name": "local", "issuer": provider.issuer, "client_id": CLIENT_ID}
    if provider.client_secret is not None:
        fields["client_secret"] = CLIENT_SECRET
    return ProviderConfig.model_validate({**fields, **changes})


async def authorize(fetcher: OidcFetcher, config: ProviderConfig) -> tuple[LoginState, str]:
    """Start a login and follow it to the provider, as a browser would: the login's state and
    the code the provider sends back."""
    url, login = begin(config, await fetcher.discovery(config), REDIRECT_URI)
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(url, allow_redirects=False) as answer,
    ):
        assert answer.status == 302, await answer.text()
        back = URL(answer.headers["Location"])
    assert str(back.with_query(None)) == REDIRECT_URI
    assert back.query["state"] == login.state
    return login, back.query["code"]


async def log_in(fetcher: OidcFetcher, config: ProviderConfig) -> Identity:
    login, code = await authorize(fetcher, config)
    return await fetcher.finish(config, login, code)


async def test_a_login_names_the_provider_s_user(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    identity = await log_in(fetcher, config_of(provider))
    assert identity == Identity("user-1", "ada@example.com", True, "Ada Lovelace")
    assert identity.verified_email() == "ada@example.com"


async def test_discovery_and_keys_are_fetched_once_for_many_logins(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    for _ in range(3):
        await log_in(fetcher, config_of(provider))
    assert provider.hits["/.well-known/openid-configuration"] == 1
    assert provider.hits["/jwks"] == 1
    assert provider.hits["/token"] == 3


async def test_a_public_client_logs_in_with_pkce_alone(fetcher: OidcFetcher) -> None:
    async with oidc_provider(client_secret=None) as provider:
        identity = await log_in(fetcher, config_of(provider))
    assert identity.subject == "user-1"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("wrong_nonce", "nonce is not the one of this login"),
        ("wrong_audience", "issued to another client"),
        ("wrong_issuer", "issued by another issuer"),
        ("expired", "has expired"),
        ("alg_none", "signed with 'none'"),
        ("hs256", "signed with 'HS256'"),
        ("unknown_kid", "names the key 'key-nobody-published', unknown"),
        ("bad_signature", "signature does not verify"),
    ],
)
async def test_a_misbehaving_provider_s_id_token_is_refused(
    fetcher: OidcFetcher, provider: OidcProvider, fault: Any, reason: str
) -> None:
    provider.fault = fault
    with pytest.raises(AuthenticationError, match=reason):
        await log_in(fetcher, config_of(provider))


@pytest.mark.parametrize("fault", ["alg_none", "hs256"])
async def test_none_and_hmac_tokens_are_refused_even_when_the_provider_advertises_them(
    fetcher: OidcFetcher, fault: Any
) -> None:
    async with oidc_provider(algorithms=["RS256", "HS256", "none"], fault=fault) as provider:
        with pytest.raises(AuthenticationError, match="accepted: RS256"):
            await log_in(fetcher, config_of(provider))


async def test_an_unverified_email_is_no_account_link(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    provider.user["email_verified"] = False
    identity = await log_in(fetcher, config_of(provider))
    assert identity.email == "ada@example.com" and not identity.email_verified
    with pytest.raises(AuthenticationError, match="not verified"):
        identity.verified_email()


async def test_a_code_is_good_for_one_exchange(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    config = config_of(provider)
    login, code = await authorize(fetcher, config)
    await fetcher.finish(config, login, code)
    with pytest.raises(AuthenticationError, match="invalid_grant"):
        await fetcher.finish(config, login, code)


async def test_a_code_without_its_login_s_verifier_is_refused(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    config = config_of(provider)
    login, code = await authorize(fetcher, config)
    other, _ = await authorize(fetcher, config)
    stolen = LoginState(login.provider, login.state, login.nonce, other.verifier, REDIRECT_URI)
    with pytest.raises(AuthenticationError, match="invalid_grant"):
        await fetcher.finish(config, stolen, code)


async def test_a_wrong_client_secret_is_refused(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    config = config_of(provider, client_secret="not-the-secret")
    with pytest.raises(AuthenticationError, match="invalid_client"):
        await log_in(fetcher, config)


async def test_rotated_keys_are_fetched_again_at_most_once_a_minute(
    fetcher: OidcFetcher, provider: OidcProvider, clock: Clock
) -> None:
    config = config_of(provider)
    await log_in(fetcher, config)
    provider.rotate_keys()
    clock.now += JWKS_REFETCH_SECONDS / 2  # the cached set is recent: no refetch yet
    with pytest.raises(AuthenticationError, match=f"names the key '{provider.kid}'"):
        await log_in(fetcher, config)
    assert provider.hits["/jwks"] == 1
    clock.now += JWKS_REFETCH_SECONDS
    assert (await log_in(fetcher, config)).subject == "user-1"
    assert provider.hits["/jwks"] == 2


async def test_a_provider_whose_issuer_is_not_the_configured_one_is_refused(
    fetcher: OidcFetcher, provider: OidcProvider
) -> None:
    config = config_of(provider, issuer=provider.issuer + "/")
    with pytest.raises(ProviderResponseError, match="not the configured"):
        await fetcher.discovery(config)
