import ipaddress
import re
import socket

import pytest

from kiln_contract.netguard import UnsafeURL, check_url, parse_url


@pytest.mark.parametrize(("url", "why"), [
    ("https://169.254.169.254/latest/meta-data/", "metadata"),
    ("https://127.0.0.1:9/data.csv", "loopback"),
    ("https://localhost/data.csv", "loopback"),
    ("https://[::1]/x", "loopback"),
    ("https://[::ffff:169.254.169.254]/x", "metadata"),
    ("https://169.254.10.10/x", "link-local"),
    ("https://0.0.0.0/x", "unspecified"),
    ("http://data.example/x.csv", "only https"),
])
def test_refused(url, why):
    with pytest.raises(UnsafeURL, match=why):
        check_url(url)


def test_private_ranges_only_when_asked(monkeypatch):
    check_url("https://10.1.2.3/data.csv")
    monkeypatch.setenv("KILN_BLOCK_PRIVATE_NETWORKS", "true")
    with pytest.raises(UnsafeURL, match="private"):
        check_url("https://10.1.2.3/data.csv")


# ---- one strict parser: what the guard reads is what the fetch connects to ----------------------


@pytest.mark.parametrize(("url", "why"), [
    ("https://127.0.0.1:443\\@1.1.1.1/data.csv", "backslash"),   # urllib checked 1.1.1.1, requests read loopback
    ("https://1.1.1.1\\@127.0.0.1/data.csv", "backslash"),
    ("https://data.example\\evil/x", "backslash"),
    ("https://user:pw@data.example/x", "user information"),
    ("https://1.1.1.1@127.0.0.1/x", "user information"),
    ("https://127.0.0.1:1@1.1.1.1/x", "user information"),
    ("https://data.example /x", "whitespace"),
    ("https://data.example/a b", "whitespace"),
    ("https://data.example/x\r\nHost: evil", "control"),
    ("https://data.example/x\t", "control"),
    ("https://dätä.example/x", "non-ASCII"),
    ("https:///x", "no host"),
    ("https://:443/x", "no host"),
    ("https://data.example:/x", "port ''"),
    ("https://data.example:0/x", "port '0'"),
    ("https://data.example:65536/x", "port '65536'"),
    ("https://data.example:+443/x", "port"),
    ("https://data.example:44 3/x", "whitespace"),
    ("https://data.example:1:2/x", "port '1:2'"),
    ("https://127.1/x", "not a dotted-quad"),
    ("https://2130706433/x", "not a dotted-quad"),
    ("https://0x7f.0.0.1/x", "not a dotted-quad"),
    ("https://127.000.0.1/x", "not a dotted-quad"),
    ("https://data%2eexample/x", "percent signs in the host"),
    ("https://[::1%25eth0]/x", "percent signs in the host"),
    ("https://[::1/x", "unclosed"),
    ("https://[1.2.3.4]/x", "not an IPv6 address"),
    ("https://[::1]x/x", "unexpected"),
    ("https://data_ex ample/x", "whitespace"),
    ("https://-data.example/x", "not a valid host name"),
    ("https://data.example/%zz", "two hex digits"),
    ("ftp://data.example/x", "only https"),
    ("https:/data.example/x", "only https"),
    ("//data.example/x", "only https"),
])
def test_parse_refuses_what_parsers_read_differently(url, why):
    with pytest.raises(UnsafeURL, match=re.escape(why)):
        parse_url(url)


@pytest.mark.parametrize(("url", "host", "port", "target"), [
    ("https://data.example/x.csv", "data.example", 443, "/x.csv"),
    ("HTTPS://Data.Example:8443/A%20b.csv?x=1&y=%2F#frag", "data.example", 8443, "/A%20b.csv?x=1&y=%2F"),
    ("https://data.example", "data.example", 443, "/"),
    ("https://data.example?x=1", "data.example", 443, "/?x=1"),
    ("https://data.example#/../@127.0.0.1", "data.example", 443, "/"),
    ("https://10.1.2.3:9000/b/k", "10.1.2.3", 9000, "/b/k"),
    ("https://[2001:db8::1]:8443/x", "2001:db8::1", 8443, "/x"),
    ("https://svc.ns.svc.cluster.local./x", "svc.ns.svc.cluster.local.", 443, "/x"),
])
def test_parse_reads_host_port_and_target_once(url, host, port, target):
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.request_target) == (host, port, target)


def test_check_url_checks_the_host_the_parser_read(monkeypatch):
    # urllib.parse reads the host of this URL as 1.1.1.1 (a public address): it passed the old guard.
    with pytest.raises(UnsafeURL):
        check_url("https://127.0.0.1:443\\@1.1.1.1/data.csv")
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **kw: asked.append(host) or
                        [(2, 1, 6, "", ("93.184.216.34", port))])
    with pytest.raises(UnsafeURL, match="user information"):
        check_url("https://127.0.0.1:443@1.1.1.1/data.csv")
    assert asked == []


def test_check_url_resolves_once_and_returns_what_it_checked(monkeypatch):
    """A rebinding DNS answers a public address, then loopback: check_url asks once, and returns
    the addresses it checked so that kiln_contract.fetch connects to those, not to a new answer."""
    answers = [[(2, 1, 6, "", ("93.184.216.34", 443))], [(2, 1, 6, "", ("127.0.0.1", 443))]]
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **kw: asked.append(host) or answers[len(asked) - 1])
    assert check_url("https://rebind.example/x.csv") == [ipaddress.ip_address("93.184.216.34")]
    assert asked == ["rebind.example"]


def test_every_resolved_address_is_checked(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **kw: [
        (2, 1, 6, "", ("93.184.216.34", port)), (10, 1, 6, "", ("::ffff:127.0.0.1", port, 0, 0))])
    with pytest.raises(UnsafeURL, match="127.0.0.1, a loopback address"):
        check_url("https://mixed.example/x")


def test_allow_networks_is_explicit_and_narrow():
    loopback = [ipaddress.ip_network("127.0.0.1/32")]
    assert check_url("https://127.0.0.1:8443/x", allow_networks=loopback) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(UnsafeURL, match="loopback"):
        check_url("https://127.0.0.2/x", allow_networks=loopback)
    with pytest.raises(UnsafeURL, match="unspecified"):
        check_url("https://0.1.2.3/x")


def test_an_unresolvable_host_is_refused(monkeypatch):
    def nxdomain(host, port, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    with pytest.raises(UnsafeURL, match="cannot resolve nowhere.example"):
        check_url("https://nowhere.example/x")
