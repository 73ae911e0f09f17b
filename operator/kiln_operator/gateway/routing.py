"""Which Deployment a request is for, and which headers cross the gateway. Pure."""

from __future__ import annotations

import re

# Namespaces are DNS labels; Kiln Deployment names are DNS subdomains (the API server's own rules).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the message. Host and Content-Length
# are written anew for the pod; Expect is answered here (the body is read before forwarding).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization", b"host", b"content-length", b"expect",
})

Key = tuple[str, str]


def split(target: bytes) -> tuple[str, str, bytes] | None:
    """b'/<namespace>/<deployment>/<rest>?<query>' → (namespace, deployment, b'/<rest>?<query>'), else None.

    The names are not checked here: a key found in the watch-fed table is valid by construction, and valid()
    tells the others apart. The rest is forwarded byte for byte as it arrived (no decoding and re-encoding).
    """
    path, question, query = target.partition(b"?")
    if path[:1] != b"/":
        return None  # "*" or an absolute-form target: not a route
    namespace, _, rest = path[1:].partition(b"/")
    name, slash, tail = rest.partition(b"/")
    forward = b"/" + tail if slash else b"/"
    if question:
        forward += b"?" + query
    return namespace.decode("latin-1"), name.decode("latin-1"), forward


def valid(namespace: str, name: str) -> bool:
    """A namespace (DNS label) and a Kiln Deployment name (DNS subdomain), as the API server requires them."""
    return bool(_NAMESPACE.fullmatch(namespace) and _NAME.fullmatch(name))


def _connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """Header names that Connection headers list: they are hop-by-hop too."""
    return frozenset(t for v in values for t in (x.strip().lower() for x in v.split(b",")) if t)


def request_head(method: str, target: bytes, host: bytes, raw_headers, length: int,
                 drop: frozenset[bytes] = HOP_BY_HOP) -> bytes:
    """The request line and headers sent to the pod: the client's end-to-end headers (less drop, lower-case names
    that include HOP_BY_HOP), a Host and a length."""
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    connection = []
    for name, value in raw_headers:
        lower = name.lower()
        if lower not in drop:
            parts += (name, b": ", value, b"\r\n")
        elif lower == b"connection":
            connection.append(value)
    if connection:  # rare: drop what Connection names (one pass above, a second only when needed)
        listed = _connection_tokens(connection)
        parts = parts[:6] + [x for i in range(6, len(parts), 4) if parts[i].lower() not in listed
                             for x in parts[i:i + 4]]
    parts.append(b"Content-Length: %d\r\n\r\n" % length)
    return b"".join(parts)


def response_headers(raw_headers: list[tuple[bytes, bytes]], keep_length: bool = False) -> list[tuple[bytes, bytes]]:
    """The pod's end-to-end response headers, for the client. The server writes the length from the body, except
    for HEAD (keep_length), whose length is the pod's."""
    out = []
    connection = []
    for name, value in raw_headers:
        lower = name.lower()
        if lower not in HOP_BY_HOP or (keep_length and lower == b"content-length"):
            out.append((name, value))
        elif lower == b"connection":
            connection.append(value)
    if connection:
        listed = _connection_tokens(connection)
        out = [(n, v) for n, v in out if n.lower() not in listed]
    return out
