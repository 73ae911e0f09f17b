"""kiln_contract.fetch against real HTTPS servers on loopback, with a certificate made here.

Every connection stays on 127.0.0.0/8: the fetcher refuses loopback, so each call passes an
explicit allow_networks for 127.0.0.1 only, and a resolver that answers `data.test` the way
each test needs (a rebinding DNS server among them). The certificate names data.test, so a
passing fetch also proves SNI and verification use the host name while the socket goes to
the pinned address.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import socket
import ssl
import subprocess
import threading
import time

import pytest

from kiln_contract import fetch
from kiln_contract.fetch import FetchError, UnsafeURL

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for data.test (openssl: a system package the Makefile installs)."""
    d = tmp_path_factory.mktemp("pki")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=data.test",
                    "-addext", "subjectAltName=DNS:data.test"], check=True, capture_output=True)
    return crt, key


@pytest.fixture(scope="module")
def trust(cert):
    return ssl.create_default_context(cafile=str(cert[0]))


class Server:
    """A raw HTTPS/1.1 server: handler(conn, request) writes exactly the bytes a test needs."""

    def __init__(self, cert, handler, host="127.0.0.1", port=0, tls=True):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls else None
        if self.ctx:
            self.ctx.load_cert_chain(*map(str, cert))
            self.ctx.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.handler = handler
        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]
        self.connections, self.requests, self.sni = [], [], []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, peer = self.sock.accept()
            except OSError:
                return
            self.connections.append(peer)
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        conn = raw
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            line, *fields = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            request = {"line": line, "headers": {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}}
            self.requests.append(request)
            self.handler(conn, request)
        except OSError:
            pass  # the client went away (cut at a deadline or a cap): what the test wanted
        finally:
            conn.close()
            raw.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def serve(cert):
    servers = []

    def start(handler, **kw):
        servers.append(Server(cert, handler, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def reply(body=b"", status="200 OK", headers=None, length=None):
    def handler(conn, request):
        fields = {"Content-Length": str(len(body) if length is None else length), "Connection": "close",
                  **(headers or {})}
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        conn.sendall(head.encode() + body)
    return handler


def chunked(chunks):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for chunk in chunks:
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.sendall(b"0\r\n\r\n")
    return handler


class DNS:
    """A resolver answering from a script, one answer per lookup; the last repeats."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, host, port):
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def opts(trust, dns=None, **kw):
    return {"ssl_context": trust, "allow_networks": LOOPBACK, "resolver": dns or DNS(["127.0.0.1"]), **kw}


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


# ---- what a good fetch does ---------------------------------------------------------------------

def test_fetch_to_file_writes_the_body_and_its_sha256(serve, trust, tmp_path):
    body = b"a,b\n" + b"1,2\n" * 50_000
    srv = serve(reply(body))
    dns = DNS(["127.0.0.1"])
    dest = tmp_path / "model.onnx"
    got = fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/m/model.onnx?v=1&sig=a%2Fb#frag", dest,
                                   sha256=hashlib.sha256(body).hexdigest(), **opts(trust, dns))
    assert dest.read_bytes() == body and got.bytes == len(body) and got.sha256 == hashlib.sha256(body).hexdigest()
    assert leftovers(tmp_path) == ["model.onnx"]
    # Exactly the parsed target, Host and SNI the name, the fragment not sent, the body not re-encoded.
    req = srv.requests[0]
    assert req["line"] == "GET /m/model.onnx?v=1&sig=a%2Fb HTTP/1.1"
    assert req["headers"]["host"] == f"data.test:{srv.port}" and srv.sni == ["data.test"]
    assert req["headers"]["accept-encoding"] == "identity"
    assert dns.calls == [("data.test", srv.port)]


def test_chunked_body_is_read_whole(serve, trust):
    parts = [b"x" * 1000, b"y" * 70_000, b"z"]
    srv = serve(chunked(parts))
    got = fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/d.csv", **opts(trust))
    assert got.data == b"".join(parts) and got.bytes == 71_001


def test_fetch_to_file_is_a_coroutine_too(serve, trust, tmp_path):
    import asyncio

    srv = serve(reply(b"hello"))
    got = asyncio.run(fetch.fetch_to_file(f"https://data.test:{srv.port}/x", tmp_path / "x", **opts(trust)))
    assert got.path.read_bytes() == b"hello"


# ---- bounds ---------------------------------------------------------------------------------------

def test_a_drip_is_cut_at_the_overall_deadline(serve, trust, tmp_path):
    def drip(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(300):  # a byte every 0.1 s: each read is on time, the whole never is
            conn.sendall(b"x")
            time.sleep(0.1)

    srv = serve(drip)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"not complete within the 1 s deadline") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/slow.onnx", tmp_path / "slow.onnx",
                                 **opts(trust, deadline=1, read_timeout=5))
    assert time.monotonic() - started < 3
    assert err.value.reason == "deadline" and not err.value.retryable
    assert leftovers(tmp_path) == []


def test_oversize_content_length_is_refused_before_the_body(serve, trust, tmp_path):
    srv = serve(reply(b"x" * 4096, length=10 * 1024 * 1024))
    with pytest.raises(FetchError, match=r"Content-Length 10485760 is over the 1 MiB limit") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/big", tmp_path / "big",
                                 **opts(trust, max_bytes=1 << 20))
    assert err.value.reason == "too-large"
    assert leftovers(tmp_path) == []


def test_oversize_streamed_body_is_cut_at_the_cap(serve, trust, tmp_path):
    srv = serve(chunked([b"x" * 65536] * 64))  # 4 MiB, no Content-Length to refuse early
    with pytest.raises(FetchError, match=r"larger than the 1 MiB limit \(cut after") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/big", tmp_path / "big",
                                 **opts(trust, max_bytes=1 << 20))
    assert err.value.reason == "too-large"
    assert leftovers(tmp_path) == []


def test_a_body_shorter_than_its_content_length_is_an_error(serve, trust, tmp_path):
    srv = serve(reply(b"only ten b", length=1000))
    with pytest.raises(FetchError, match="before the whole body") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/short", tmp_path / "short", **opts(trust))
    assert err.value.reason == "incomplete" and err.value.retryable
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
def test_bytes_past_the_content_length_are_not_taken_as_body(serve, trust, connection):
    # aiohttp reads them as a malformed next response and refuses the exchange (no smuggling).
    srv = serve(reply(b"0123456789EXTRA", length=10, headers={"Connection": connection}))
    with pytest.raises(FetchError, match="connection failed") as err:
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/x", **opts(trust))
    assert "0123456789EXTRA" in err.value.detail


def test_limits_default_from_the_environment(monkeypatch, serve, trust):
    assert fetch.limits() == fetch.Limits(2 << 30, 300.0, 10.0, 60.0)
    monkeypatch.setenv("KILN_FETCH_MAX_BYTES", "100")
    monkeypatch.setenv("KILN_FETCH_DEADLINE_SECONDS", "7.5")
    assert fetch.limits().max_bytes == 100 and fetch.limits().deadline == 7.5
    assert fetch.limits(max_bytes=5).max_bytes == 5
    srv = serve(reply(b"x" * 101))
    with pytest.raises(FetchError, match="over the 100 bytes limit"):
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/x", **opts(trust))
    monkeypatch.setenv("KILN_FETCH_DEADLINE_SECONDS", "soon")
    with pytest.raises(ValueError, match="KILN_FETCH_DEADLINE_SECONDS"):
        fetch.limits()


# ---- what is refused ------------------------------------------------------------------------------

def test_a_redirect_is_refused_naming_its_location(serve, trust, tmp_path):
    srv = serve(reply(status="302 Found", headers={"Location": "https://169.254.169.254/latest/meta-data/"}))
    with pytest.raises(FetchError, match=r"HTTP 302 redirect to https://169\.254\.169\.254/latest/meta-data/ "
                                         r"\(redirects are not followed\)") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/m.onnx", tmp_path / "m.onnx", **opts(trust))
    assert err.value.status == 302 and not err.value.retryable
    assert len(srv.requests) == 1 and leftovers(tmp_path) == []


@pytest.mark.parametrize(("status", "retryable"), [("404 Not Found", False), ("503 Busy", True),
                                                   ("429 Slow Down", True), ("204 No Content", False)])
def test_an_http_error_names_the_status(serve, trust, status, retryable):
    srv = serve(reply(status=status))
    with pytest.raises(FetchError, match=f"HTTP {status[:3]}$") as err:
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/x", **opts(trust))
    assert err.value.status == int(status[:3]) and err.value.retryable is retryable


def test_a_sha256_mismatch_leaves_no_file_and_keeps_what_was_there(serve, trust, tmp_path):
    srv = serve(reply(b"not the model"))
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous")
    with pytest.raises(FetchError, match=f"sha256 mismatch: the bytes served do not have sha256 {'ab' * 32}") as err:
        fetch.fetch_to_file_sync(f"https://data.test:{srv.port}/model.onnx", dest, sha256="AB" * 32, **opts(trust))
    assert hashlib.sha256(b"not the model").hexdigest() not in str(err.value)
    assert dest.read_bytes() == b"previous" and leftovers(tmp_path) == ["model.onnx"]
    with pytest.raises(ValueError, match="not 64 hex digits"):
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/x", sha256="abc", **opts(trust))


def test_loopback_is_refused_without_an_explicit_allow_list(serve, trust):
    srv = serve(reply(b"secret"))
    with pytest.raises(UnsafeURL, match="loopback"):
        fetch.fetch_bytes_sync(f"https://127.0.0.1:{srv.port}/", ssl_context=trust)
    with pytest.raises(UnsafeURL, match="loopback"):
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/", ssl_context=trust, resolver=DNS(["127.0.0.1"]))
    assert srv.connections == []


def test_the_backslash_at_trick_is_refused_before_any_connection(serve, trust):
    srv = serve(reply(b"secret"))
    dns = DNS(["127.0.0.1"])
    with pytest.raises(UnsafeURL, match="backslash"):
        fetch.fetch_bytes_sync(f"https://127.0.0.1:{srv.port}\\@1.1.1.1/data.csv", **opts(trust, dns))
    with pytest.raises(UnsafeURL, match="user information"):
        fetch.fetch_bytes_sync(f"https://1.1.1.1@data.test:{srv.port}/data.csv", **opts(trust, dns))
    assert srv.connections == [] and dns.calls == []


# ---- DNS rebinding: one lookup, and the socket goes to what it answered ---------------------------

def test_rebinding_the_host_is_resolved_once_and_the_checked_address_is_used(cert, serve, trust):
    """127.0.0.1 stands for the public address the guard passes (it is the only allowed network);
    127.0.0.2 for the internal one a rebinding DNS answers next: the guard refuses it, and a
    server listens there on the same port to catch any connection that resolved twice."""
    checked = serve(reply(b"public data"))
    internal = serve(reply(b"internal secret"), host="127.0.0.2", port=checked.port)
    dns = DNS(["127.0.0.1"], ["127.0.0.2"])
    got = fetch.fetch_bytes_sync(f"https://data.test:{checked.port}/d.csv", **opts(trust, dns))
    assert got.data == b"public data"
    assert dns.calls == [("data.test", checked.port)]
    assert len(checked.connections) == 1 and internal.connections == []


def test_rebinding_the_first_answer_is_checked(serve, trust):
    internal = serve(reply(b"internal secret"), host="127.0.0.2")
    dns = DNS(["127.0.0.2"], ["127.0.0.1"])
    with pytest.raises(UnsafeURL, match=r"data\.test resolves to 127\.0\.0\.2, a loopback address"):
        fetch.fetch_bytes_sync(f"https://data.test:{internal.port}/d.csv", **opts(trust, dns))
    assert len(dns.calls) == 1 and internal.connections == []


def test_every_address_is_checked_not_just_the_first(serve, trust):
    srv = serve(reply(b"x"))
    with pytest.raises(UnsafeURL, match="169.254.169.254, a cloud metadata address"):
        fetch.fetch_bytes_sync(f"https://data.test:{srv.port}/",
                               **opts(trust, DNS(["127.0.0.1", "::ffff:169.254.169.254"])))
    assert srv.connections == []


def test_the_pinned_resolver_answers_only_the_checked_host():
    import asyncio

    resolver = fetch._PinnedResolver("data.test", [ipaddress.ip_address("127.0.0.1")])
    assert [r["host"] for r in asyncio.run(resolver.resolve("data.test", 443))] == ["127.0.0.1"]
    assert asyncio.run(resolver.resolve("DATA.test.", 443))[0]["host"] == "127.0.0.1"
    with pytest.raises(OSError, match="not the host that was checked"):
        asyncio.run(resolver.resolve("evil.test", 443))


def test_an_unresolvable_host_is_a_fetch_error(trust):
    def nxdomain(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(FetchError, match=r"cannot resolve nowhere\.test$") as err:
        fetch.fetch_bytes_sync("https://nowhere.test/x", **opts(trust, nxdomain))
    assert err.value.reason == "resolve"


# ---- connection failures all read the same --------------------------------------------------------

def test_connection_failures_do_not_tell_which_ports_answer(cert, serve, trust):
    refused = socket.create_server(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()
    silent = serve(lambda conn, request: None, tls=False)  # accepts, never speaks TLS
    plain = socket.create_server(("127.0.0.1", 0))  # answers in clear text

    def clear_text():
        conn, _ = plain.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=clear_text, daemon=True).start()
    tls = serve(reply(b"x"))  # a real TLS server whose certificate is not for wrong.test
    errors = {}
    for name, host, port in [("refused", "data.test", refused_port), ("silent", "data.test", silent.port),
                             ("clear text", "data.test", plain.getsockname()[1]), ("bad cert", "wrong.test", tls.port)]:
        url = f"https://{host}:{port}/x"
        with pytest.raises(FetchError) as err:
            fetch.fetch_bytes_sync(url, **opts(trust, connect_timeout=0.5, read_timeout=0.5))
        assert err.value.reason == "connect" and err.value.detail and err.value.__cause__ is None
        errors[name] = (str(err.value).replace(url, "URL"), err.value.detail)
    plain.close()
    assert {message for message, _ in errors.values()} == {f"cannot fetch URL: {fetch.CONNECTION_FAILED}"}
    assert len({detail for _, detail in errors.values()}) > 1  # the causes differ: only the log shows them


# ---- the operator's BYO artifact import -----------------------------------------------------------

class FakeS3:
    def __init__(self):
        self.uploads, self.puts = [], []

    def upload_file(self, path, bucket, key):
        with open(path, "rb") as f:
            self.uploads.append((bucket, key, f.read()))

    def put_object(self, Bucket, Key, Body):  # noqa: N803 - boto3's keywords
        self.puts.append((Bucket, Key))


@pytest.fixture
def operator_fetch(monkeypatch, trust):
    """The operator's artifacts module, its fetcher pointed at this file's servers and S3 faked."""
    from kiln_contract import storage
    from kiln_operator import artifacts

    s3 = FakeS3()
    monkeypatch.setattr(storage, "s3_client", lambda: s3)
    monkeypatch.setattr(artifacts.remote, "fetch_to_file_sync",
                        functools.partial(fetch.fetch_to_file_sync, **opts(trust, max_bytes=1 << 20)))
    return artifacts, s3


def test_operator_import_verifies_and_uploads(serve, operator_fetch):
    artifacts, s3 = operator_fetch
    body = b"onnx bytes"
    srv = serve(reply(body))
    entry = {"uri": f"https://data.test:{srv.port}/m/model.onnx", "sha256": hashlib.sha256(body).hexdigest()}
    artifacts.import_external(entry, "s3://bucket/models/m/v1", "m", 1, "2026-01-01T00:00:00Z")
    assert s3.uploads == [("bucket", "models/m/v1/model.onnx", body)]
    assert [key for _, key in s3.puts] == [f"models/m/v1/{artifacts.MODEL_CARD}"]


@pytest.mark.parametrize("handler", [reply(b"other bytes"), chunked([b"x" * 65536] * 32)], ids=["sha", "size"])
def test_operator_import_writes_nothing_on_a_bad_download(serve, operator_fetch, handler):
    artifacts, s3 = operator_fetch
    srv = serve(handler)
    entry = {"uri": f"https://data.test:{srv.port}/model.onnx", "sha256": "ab" * 32}
    with pytest.raises(FetchError, match="sha256 mismatch|1 MiB limit"):
        artifacts.import_external(entry, "s3://bucket/models/m/v1", "m", 1, "2026-01-01T00:00:00Z")
    assert s3.uploads == [] and s3.puts == []


def test_operator_logs_the_cause_the_user_does_not_see(operator_fetch, caplog, tmp_path):
    artifacts, _ = operator_fetch
    refused = socket.create_server(("127.0.0.1", 0))
    url = f"https://data.test:{refused.getsockname()[1]}/m.onnx"
    refused.close()
    with caplog.at_level(logging.WARNING, logger="kiln_operator.artifacts"), pytest.raises(FetchError) as err:
        artifacts.fetch(url, tmp_path / "m.onnx")
    assert str(err.value) == f"cannot fetch {url}: {fetch.CONNECTION_FAILED}"
    assert "Connect" in err.value.detail and err.value.detail in caplog.text
    assert leftovers(tmp_path) == []


# ---- the trainer's dataset read ---------------------------------------------------------------------

@pytest.fixture
def trainer_fetch(monkeypatch, trust):
    from kiln_trainer import datasets

    monkeypatch.setattr(fetch, "fetch_bytes_sync", functools.partial(fetch.fetch_bytes_sync, **opts(trust)))
    monkeypatch.setattr(datasets.time, "sleep", lambda s: None)
    return datasets


def test_trainer_retries_a_5xx_then_reads_the_dataset(serve, trainer_fetch):
    replies = [reply(status="503 Busy"), reply(b"a,b\n1,x\n2,y\n")]
    srv = serve(lambda conn, request: replies.pop(0)(conn, request))
    ds = trainer_fetch.load({"uri": f"https://data.test:{srv.port}/t.csv"})
    assert ds.rows == 2 and len(srv.requests) == 2


def test_trainer_caps_a_dataset_at_kiln_dataset_max_bytes(monkeypatch, serve, trainer_fetch):
    from kiln_trainer.errors import DataUnavailable

    monkeypatch.setenv("KILN_DATASET_MAX_BYTES", "1024")
    srv = serve(reply(b"a,b\n" + b"1,2\n" * 1000))
    with pytest.raises(DataUnavailable, match="over the 1 KiB limit"):
        trainer_fetch.load({"uri": f"https://data.test:{srv.port}/t.csv"})
    assert len(srv.requests) == 1  # too large is not retried
