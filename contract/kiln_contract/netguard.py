"""Which remote URLs Kiln fetches on a user's behalf: no loopback, link-local or metadata addresses.

Dataset URIs (trainer) and bring-your-own artifact URIs (operator) come from users; fetching them
blindly would let a spec read the cloud metadata service or services on the fetching host (SSRF).
Every address the host name resolves to is checked; redirects are not followed by the callers.
Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed — in-cluster data services
live there — unless KILN_BLOCK_PRIVATE_NETWORKS is true.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlparse

METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class UnsafeURL(ValueError):
    pass


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip in METADATA:
        return "a cloud metadata address"
    for attribute, what in (("is_loopback", "a loopback address"), ("is_link_local", "a link-local address"),
                            ("is_unspecified", "an unspecified address"), ("is_multicast", "a multicast address")):
        if getattr(ip, attribute):
            return what
    if os.environ.get("KILN_BLOCK_PRIVATE_NETWORKS", "").lower() == "true" and ip.is_private:
        return "a private address (KILN_BLOCK_PRIVATE_NETWORKS is true)"
    return None


def check_url(url: str) -> None:
    """Raise UnsafeURL naming the URL and the address when it must not be fetched."""
    parsed = urlparse(url)
    if parsed.scheme != "https":
        raise UnsafeURL(f"{url}: only https:// is fetched from the network")
    host = parsed.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise UnsafeURL(f"{url}: cannot resolve {host}: {exc.strerror}") from exc
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        why = _refusal(ip)
        if why:
            raise UnsafeURL(f"{url}: refused, {host} resolves to {ip}, {why}")
