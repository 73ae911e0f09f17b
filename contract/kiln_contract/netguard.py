"""Which remote URLs Kiln fetches on a user's behalf: no loopback, link-local or metadata addresses.

Dataset URIs (trainer) and bring-your-own artifact URIs (operator) come from users; fetching them
blindly would let a spec read the cloud metadata service or services on the fetching host (SSRF).
Every address the host name resolves to is checked; redirects are not followed by the callers.
Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed — in-cluster data services
live there — unless KILN_BLOCK_PRIVATE_NETWORKS is true.

`parse_url` is the one URL parser: kiln_contract.fetch connects to exactly the host, port and
request target it returns, so the guard and the fetch cannot read a URL two ways (urllib and
requests disagreed on `https://127.0.0.1:1\\@1.1.1.1/`: one checked 1.1.1.1, the other fetched
loopback). It is strict on purpose: anything a parser could take two ways is refused, not guessed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
# Linux connects 0.x.x.x destinations to the host itself, like 0.0.0.0.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_PORT = re.compile(r"[0-9]{1,5}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UnsafeURL(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """A URL as parse_url read it: what the guard checks is what the fetch connects to."""

    url: str       # as given (for messages)
    host: str      # lower-case name, or the IP literal without brackets
    port: int
    path: str      # percent-encoded, starts with "/"
    query: str     # percent-encoded, without "?"; "" for none
    ip: IPAddress | None  # set when host is an IP literal: nothing to resolve

    @property
    def request_target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def parse_url(url: str) -> Target:
    """Read an https:// URL strictly, or raise UnsafeURL saying what is wrong with it.

    Refused: any scheme but https, userinfo (`@` before the path), backslashes, whitespace,
    control or non-ASCII characters, an empty host, a port that is not 1-65535 in digits,
    percent signs in the host, and numeric hosts that are not a dotted-quad IPv4 address
    (`127.1`, `0x7f.1`, `2130706433` mean loopback to some parsers). A fragment is ignored.
    """
    if not isinstance(url, str):
        raise UnsafeURL(f"{url!r}: not a URL")
    for char in url:
        if ord(char) <= 0x20 or ord(char) >= 0x7F:
            raise UnsafeURL(f"{url!r}: whitespace, control and non-ASCII characters are refused "
                            "(percent-encode the path; give a host name in its xn-- form)")
    if "\\" in url:
        raise UnsafeURL(f"{url}: backslashes are refused (parsers disagree on what they mean)")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "https":
        raise UnsafeURL(f"{url}: only https:// is fetched from the network")
    rest = rest.split("#", 1)[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    if "@" in authority:
        raise UnsafeURL(f"{url}: user information (`user@` before the host) is refused")
    if "%" in authority:
        raise UnsafeURL(f"{url}: percent signs in the host are refused")
    ip: IPAddress | None = None
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise UnsafeURL(f"{url}: unclosed [ in the host")
        host, after = authority[1:close], authority[close + 1:]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeURL(f"{url}: [{host}] is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise UnsafeURL(f"{url}: unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
        host = str(ip)
    else:
        host, colon, port_text = authority.partition(":")
        port_text = port_text if colon else None
        host = host.lower()
        if not host:
            raise UnsafeURL(f"{url}: no host")
        if not _HOSTNAME.fullmatch(host):
            raise UnsafeURL(f"{url}: {host!r} is not a valid host name")
        if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                raise UnsafeURL(f"{url}: {host!r} is a numeric host but not a dotted-quad IPv4 address") from None
    port = 443
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise UnsafeURL(f"{url}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    path, _, query = rest.partition("?")
    if _BAD_PERCENT.search(path) or _BAD_PERCENT.search(query):
        raise UnsafeURL(f"{url}: a % not followed by two hex digits")
    return Target(url=url, host=host, port=port, path=path or "/", query=query, ip=ip)


def _refusal(ip: IPAddress) -> str | None:
    if ip in METADATA:
        return "a cloud metadata address"
    for attribute, what in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                            ("is_unspecified", "an unspecified address"), ("is_multicast", "a multicast address")):
        if getattr(ip, attribute):
            return what
    if ip in _THIS_NETWORK:
        return "an unspecified address"
    if os.environ.get("KILN_BLOCK_PRIVATE_NETWORKS", "").lower() == "true" and ip.is_private:
        return "a private address (KILN_BLOCK_PRIVATE_NETWORKS is true)"
    return None


def address(text: str) -> IPAddress:
    """An address as getaddrinfo gives it, IPv4-mapped IPv6 read as the IPv4 address it carries."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def check_addresses(target: Target, addresses: Iterable[str | IPAddress],
                    allow_networks: Iterable[Network] = ()) -> list[IPAddress]:
    """Every address must pass, or UnsafeURL names the first that does not; returns them, checked.

    allow_networks exempts addresses from the rules. It is a parameter, never an environment
    variable, so that only code (the tests, serving from loopback) can widen what is fetched.
    """
    allowed = list(allow_networks)
    checked = []
    for raw in addresses:
        ip = address(str(raw))
        why = None if any(ip in net for net in allowed) else _refusal(ip)
        if why:
            raise UnsafeURL(f"{target.url}: refused, {target.host} resolves to {ip}, {why}")
        checked.append(ip)
    if not checked:
        raise UnsafeURL(f"{target.url}: {target.host} resolves to no address")
    return checked


def resolve(target: Target) -> list[str]:
    """The addresses of target's host (no lookup for an IP literal); UnsafeURL when it does not resolve."""
    if target.ip is not None:
        return [str(target.ip)]
    try:
        infos = socket.getaddrinfo(target.host, target.port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"{target.url}: cannot resolve {target.host}") from exc
    return [info[4][0] for info in infos]


def check_url(url: str, allow_networks: Iterable[Network] = ()) -> list[IPAddress]:
    """Raise UnsafeURL naming the URL and the address when it must not be fetched.

    Returns the checked addresses. A caller that connects by name afterwards resolves again and
    may be answered differently (DNS rebinding): kiln_contract.fetch connects to these addresses.
    """
    target = parse_url(url)
    return check_addresses(target, resolve(target), allow_networks)
