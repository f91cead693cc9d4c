"""The egress policy: which addresses are public, the allow list's forms, and URLs refused
before any lookup."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conveyor.egress import EgressPolicy, parse_address, why_not_public
from conveyor.errors import DestinationRefusedError
from tests import stack


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),
        ("2001:db8::1", "private"),
        ("::7f00:1", "reserved"),
        ("::ffff:10.0.0.1", "private, inside an IPv6 address"),
        ("2002:a9fe:a9fe::1", "link-local, inside an IPv6 address"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback, inside an IPv6 address"),  # NAT64 of 127.0.0.1
    ],
)
def test_an_address_that_is_not_public_says_why(address: str, reason: str) -> None:
    parsed = parse_address(address)
    assert parsed is not None
    assert why_not_public(parsed) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_a_public_address_is_reached(address: str) -> None:
    parsed = parse_address(address)
    assert parsed is not None
    assert why_not_public(parsed) is None
    EgressPolicy().check(address, [address])


def test_the_allow_list_takes_names_wildcards_addresses_and_networks() -> None:
    policy = EgressPolicy.of_setting(" Billing.Internal , *.svc.cluster.local,10.1.2.3, fd00::/8,")
    assert policy.allows_name("billing.internal")
    assert policy.allows_name("BILLING.internal.")
    assert policy.allows_name("sms.team.svc.cluster.local")
    assert not policy.allows_name("svc.cluster.local")
    assert not policy.allows_name("evilsvc.cluster.local")
    assert not policy.allows_name("billing.internal.evil.com")
    policy.check("anything.example", ["10.1.2.3", "fd00::5", "::ffff:10.1.2.3"])
    with pytest.raises(DestinationRefusedError, match=r"10\.1\.2\.4"):
        policy.check("anything.example", ["10.1.2.4"])


def test_an_empty_allow_list_permits_public_addresses_only() -> None:
    assert EgressPolicy.of_setting(None) == EgressPolicy.of_setting(" , ") == EgressPolicy()


@pytest.mark.parametrize("entry", ["*", "a host", "10.0.0.0/33", "http://billing", "*.", "-x-"])
def test_a_bad_allow_list_entry_is_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        EgressPolicy.parse([entry])
    with pytest.raises(ValidationError, match="outbound_allow_hosts"):
        stack.test_settings(outbound_allow_hosts=f"ok.internal,{entry}")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]:8443/hook", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("/just/a/path", "only http and https"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_a_url_is_refused_before_any_lookup_when_it_can_be_told(url: str, message: str) -> None:
    with pytest.raises(DestinationRefusedError, match=message):
        EgressPolicy().check_url(url)


def test_a_url_with_a_name_waits_for_its_lookup() -> None:
    EgressPolicy().check_url("https://hooks.example.com/in")  # checked when connecting
    EgressPolicy.parse(["10.0.0.0/8"]).check_url("http://10.9.8.7/hook")
