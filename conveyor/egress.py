"""Which addresses outbound HTTP may reach: public ones, and the internal hosts an allow list
names (`CONVEYOR_OUTBOUND_ALLOW_HOSTS`).

Webhook and provider URLs come from users. Without this policy a job could be aimed at the
cloud metadata service (169.254.169.254), a database on 127.0.0.1 or a private network. The
shared HTTP client (`conveyor.httpclient`) applies it to every address it connects to, after
resolving the name, so a name that resolves to a public address when checked and to a private
one when used (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from conveyor.errors import DestinationRefusedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The setting that permits internal hosts, named in every refusal.
ALLOW_SETTING = "CONVEYOR_OUTBOUND_ALLOW_HOSTS"
SCHEMES = frozenset({"http", "https"})

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
#: NAT64 prefixes: the IPv4 address in their last 32 bits is where the packets go.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_HOST_NAME = re.compile(
    r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*"
)


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (brackets and an IPv6 zone allowed), or None for a name."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def why_not_public(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, in a few words; None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in prefix for prefix in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = why_not_public(embedded)
            return f"{reason}, inside an IPv6 address" if reason else None
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK
    ):
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """Where outbound requests may connect: public addresses, plus what the allow list names.

    Allow list entries are host names (`billing.internal`, matched as written), wildcard names
    (`*.svc.cluster.local`: any name below it), IP addresses and networks (`10.1.2.3`,
    `10.0.0.0/8`, `fd00::/8`). A name entry permits whatever that name resolves to; an
    address or network entry permits connecting to it whatever the URL's name.
    """

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        """The policy permitting `entries`; ValueError names an entry that is none of the
        forms above."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            address = parse_address(entry)
            if address is not None:
                networks.append(ipaddress.ip_network(address))
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(
                        f"{raw.strip()!r} is not a network (like 10.0.0.0/8)"
                    ) from None
                continue
            if not _HOST_NAME.fullmatch(entry):
                raise ValueError(
                    f"{raw.strip()!r} is not a host name, *.domain, address or network"
                )
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    @classmethod
    def of_setting(cls, text: str | None) -> EgressPolicy:
        """The policy of `CONVEYOR_OUTBOUND_ALLOW_HOSTS` (comma-separated entries)."""
        return cls.parse((text or "").split(","))

    def allows_name(self, host: str) -> bool:
        """Whether the allow list names `host` (or a domain above it, by a wildcard)."""
        name = host.lower().rstrip(".")
        return name in self.hosts or any(name.endswith(suffix) for suffix in self.suffixes)

    def refusal(self, address: IPAddress) -> str | None:
        """Why connecting to `address` is refused (None: it may be reached)."""
        plain = address
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                plain = ipaddress.IPv6Address(int(address))  # the zone does not change the range
            plain = plain.ipv4_mapped or plain  # type: ignore[union-attr]
        if any(plain in network for network in self.networks):
            return None
        return why_not_public(address)

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise `DestinationRefusedError` unless every address `host` resolved to may be
        reached (one refused address refuses the host: which one is used is not ours to say)."""
        if self.allows_name(host):
            return
        for text in addresses:
            address = parse_address(text)
            if address is None:
                raise DestinationRefusedError(f"{host} resolved to {text!r}, not an IP address")
            reason = self.refusal(address)
            if reason is None:
                continue
            if parse_address(host) is not None:
                where = f"{host} is not a public address ({reason})"
            else:
                where = f"{host} resolves to {address}, not a public address ({reason})"
            raise DestinationRefusedError(
                f"refused to connect: {where}; outbound requests go to public addresses only "
                f"({ALLOW_SETTING} can permit an internal host)"
            )

    def check_url(self, url: str) -> None:
        """Refuse a URL that cannot be reached under this policy, as far as can be told
        without resolving it: not http(s), no host, or an address that is not public.
        For refusing a webhook URL when it is given; the client checks again on connecting."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018  (raises ValueError for a port out of range)
        except ValueError as exc:
            raise DestinationRefusedError(f"not a valid URL: {exc}") from exc
        if parts.scheme.lower() not in SCHEMES:
            raise DestinationRefusedError(
                f"only http and https URLs are reached, not {parts.scheme or 'a relative URL'}"
            )
        if not host:
            raise DestinationRefusedError("the URL has no host")
        if parse_address(host) is not None:
            self.check(host, [host])
