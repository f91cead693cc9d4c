"""The shared outbound HTTP client against a local aiohttp server: plain and async requests,
the response size limit, timeouts, failures, `Retry-After`, and the refusal of addresses that
are not public (loopback, private, link-local...) unless the allow list permits them."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import socket
import time
from collections.abc import Iterator

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy

from conveyor import __version__
from conveyor.aio import LoopThread
from conveyor.egress import EgressPolicy
from conveyor.errors import (
    DestinationRefusedError,
    OutboundHttpError,
    PermanentJobError,
    TransientError,
)
from conveyor.httpclient import GuardedResolver, SharedHttpClient
from conveyor.outbound import HttpResponse
from tests.e2e.processes import free_port
from tests.unit.local_http import LocalHttpServer, local_http_server

LIMIT = 100_000
#: The local server is on loopback: the clients of these tests must be allowed to reach it.
LOCAL = EgressPolicy.parse(["127.0.0.1"])


@pytest.fixture(scope="module")
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    loop = LoopThread(name="test-http-loop")
    yield loop
    loop.close()


@pytest.fixture
def client(loop: LoopThread) -> Iterator[SharedHttpClient]:
    client = SharedHttpClient(
        loop, timeout_seconds=5, connect_timeout_seconds=2, max_response_bytes=LIMIT, egress=LOCAL
    )
    yield client
    client.close()


# --- answers --------------------------------------------------------------------------------


def test_a_plain_request_from_a_thread_gets_the_whole_response(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = client.request(
        "POST",
        server.url("/echo"),
        params={"q": "1"},
        headers={"X-Test": "yes"},
        json={"a": [1, 2]},
    )
    assert (response.status, response.ok) == (200, True)
    assert response.url == server.url("/echo?q=1")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "method": "POST",
        "query": {"q": "1"},
        "user_agent": f"conveyor/{__version__}",
        "header": "yes",
        "body": '{"a": [1, 2]}',
    }


def test_raw_data_is_sent_as_the_body(client: SharedHttpClient, server: LocalHttpServer) -> None:
    response = client.request("PUT", server.url("/echo"), data="plain text")
    assert response.json()["body"] == "plain text"
    assert response.json()["method"] == "PUT"


async def test_an_async_request_from_another_event_loop_is_answered(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = await client.arequest("GET", server.url("/echo"), params={"from": "test-loop"})
    assert response.status == 200
    assert response.json()["query"] == {"from": "test-loop"}


def test_an_async_request_on_the_clients_own_loop_is_answered(
    client: SharedHttpClient, loop: LoopThread, server: LocalHttpServer
) -> None:
    async def on_the_loop() -> HttpResponse:
        assert asyncio.get_running_loop() is loop.loop
        return await client.arequest("GET", server.url("/echo"))

    assert loop.run(on_the_loop()).status == 200


def test_many_concurrent_async_requests_all_complete(
    client: SharedHttpClient, loop: LoopThread, server: LocalHttpServer
) -> None:
    async def many() -> list[int]:
        responses = await asyncio.gather(
            *(client.arequest("GET", server.url("/echo"), params={"i": str(i)}) for i in range(50))
        )
        return [int(r.json()["query"]["i"]) for r in responses]

    assert loop.run(many()) == list(range(50))


def test_a_plain_request_from_the_loop_itself_is_refused(
    client: SharedHttpClient, loop: LoopThread, server: LocalHttpServer
) -> None:
    async def blocking_call_on_the_loop() -> None:
        client.request("GET", server.url("/echo"))

    with pytest.raises(RuntimeError, match="arequest"):
        loop.run(blocking_call_on_the_loop())


def test_an_error_status_is_an_answer_not_an_exception(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = client.request("GET", server.url("/status"), params={"code": "503"})
    assert (response.status, response.ok) == (503, False)
    assert response.text() == "status"


# --- limits and failures --------------------------------------------------------------------


def test_a_response_of_exactly_the_limit_is_read(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    assert len(client.request("GET", server.url(f"/bytes?size={LIMIT}")).body) == LIMIT
    assert len(client.request("GET", server.url(f"/stream?size={LIMIT}")).body) == LIMIT


def test_a_response_declared_larger_than_the_limit_raises(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    with pytest.raises(OutboundHttpError, match=f"the limit is {LIMIT}"):
        client.request("GET", server.url(f"/bytes?size={LIMIT + 1}"))


def test_a_chunked_response_growing_past_the_limit_raises(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    with pytest.raises(OutboundHttpError, match=f"exceeds {LIMIT} bytes"):
        client.request("GET", server.url(f"/stream?size={LIMIT * 5}"))


async def test_a_too_large_response_raises_in_an_async_request_too(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    with pytest.raises(OutboundHttpError):
        await client.arequest("GET", server.url(f"/stream?size={LIMIT * 2}"))


def test_a_request_past_its_timeout_raises_outbound_http_error(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    started = time.monotonic()
    with pytest.raises(OutboundHttpError) as caught:
        client.request("GET", server.url("/slow?seconds=10"), timeout_seconds=0.3)
    assert time.monotonic() - started < 3
    assert isinstance(caught.value, TransientError)  # retried, like any transient failure


def test_the_clients_own_timeout_applies_to_every_request(
    loop: LoopThread, server: LocalHttpServer
) -> None:
    client = SharedHttpClient(loop, timeout_seconds=0.3, connect_timeout_seconds=0.3, egress=LOCAL)
    try:
        started = time.monotonic()
        with pytest.raises(OutboundHttpError):
            client.request("GET", server.url("/slow?seconds=10"))
        assert time.monotonic() - started < 3
        assert client.request("GET", server.url("/echo")).status == 200  # still usable
    finally:
        client.close()


async def test_an_async_request_past_its_timeout_raises_outbound_http_error(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    with pytest.raises(OutboundHttpError):
        await client.arequest("GET", server.url("/slow?seconds=10"), timeout_seconds=0.3)


def test_a_refused_connection_raises_outbound_http_error(client: SharedHttpClient) -> None:
    with pytest.raises(OutboundHttpError, match="failed"):
        client.request("GET", f"http://127.0.0.1:{free_port()}/nothing")


def test_a_closed_client_can_be_closed_again(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    assert client.request("GET", server.url("/echo")).ok
    client.close()
    client.close()


# --- Retry-After ----------------------------------------------------------------------------


def answer(retry_after: str | None) -> HttpResponse:
    headers: CIMultiDict[str] = CIMultiDict()
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return HttpResponse(503, "http://example.test/", CIMultiDictProxy(headers), b"")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("0", 0.0), (" 7 ", 7.0)],
)
def test_retry_after_in_seconds_is_parsed(value: str, seconds: float) -> None:
    assert answer(value).retry_after() == seconds


def test_retry_after_as_an_http_date_gives_the_seconds_until_then() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    wait = answer(email.utils.format_datetime(when, usegmt=True)).retry_after()
    assert wait is not None and 85 <= wait <= 90


def test_retry_after_as_a_past_http_date_means_at_once() -> None:
    assert answer("Wed, 21 Oct 2015 07:28:00 GMT").retry_after() == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\u0661\u0662"])
def test_a_missing_or_unreadable_retry_after_is_none(value: str | None) -> None:
    assert answer(value).retry_after() is None


def test_retry_after_is_read_from_a_real_answer(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = client.request(
        "GET", server.url("/status"), params={"code": "429", "retry_after": "30"}
    )
    assert (response.status, response.retry_after()) == (429, 30.0)


def test_a_long_retry_after_in_seconds_is_read_as_sent() -> None:
    # Ten digits (about 39 years): the value is the server's, not a tenth of it.
    assert answer("1234567890").retry_after() == 1234567890.0


# --- destinations that are not public -------------------------------------------------------


@pytest.fixture
def guarded(loop: LoopThread) -> Iterator[SharedHttpClient]:
    """A client with the default policy: public addresses only."""
    client = SharedHttpClient(loop, timeout_seconds=5, connect_timeout_seconds=2)
    yield client
    client.close()


def refused(client: SharedHttpClient, url: str, **options: object) -> str:
    with pytest.raises(DestinationRefusedError) as caught:
        client.request("GET", url, **options)  # type: ignore[arg-type]
    assert isinstance(caught.value, PermanentJobError)  # the job is not retried
    return str(caught.value)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "127.0.0.1 is not a public address (loopback)"),
        ("[::1]", "::1 is not a public address (loopback)"),
        ("10.1.2.3", "10.1.2.3 is not a public address (private)"),
        ("192.168.0.10", "(private)"),
        ("172.16.5.4", "(private)"),
        ("169.254.169.254", "169.254.169.254 is not a public address (link-local)"),
        ("[fe80::1]", "(link-local)"),
        ("[fd12:3456::1]", "(private)"),
        ("100.64.0.1", "(shared (carrier-grade NAT))"),
        ("0.0.0.0", "(unspecified)"),
        ("[::]", "(unspecified)"),
        ("224.0.0.1", "(multicast)"),
        ("[::ffff:127.0.0.1]", "(loopback, inside an IPv6 address)"),
        ("[::ffff:169.254.169.254]", "(link-local, inside an IPv6 address)"),
        ("localhost", "localhost resolves to "),
        ("0x7f000001", "resolves to 127.0.0.1, not a public address (loopback)"),
    ],
)
def test_a_request_to_an_address_that_is_not_public_is_refused(
    guarded: SharedHttpClient, server: LocalHttpServer, host: str, reason: str
) -> None:
    seen = len(server.peers)
    message = refused(guarded, f"http://{host}:{server.port}/echo")
    assert reason in message
    assert "CONVEYOR_OUTBOUND_ALLOW_HOSTS" in message  # says how to permit it
    assert len(server.peers) == seen  # refused before connecting


@pytest.mark.parametrize("host", ["127.1", "2130706433", "017700000001"])
def test_a_legacy_numeric_form_of_an_address_is_refused(
    guarded: SharedHttpClient, server: LocalHttpServer, host: str
) -> None:
    refused(guarded, f"http://{host}:{server.port}/echo")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "/relative"])
def test_a_url_that_is_not_http_is_refused(guarded: SharedHttpClient, url: str) -> None:
    assert "only http and https" in refused(guarded, url)


async def test_an_async_request_to_loopback_is_refused_too(
    guarded: SharedHttpClient, server: LocalHttpServer
) -> None:
    with pytest.raises(DestinationRefusedError, match="loopback"):
        await guarded.arequest("GET", server.url("/echo"))


def test_a_redirect_to_loopback_is_refused(loop: LoopThread, server: LocalHttpServer) -> None:
    # `localhost` is permitted by name; the address the redirect names is not.
    client = SharedHttpClient(loop, egress=EgressPolicy.parse(["localhost"]))
    try:
        start = f"http://localhost:{server.port}/redirect"
        assert client.request("GET", start, params={"to": "/echo"}).status == 200
        seen = len(server.peers)
        message = refused(client, start, params={"to": server.url("/echo")})
        assert "127.0.0.1 is not a public address (loopback)" in message
        assert len(server.peers) == seen + 1  # the redirect, not its target
    finally:
        client.close()


def test_a_redirect_is_followed_through_the_same_check(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = client.request("GET", server.url("/redirect"), params={"to": server.url("/echo")})
    assert (response.status, response.url) == (200, server.url("/echo"))


def test_a_redirect_is_the_answer_when_it_is_not_to_be_followed(
    client: SharedHttpClient, server: LocalHttpServer
) -> None:
    response = client.request(
        "GET", server.url("/redirect"), params={"to": "http://10.0.0.1/"}, follow_redirects=False
    )
    assert (response.status, response.headers["Location"]) == (302, "http://10.0.0.1/")


@pytest.mark.parametrize(
    ("allow", "host"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["127.0.0.0/8"], "localhost"),
        (["localhost"], "localhost"),
        (["LocalHost."], "localhost"),
        (["::1", "127.0.0.1"], "localhost"),
    ],
)
def test_the_allow_list_lets_named_internal_hosts_through(
    loop: LoopThread, server: LocalHttpServer, allow: list[str], host: str
) -> None:
    client = SharedHttpClient(loop, egress=EgressPolicy.parse(allow))
    try:
        assert client.request("GET", f"http://{host}:{server.port}/echo").status == 200
    finally:
        client.close()


def test_an_allowed_name_does_not_permit_its_address_under_another_name(
    loop: LoopThread, server: LocalHttpServer
) -> None:
    client = SharedHttpClient(loop, egress=EgressPolicy.parse(["localhost"]))
    try:
        refused(client, server.url("/echo"))  # 127.0.0.1 itself is not on the list
    finally:
        client.close()


class Answers(AbstractResolver):
    """A resolver that answers every name with the addresses it is given."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    resolver = GuardedResolver(EgressPolicy(), Answers("93.184.215.14", "10.0.0.7"))
    with pytest.raises(DestinationRefusedError, match=r"rebind\.example resolves to 10\.0\.0\.7"):
        await resolver.resolve("rebind.example", 80)


async def test_the_addresses_checked_are_the_addresses_returned_to_connect_to() -> None:
    resolver = GuardedResolver(EgressPolicy(), Answers("93.184.215.14", "2606:2800:21f:cb07::1"))
    results = await resolver.resolve("public.example", 443)
    assert [r["host"] for r in results] == ["93.184.215.14", "2606:2800:21f:cb07::1"]


async def test_a_name_on_the_allow_list_is_not_checked() -> None:
    resolver = GuardedResolver(EgressPolicy.parse(["db.internal"]), Answers("10.0.0.7"))
    assert len(await resolver.resolve("db.internal", 5432)) == 1
