"""The gateway's parts: routing, the watch-fed table, waiters, pod connections, the watch loop, the request path.

Pure parts are tested as functions; the loops run against in-process fakes on loopback (a fake API server with
list and watch, fake pods on 127.0.0.x): no cluster, a few seconds in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl

import pytest
from aiohttp import web

from kiln_operator.gateway import apiserver, routing, upstream
from kiln_operator.gateway.app import Gateway
from kiln_operator.gateway.config import Settings
from kiln_operator.gateway.endpoints import Endpoints, is_ready, pod_route
from kiln_operator.gateway.waiting import Waiters
from kiln_operator.gateway.watch import Watch


def run(coro, timeout: float = 30):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually(check, timeout: float = 5.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def pod(name: str, dep: str | None = "iris", ip: str | None = "127.0.0.2", ready: bool = True, ns: str = "ml",
        deleting: bool = False, version: str = "1") -> dict:
    labels = {"kiln.dev/version": version, **({"kiln.dev/deployment": dep} if dep else {})}
    meta = {"name": name, "namespace": ns, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


ADMIN_TOKEN = "tok-admin"  # FakeApi's token of a user allowed everywhere


def kdep(name: str, ns: str = "ml") -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns}}


# -- routing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    (b"/ml/iris/v2/models/iris/infer", ("ml", "iris", b"/v2/models/iris/infer")),
    (b"/ml/iris/v2/models/iris/infer?x=1&y=%20", ("ml", "iris", b"/v2/models/iris/infer?x=1&y=%20")),
    (b"/ml/iris", ("ml", "iris", b"/")),
    (b"/ml/iris/", ("ml", "iris", b"/")),
    (b"/ml/iris?q=1", ("ml", "iris", b"/?q=1")),
    (b"/ml/my.model-2/a%2Fb", ("ml", "my.model-2", b"/a%2Fb")),
    ("/ml/iris/café".encode(), ("ml", "iris", "/café".encode())),  # raw bytes go on as they arrived
])
def test_split_finds_namespace_deployment_and_the_rest(path, expected):
    assert routing.split(path) == expected
    assert routing.valid(*expected[:2])


@pytest.mark.parametrize("path", [
    b"/", b"/ml", b"/ml/", b"//iris/x", b"/ML/iris/x", b"/ml/Iris/x", b"/-/healthz", b"/metrics", b"/ml/-iris/x",
    b"/" + b"a" * 64 + b"/iris/x", b"/ml/" + b"a" * 254 + b"/x", b"/ml/iris./x", b"*", b"/ml%2Fother/iris/x",
    b"http://evil/ml/iris/x", "/ml/caf\u00e9/x".encode(),
])
def test_what_is_not_a_namespace_and_deployment_is_not_valid(path):
    route = routing.split(path)
    assert route is None or not routing.valid(route[0], route[1])


def test_request_head_drops_hop_by_hop_headers_and_sets_host_and_length():
    raw = ((b"Content-Type", b"application/json"), (b"Connection", b"keep-alive, X-Secret-Hop"),
           (b"Keep-Alive", b"timeout=5"), (b"X-Secret-Hop", b"1"), (b"Transfer-Encoding", b"chunked"),
           (b"Host", b"gateway:8081"), (b"Content-Length", b"99"), (b"Expect", b"100-continue"),
           (b"TE", b"trailers"), (b"Upgrade", b"h2c"), (b"Proxy-Authorization", b"Basic x"),
           (b"Authorization", b"Bearer end-to-end"), (b"X-Request-Id", b"abc"))
    head = routing.request_head("POST", b"/v2/models/iris/infer?a=1", b"iris.ml.svc", raw, 42)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/models/iris/infer?a=1 HTTP/1.1"
    assert head.endswith(b"\r\n\r\n")
    headers = [tuple(x.split(b": ", 1)) for x in lines[1:] if x]
    assert headers == [(b"Host", b"iris.ml.svc"), (b"Content-Type", b"application/json"),
                       (b"Authorization", b"Bearer end-to-end"), (b"X-Request-Id", b"abc"),
                       (b"Content-Length", b"42")]


def test_request_head_can_drop_the_callers_credentials_too():
    raw = ((b"authorization", b"Bearer secret"), (b"X-Request-Id", b"abc"))
    head = routing.request_head("GET", b"/x", b"iris.ml.svc", raw, 0, routing.HOP_BY_HOP | {b"authorization"})
    assert b"secret" not in head and b"X-Request-Id: abc" in head


def test_response_headers_keep_end_to_end_ones_only():
    raw = [(b"content-type", b"application/json"), (b"content-length", b"10"), (b"connection", b"close"),
           (b"x-model-version", b"3"), (b"Transfer-Encoding", b"chunked"), (b"set-cookie", b"a=1"),
           (b"set-cookie", b"b=2")]
    assert routing.response_headers(raw) == [(b"content-type", b"application/json"), (b"x-model-version", b"3"),
                                             (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert (b"content-length", b"10") in routing.response_headers(raw, keep_length=True)  # HEAD: the pod's length
    listed = [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"X-End", b"2")]
    assert routing.response_headers(listed) == [(b"X-End", b"2")]


def test_settings_come_from_the_environment(monkeypatch):
    from kiln_operator.gateway import config

    for name, value in {"KILN_GATEWAY_LISTEN": "[fd00::7]:9081", "KILN_GATEWAY_ADMIN_LISTEN": ":9080",
                        "KILN_WATCH_NAMESPACES": " team-a, team-b,team-a,", "KILN_WAKE_URL": "http://op:8082/",
                        "KILN_GATEWAY_MAX_WAITING": "7", "KILN_GATEWAY_WAIT_SECONDS": "2.5"}.items():
        monkeypatch.setenv(name, value)
    s = config.load()
    assert s.listen == ("fd00::7", 9081) and s.admin_listen == ("0.0.0.0", 9080)
    assert s.namespaces == ("team-a", "team-b") and s.wake_url == "http://op:8082"
    assert s.max_waiting == 7 and s.wait_seconds == 2.5 and s.max_body == 16 * 1024 * 1024


# -- the table -------------------------------------------------------------------------------------------------


def test_ready_means_ready_condition_ip_and_not_deleting():
    assert is_ready(pod("a"))
    assert not is_ready(pod("a", ready=False))
    assert not is_ready(pod("a", ip=None))
    assert not is_ready(pod("a", deleting=True))
    assert not is_ready({"metadata": {"name": "a"}})
    assert pod_route(pod("a")) == ("ml/a", ("ml", "iris"), "127.0.0.2")
    assert pod_route(pod("a", dep=None)) == ("ml/a", None, None)


class Recorder:
    def __init__(self):
        self.changed: list = []
        self.gone: list = []

    def table(self) -> Endpoints:
        return Endpoints(on_change=self.changed.append, on_gone=self.gone.append)


def test_pod_events_build_ready_ips_and_round_robin():
    rec = Recorder()
    t = rec.table()
    key = ("ml", "iris")
    t.pod_event("ADDED", pod("a", ip=None, ready=False))
    assert t.pick(key) is None and rec.changed == []  # not ready: nothing routable, nothing changed
    t.pod_event("MODIFIED", pod("a", ip="127.0.0.2"))
    t.pod_event("ADDED", pod("b", ip="127.0.0.3"))
    assert rec.changed == [key, key]
    assert t.ready(key) == ["127.0.0.2", "127.0.0.3"] and t.ready_count() == 2
    assert [t.pick(key) for _ in range(4)] == ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]
    assert t.pick(key, exclude={"127.0.0.2"}) == "127.0.0.3"
    assert t.pick(key, exclude={"127.0.0.2", "127.0.0.3"}) is None
    t.pod_event("MODIFIED", pod("a", ip="127.0.0.2"))  # a status update that changes nothing routable
    assert rec.changed == [key, key]
    t.pod_event("MODIFIED", pod("a", ip="127.0.0.2", deleting=True))  # terminating: out at once
    assert t.ready(key) == ["127.0.0.3"] and rec.gone == ["127.0.0.2"]
    t.pod_event("DELETED", pod("a", ip="127.0.0.2", deleting=True))
    t.pod_event("DELETED", pod("b", ip="127.0.0.3"))
    assert t.pick(key) is None and not t.has_ready(key) and rec.gone == ["127.0.0.2", "127.0.0.3"]
    assert t._members == {} and t._pods == {} and t._next == {}  # nothing kept for pods that are gone


def test_a_pod_losing_its_label_leaves_its_deployment():
    t = Endpoints()
    t.pod_event("ADDED", pod("a"))
    t.pod_event("MODIFIED", pod("a", dep=None))
    assert t.pick(("ml", "iris")) is None


def test_same_ip_on_two_deployments_is_not_gone_while_one_still_has_it():
    rec = Recorder()
    t = rec.table()
    t.pod_event("ADDED", pod("a", dep="iris", ip="127.0.0.2"))
    t.pod_event("ADDED", pod("b", dep="wine", ip="127.0.0.2"))  # a recycled IP seen before the old pod's delete
    t.pod_event("DELETED", pod("a", dep="iris", ip="127.0.0.2"))
    assert rec.gone == [] and t.pick(("ml", "wine")) == "127.0.0.2"


def test_reset_pods_replaces_only_the_listed_namespace():
    rec = Recorder()
    t = rec.table()
    t.pod_event("ADDED", pod("a", ns="ml", ip="127.0.0.2"))
    t.pod_event("ADDED", pod("b", ns="other", ip="127.0.0.3"))
    rec.changed.clear()
    t.reset_pods([pod("c", ns="ml", ip="127.0.0.4")], namespace="ml")
    assert t.ready(("ml", "iris")) == ["127.0.0.4"] and t.ready(("other", "iris")) == ["127.0.0.3"]
    assert rec.changed == [("ml", "iris")] and rec.gone == ["127.0.0.2"]
    t.reset_pods([])  # cluster-wide list: everything not listed goes
    assert t.ready_count() == 0


def test_deployments_exist_from_events_and_lists_and_deletion_notifies():
    rec = Recorder()
    t = rec.table()
    t.deployment_event("ADDED", kdep("iris"))
    t.deployment_event("ADDED", kdep("wine", ns="other"))
    assert t.exists(("ml", "iris")) and t.count() == 2 and not t.exists(("ml", "wine"))
    t.deployment_event("DELETED", kdep("iris"))
    assert not t.exists(("ml", "iris")) and rec.changed == [("ml", "iris")]
    t.reset_deployments([kdep("new")], namespace="ml")
    assert t.exists(("ml", "new")) and t.exists(("other", "wine"))
    t.reset_deployments([kdep("new")])
    assert not t.exists(("other", "wine")) and ("other", "wine") in rec.changed


# -- waiters ---------------------------------------------------------------------------------------------------


def test_waiters_are_capped_per_key():
    w = Waiters(cap=2)
    assert w.admit("a") and w.admit("a") and not w.admit("a")
    assert w.admit("b") and w.total == 3 and w.waiting("a") == 2
    w.leave("a")
    assert w.admit("a")
    for key in ("a", "a", "b"):
        w.leave(key)
    assert w.total == 0 and w._count == {}


def test_waiters_wake_on_notify_time_out_and_leave_nothing_behind():
    async def scenario():
        w = Waiters(cap=10)
        first = asyncio.create_task(w.changed("a", 5))
        await asyncio.sleep(0)
        assert w.holds() == 1
        w.notify("a")
        assert await first is True
        assert await w.changed("a", 0.01) is False  # nobody notified
        cancelled = asyncio.create_task(w.changed("a", 5))
        await asyncio.sleep(0)
        cancelled.cancel()  # a client that went away
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        assert w.holds() == 0 and w._futures == {}
        w.notify("nobody-waits")

    run(scenario())


# -- connections to pods -----------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class FakePod:
    """A pod answering every request with its own name; counts connections."""

    def __init__(self, ip: str, port: int, name: str, delay: float = 0.0, size: int = 0):
        self.ip, self.port, self.name, self.delay, self.size = ip, port, name, delay, size
        self.connections = 0
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.raw_path, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.size:
            return web.Response(body=b"x" * self.size)
        return web.json_response({"pod": self.name, "path": request.raw_path, "body": body.decode()},
                                 headers={"X-Pod": self.name, "Connection": "keep-alive"})

    async def __aenter__(self) -> FakePod:
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.ip, self.port).start()
        original = server.connection_made

        def counted(handler, transport):
            self.connections += 1
            original(handler, transport)

        server.connection_made = counted
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


def head(path: str = "/v2/x", body: bytes = b"{}", method: str = "POST") -> tuple[bytes, bytes]:
    return routing.request_head(method, path.encode(), b"iris.ml.svc", ((b"Content-Type", b"application/json"),),
                                len(body)), body


def test_pool_reuses_connections_and_reports_refused_pods():
    async def scenario():
        port = free_port("127.0.0.2")
        pool = upstream.Pool(port, timeout=5)
        async with FakePod("127.0.0.2", port, "a") as a:
            for i in range(5):
                status, headers, body = await pool.request("127.0.0.2", head(f"/n/{i}"))
                assert status == 200 and json.loads(body)["path"] == f"/n/{i}"
            assert a.connections == 1 and pool.idle() == 1
            assert (b"X-Pod", b"a") in headers
            assert a.requests[0][2]["Host"] == "iris.ml.svc"
        with pytest.raises(upstream.Unreachable):
            await pool.request("127.0.0.2", head())  # the pod is gone: the idle connection and a new one fail
        pool.close()

    run(scenario())


def test_pool_retries_once_when_the_pod_closed_an_idle_connection():
    async def scenario():
        port = free_port("127.0.0.2")
        pool = upstream.Pool(port, timeout=5)
        async with FakePod("127.0.0.2", port, "a") as a:
            await pool.request("127.0.0.2", head())
            conn = pool._idle["127.0.0.2"][0]
            for handler in a._runner.server.connections:
                handler.force_close()  # the pod's keep-alive timeout ends the idle connection
            await asyncio.sleep(0.05)
            assert conn.closed
            conn.closed = False  # as if the close had not been seen yet when it is reused
            pool._idle["127.0.0.2"] = [conn]
            status, _, _ = await pool.request("127.0.0.2", head())
            assert status == 200 and a.connections == 2
        pool.close()

    run(scenario())


def test_pool_bounds_time_and_size_and_never_reuses_a_failed_connection():
    async def scenario():
        port = free_port("127.0.0.2")
        async with FakePod("127.0.0.2", port, "slow", delay=1.0):
            pool = upstream.Pool(port, timeout=0.2)
            with pytest.raises(upstream.UpstreamTimeout):
                await pool.request("127.0.0.2", head())
            assert pool.idle() == 0
        port = free_port("127.0.0.2")
        async with FakePod("127.0.0.2", port, "big", size=10_000):
            pool = upstream.Pool(port, timeout=5, max_response=1000)
            with pytest.raises(upstream.BadResponse, match="larger than 1000"):
                await pool.request("127.0.0.2", head())
            assert pool.idle() == 0

    run(scenario())


def test_pool_handles_head_and_a_cancelled_exchange():
    async def scenario():
        port = free_port("127.0.0.2")
        async with FakePod("127.0.0.2", port, "a", delay=0.3) as a:
            pool = upstream.Pool(port, timeout=5)
            status, headers, body = await pool.request("127.0.0.2", head(method="HEAD", body=b""), head_only=True)
            assert status == 200 and body == b"" and pool.idle() == 0  # never reused after HEAD
            task = asyncio.create_task(pool.request("127.0.0.2", head()))
            await asyncio.sleep(0.1)
            task.cancel()  # the client went away mid-exchange
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert pool.idle() == 0  # its late answer can never reach another request
            a.delay = 0
            assert (await pool.request("127.0.0.2", head()))[0] == 200

    run(scenario())


# -- a fake API server -----------------------------------------------------------------------------------------


class FakeApi:
    """List and watch of pods and Kiln Deployments, driven by the test; POST /wake/<ns>/<name> for the operator."""

    PATHS = {"/api/v1/pods": "pods", "/apis/kiln.dev/v1alpha1/deployments": "deployments"}

    def __init__(self):
        self.version = 100
        self.objects: dict[str, dict[str, dict]] = {"pods": {}, "deployments": {}}
        self.streams: dict[str, list[asyncio.Queue]] = {"pods": [], "deployments": []}
        self.requests: list[str] = []
        self.wakes: list[str] = []
        self.on_wake = None
        self.gone_below = 0  # watches from an older resourceVersion get 410
        self.url = ""
        # TokenReview and SubjectAccessReview: token -> user; user -> (namespace, name) patterns granted
        self.tokens: dict[str, dict] = {ADMIN_TOKEN: {"username": "admin", "uid": "u-admin",
                                                      "groups": ["system:masters", "system:authenticated"]}}
        self.grants: dict[str, set[tuple[str, str]]] = {"admin": {("*", "*")}}
        self.reviews: list[tuple] = []  # ("token", token) and ("access", spec)
        self.review_delay = 0.0
        self.review_status = 201

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        resource = self.PATHS[request.path]
        self.requests.append(f"{'watch' if request.query.get('watch') else 'list'} {resource}")
        if resource == "pods":
            assert request.query.get("labelSelector") == "kiln.dev/deployment"
        if not request.query.get("watch"):
            return web.json_response({"items": list(self.objects[resource].values()),
                                      "metadata": {"resourceVersion": str(self.version)}})
        if int(request.query["resourceVersion"]) < self.gone_below:
            return web.json_response({"kind": "Status", "code": 410}, status=410)
        assert request.query["allowWatchBookmarks"] == "true"
        resp = web.StreamResponse()
        await resp.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        self.streams[resource].append(queue)
        try:
            while (event := await queue.get()) is not None:
                await resp.write(json.dumps(event).encode() + b"\n")
        finally:
            self.streams[resource].remove(queue)
        return resp

    async def _wake(self, request: web.Request) -> web.Response:
        self.wakes.append(f"{request.match_info['ns']}/{request.match_info['name']}")
        if self.on_wake:
            self.on_wake()
        return web.json_response({"accepted": True}, status=202)

    async def _token_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Authorization"] == "Bearer test"  # the gateway's own credentials
        assert body["kind"] == "TokenReview"
        self.reviews.append(("token", body["spec"]["token"]))
        await asyncio.sleep(self.review_delay)
        if self.review_status != 201:
            return web.json_response({"kind": "Status", "code": self.review_status}, status=self.review_status)
        user = self.tokens.get(body["spec"]["token"])
        status = {"authenticated": True, "user": user, "audiences": ["https://kubernetes.default.svc"]} if user \
            else {"authenticated": False, "error": "invalid bearer token"}
        return web.json_response({"kind": "TokenReview", "status": status}, status=201)

    async def _access_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Authorization"] == "Bearer test"
        spec = body["spec"]
        self.reviews.append(("access", spec))
        await asyncio.sleep(self.review_delay)
        if self.review_status != 201:
            return web.json_response({"kind": "Status", "code": self.review_status}, status=self.review_status)
        attrs = spec["resourceAttributes"]
        assert (attrs["verb"], attrs["group"], attrs["resource"], attrs["subresource"]) == (
            "create", "kiln.dev", "deployments", "predict"), attrs
        allowed = any(ns in ("*", attrs["namespace"]) and name in ("*", attrs["name"])
                      for ns, name in self.grants.get(spec["user"], ()))
        return web.json_response({"kind": "SubjectAccessReview", "status": {"allowed": allowed}}, status=201)

    def counted(self, kind: str) -> int:
        return sum(1 for r in self.reviews if r[0] == kind)

    def emit(self, resource: str, kind: str, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        ident = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if kind == "DELETED":
            self.objects[resource].pop(ident, None)
        else:
            self.objects[resource][ident] = obj
        for queue in self.streams[resource]:
            queue.put_nowait({"type": kind, "object": obj})

    def send(self, resource: str, event: dict | None) -> None:
        for queue in self.streams[resource]:
            queue.put_nowait(event)

    async def __aenter__(self) -> FakeApi:
        app = web.Application()
        for path in self.PATHS:
            app.router.add_get(path, self._resource)
        app.router.add_post("/wake/{ns}/{name}", self._wake)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        for resource in self.streams:
            self.send(resource, None)
        await self._runner.cleanup()

    def credentials(self) -> apiserver.Credentials:
        return apiserver.Credentials(self.url, ssl.create_default_context(), authorization="Bearer test")


def test_watch_lists_follows_resumes_and_relists_after_410():
    async def scenario():
        async with FakeApi() as api:
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
            table = Endpoints()
            async with apiserver.session(api.credentials(), 5) as session:
                w = Watch(session, api.credentials(), "/api/v1/pods", "pods", table.reset_pods, table.pod_event,
                          selector="kiln.dev/deployment", timeout=5)
                task = asyncio.create_task(w.run())
                await asyncio.wait_for(w.synced.wait(), 5)
                assert table.ready(("ml", "iris")) == ["127.0.0.2"]
                await eventually(lambda: api.streams["pods"], what="the watch")
                api.emit("pods", "ADDED", pod("b", ip="127.0.0.3"))
                await eventually(lambda: table.ready_count() == 2, what="the ADDED event")
                # bookmark, then the stream ends (timeoutSeconds): the watch resumes from the bookmark, no list
                api.send("pods", {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "500"}}})
                api.send("pods", None)
                await eventually(lambda: api.requests.count("watch pods") == 2 and api.streams["pods"],
                                 what="the renewed watch")
                assert api.requests.count("list pods") == 1
                # the version expires: 410 in the stream, then a fresh list replaces the table
                api.objects["pods"].pop("ml/a")
                api.gone_below = 10_000
                api.version = 20_000
                api.send("pods", {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
                await eventually(lambda: api.requests.count("list pods") == 2, what="the re-list")
                await eventually(lambda: table.ready(("ml", "iris")) == ["127.0.0.3"], what="the fresh table")
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(scenario())


# -- the whole gateway -------------------------------------------------------------------------------------------


def settings(**kw) -> Settings:
    base = dict(listen=("127.0.0.1", 0), admin_listen=("127.0.0.1", 0), namespaces=(), wake_url="",
                wait_seconds=5.0, max_waiting=3, max_body=1024, pod_port=free_port("127.0.0.2"), watch_timeout=5,
                drain_seconds=0.0, upstream_timeout=5.0, auth="kubernetes")
    return Settings(**{**base, **kw})


@contextlib.asynccontextmanager
async def gateway(api: FakeApi, **kw):
    gw = Gateway(settings(**kw), credentials=api.credentials())
    await gw.start()
    await eventually(gw.synced, what="the first lists")
    try:
        yield gw
    finally:
        await gw.stop()


async def call(gw: Gateway, method: str, path: str | bytes, body: bytes = b"", headers: dict | None = None,
               timeout: float = 10, token: str | None = ADMIN_TOKEN) -> tuple[int, dict, bytes]:
    """A minimal HTTP/1.1 client on a raw socket (no client-side limits in the way); token=None sends none."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    lines = [f"{method} {{path}} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in {**auth, **(headers or {})}.items())]
    raw_path = path if isinstance(path, bytes) else path.encode()
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode().replace(b"{path}", raw_path, 1) + body)
    raw = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head_, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head_.split(b" ", 2)[1])
    hdrs = dict(line.decode().split(": ", 1) for line in head_.split(b"\r\n")[1:])
    return status, hdrs, payload


def test_gateway_routes_round_robin_and_asks_the_api_nothing_per_request():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
            api.emit("pods", "ADDED", pod("b", ip="127.0.0.3"))
            async with FakePod("127.0.0.2", s.pod_port, "a"), FakePod("127.0.0.3", s.pod_port, "b"), \
                    gateway(api, pod_port=s.pod_port) as gw:
                before = len(api.requests)
                seen = []
                for _ in range(4):
                    status, hdrs, body = await call(gw, "POST", "/ml/iris/v2/models/iris/infer?v=1", b'{"x": 1}')
                    assert status == 200, body
                    answer = json.loads(body)
                    assert answer["path"] == "/v2/models/iris/infer?v=1" and answer["body"] == '{"x": 1}'
                    seen.append(answer["pod"])
                assert seen == ["a", "b", "a", "b"] and hdrs["X-Pod"] in ("a", "b")
                assert len(api.requests) == before  # zero API requests per prediction
                # the caller was checked once (a TokenReview and a SubjectAccessReview), then remembered
                assert api.counted("token") == 1 and api.counted("access") == 1

    run(scenario())


def test_unknown_deployment_is_404_at_once_and_bad_routes_too():
    async def scenario():
        async with FakeApi() as api, gateway(api) as gw:
            status, hdrs, body = await call(gw, "GET", "/ml/nope/v2/health/ready")
            assert status == 404 and "nope" in json.loads(body)["error"]
            assert hdrs["Content-Type"].startswith("application/json")
            status, _, body = await call(gw, "GET", "/Not-A-Namespace/x/y")
            assert status == 404 and "/<namespace>/<deployment>/<path>" in json.loads(body)["error"]

    run(scenario())


def test_bodies_beyond_the_limit_are_refused_before_they_are_read():
    async def scenario():
        async with FakeApi() as api:
            api.emit("deployments", "ADDED", kdep("iris"))
            async with gateway(api, max_body=1024) as gw:
                status, _, body = await call(gw, "POST", "/ml/iris/x", b"x" * 2048)
                assert status == 413 and "1024" in json.loads(body)["error"]
                # a chunked body announces no length: it is cut off as it is read
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                chunk = b"x" * 600
                writer.write(b"POST /ml/iris/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                             b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n"
                             + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3 + b"0\r\n\r\n")
                raw = await asyncio.wait_for(reader.read(200), 5)
                assert raw.startswith(b"HTTP/1.1 413"), raw
                writer.close()

    run(scenario())


def test_waiting_is_capped_bounded_in_time_and_woken_by_a_ready_pod():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2", ready=False))
            async with FakePod("127.0.0.2", s.pod_port, "a"), \
                    gateway(api, pod_port=s.pod_port, max_waiting=2, wait_seconds=0.5,
                            wake_url=api.url) as gw:
                status, hdrs, body = await call(gw, "POST", "/ml/iris/x", b"{}")
                assert status == 503 and "within 0.5s" in json.loads(body)["error"] and hdrs["Retry-After"]
                assert api.wakes == ["ml/iris"]
                gw.settings.__dict__["wait_seconds"] = 5.0  # frozen dataclass: tests only
                held = [asyncio.create_task(call(gw, "POST", "/ml/iris/x", b"{}")) for _ in range(2)]
                await eventually(lambda: gw.waiters.total == 2, what="two waiters")
                status, hdrs, body = await call(gw, "POST", "/ml/iris/x", b"{}")  # the third is over the cap
                assert status == 503 and hdrs["Retry-After"] == "1" and "already wait" in json.loads(body)["error"]
                api.emit("pods", "MODIFIED", pod("a", ip="127.0.0.2"))  # the pod turns ready
                results = await asyncio.gather(*held)
                assert [r[0] for r in results] == [200, 200]
                assert gw.waiters.total == 0 and gw.waiters.holds() == 0

    run(scenario())


def test_scale_from_zero_wakes_the_operator_and_answers_when_the_pod_is_ready():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.on_wake = lambda: asyncio.get_running_loop().call_later(
                0.2, api.emit, "pods", "ADDED", pod("a", ip="127.0.0.2"))
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port,
                                                                      wake_url=api.url) as gw:
                status, _, body = await call(gw, "POST", "/ml/iris/x", b"{}")
                assert status == 200 and json.loads(body)["pod"] == "a"
                assert api.wakes == ["ml/iris"]

    run(scenario())


def test_a_held_request_keeps_waking_while_it_waits(monkeypatch):
    """A cold start slower than scaleToZeroAfter: the operator must keep seeing demand until a pod is ready."""
    from kiln_operator.gateway import proxy, wake

    monkeypatch.setattr(proxy, "REPEAT", 0.2)
    monkeypatch.setattr(wake, "REPEAT", 0.2)

    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port, wait_seconds=5,
                                                                      wake_url=api.url) as gw:
                held = asyncio.create_task(call(gw, "POST", "/ml/iris/x", b"{}"))
                await eventually(lambda: len(api.wakes) >= 3, what="wakes repeated while the request waits")
                api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
                status, _, _ = await held
                assert status == 200 and set(api.wakes) == {"ml/iris"}

    run(scenario())


def test_a_deleted_deployment_answers_its_waiters_404():
    async def scenario():
        async with FakeApi() as api:
            api.emit("deployments", "ADDED", kdep("iris"))
            async with gateway(api) as gw:
                held = asyncio.create_task(call(gw, "GET", "/ml/iris/x"))
                await eventually(lambda: gw.waiters.total == 1, what="a waiter")
                api.emit("deployments", "DELETED", kdep("iris"))
                status, _, body = await held
                assert status == 404 and "deleted" in json.loads(body)["error"]

    run(scenario())


def test_a_client_that_disconnects_frees_its_waiter():
    async def scenario():
        async with FakeApi() as api:
            api.emit("deployments", "ADDED", kdep("iris"))
            async with gateway(api, wait_seconds=30) as gw:
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(b"GET /ml/iris/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok-admin\r\n\r\n")
                await eventually(lambda: gw.waiters.total == 1, what="a waiter")
                writer.close()
                await eventually(lambda: gw.waiters.total == 0, what="the waiter to be freed")
                assert gw.waiters.holds() == 0 and gw.waiters._count == {}

    run(scenario())


def test_a_refused_connection_goes_to_another_pod():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("dead", ip="127.0.0.4"))  # ready in the API, nothing listening
            api.emit("pods", "ADDED", pod("b", ip="127.0.0.3"))
            async with FakePod("127.0.0.3", s.pod_port, "b"), gateway(api, pod_port=s.pod_port) as gw:
                for _ in range(4):
                    status, _, body = await call(gw, "GET", "/ml/iris/x")
                    assert status == 200 and json.loads(body)["pod"] == "b"

    run(scenario())


def test_health_readiness_and_metrics_on_the_admin_port():
    async def scenario():
        import aiohttp

        async with FakeApi() as api, gateway(api) as gw:
            await call(gw, "GET", "/ml/nope/x")
            base = f"http://127.0.0.1:{gw.admin_port}"
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/healthz") as resp:
                    assert resp.status == 200
                async with session.get(base + "/readyz") as resp:
                    assert resp.status == 200 and (await resp.json())["status"] == "ready"
                async with session.get(base + "/metrics") as resp:
                    text = await resp.text()
                for name in ('kiln_gateway_requests_total{code="404"}', "kiln_gateway_request_duration_seconds_bucket",
                             "kiln_gateway_waiting_requests 0.0", "kiln_gateway_ready_pods"):
                    assert name in text, name
                gw.stopping = True
                async with session.get(base + "/readyz") as resp:
                    assert resp.status == 503

    run(scenario())


def test_expect_continue_is_answered_and_hop_by_hop_headers_stop_here():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
            async with FakePod("127.0.0.2", s.pod_port, "a") as a, gateway(api, pod_port=s.pod_port) as gw:
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(b"POST /ml/iris/v2/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
                             b"Authorization: Bearer tok-admin\r\nExpect: 100-continue\r\n"
                             b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n")
                assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(b"ping")
                head_ = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head_.startswith(b"HTTP/1.1 200") and b"X-Pod: a" in head_
                writer.close()
                _, _, headers, body = a.requests[-1]
                assert body == b"ping" and headers["X-End"] == "2" and headers["Host"] == "iris.ml.svc"
                assert not {"X-Hop", "Expect", "Connection", "Transfer-Encoding", "Authorization"} & set(headers)

    run(scenario())


# -- the traffic server itself ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server(limits=None, delay: float = 0.0):
    """server.HttpProtocol with a handler that echoes the request (after delay); yields (port, seen, cancelled)."""
    from kiln_operator.gateway.server import Connections, HttpProtocol, Limits

    seen, cancelled = [], []

    async def handler(request):
        seen.append(request)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(request.target)
            raise
        return 200, [(b"X-Target", request.target)], request.body

    connections = Connections(limits or Limits(max_body=1024, body_timeout=0.3, idle_timeout=0.5))
    server = await asyncio.get_running_loop().create_server(lambda: HttpProtocol(handler, connections),
                                                            "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen, cancelled
    finally:
        server.close()
        connections.close()


def test_server_answers_pipelined_requests_in_order():
    async def scenario():
        async with echo_server(delay=0.01) as (port, seen, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(b"POST /r%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%d" % (
                i, len(b"%d" % i), i) for i in range(12)))
            answers = []
            for _ in range(12):
                head_ = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                answers.append((head_.split(b"X-Target: ")[1].split(b"\r\n")[0], await reader.readexactly(
                    int(head_.split(b"Content-Length: ")[1].split(b"\r\n")[0]))))
            assert answers == [(b"/r%d" % i, b"%d" % i) for i in range(12)]
            writer.close()

    run(scenario())


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),  # smuggling shape
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"POST /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", 413),
    (b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 408),  # the rest never comes
    (b"GET /x HTTP/1.1\r\nHost: x\r\n", 408),  # nor does the end of the head
])
def test_server_refuses_and_closes(raw, status):
    async def scenario():
        async with echo_server() as (port, seen, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            answer = await asyncio.wait_for(reader.read(), 5)  # read() to EOF: the server closed
            assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
            assert b"Connection: close" in answer and seen == []

    run(scenario())


def test_server_closes_idle_connections_and_cancels_requests_of_clients_that_left():
    async def scenario():
        async with echo_server(delay=10) as (port, seen, cancelled):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: seen, what="the request")
            writer.close()
            await eventually(lambda: cancelled == [b"/slow"], what="the handler to be cancelled")
        async with echo_server() as (port, seen, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"X-Target: /a" in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            t0 = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: closed after the idle timeout (0.5 s)
            assert asyncio.get_running_loop().time() - t0 > 0.3

    run(scenario())


# -- who may send requests: bearer tokens, TokenReview, SubjectAccessReview ------------------------------------


@pytest.mark.parametrize("headers, status", [
    ([], 401),
    ([(b"Authorization", b"Basic dXNlcjpwYXNz")], 401),
    ([(b"Authorization", b"Bearer")], 401),
    ([(b"Authorization", b"Bearer   ")], 401),
    ([(b"Authorization", b"Bearer a b")], 401),
    ([(b"Authorization", b"Bearer \xc3\xa9t\xc3\xa9")], 401),
    ([(b"Authorization", b"Bearer " + b"x" * (16 * 1024 + 1))], 401),
    ([(b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b")], 400),
])
def test_only_one_well_formed_bearer_token_is_a_credential(headers, status):
    from kiln_operator.gateway import auth
    from kiln_operator.gateway.proxy import Refusal

    with pytest.raises(Refusal) as refused:
        auth.well_formed(auth.bearer(headers))
    assert refused.value.status == status
    if status == 401:
        assert dict(refused.value.headers)[b"WWW-Authenticate"].startswith(b"Bearer")


@pytest.mark.parametrize("value", [b"Bearer tok-1", b"bearer tok-1", b"BEARER  tok-1 ", b" Bearer tok-1"])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_are_ignored(value):
    from kiln_operator.gateway import auth

    assert auth.bearer([(b"Content-Type", b"x"), (b"AUTHORIZATION", value)]) == b"tok-1"


def jwt(claims: dict) -> bytes:
    import base64

    def part(obj) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")

    return part({"alg": "RS256"}) + b"." + part(claims) + b".c2ln"


def test_a_jwt_bounds_how_long_its_answer_is_remembered():
    import math
    import time

    from kiln_operator.gateway import auth

    assert 99 < auth.seconds_left(jwt({"exp": time.time() + 100})) <= 100
    assert auth.seconds_left(jwt({"exp": time.time() - 5})) < 0
    for opaque in (b"opaque-token", jwt({"sub": "no exp"}), b"a.!!!.c", b"a." + b"W10" + b".c"):
        assert auth.seconds_left(opaque) == math.inf


def test_the_cache_expires_entries_and_evicts_the_least_recently_used():
    from kiln_operator.gateway.auth import _MISS, Cache

    c = Cache(2)
    c.put("a", 1, expires=10)
    c.put("b", 2, expires=10)
    assert c.get("a", now=0) == 1  # a is now the most recently used
    c.put("c", 3, expires=10)
    assert c.get("b", now=0) is _MISS and c.get("a", now=0) == 1 and len(c) == 2
    assert c.get("c", now=10) is _MISS and len(c) == 1  # expired: gone


def tenants(api: FakeApi) -> None:
    """Two namespaces, a and b, with a Deployment iris each (ready pods on 127.0.0.2 and .3), a token for each
    tenant's ServiceAccount, allowed in its own namespace only, and one for a ServiceAccount allowed nowhere."""
    for ns, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
        api.emit("deployments", "ADDED", kdep("iris", ns=ns))
        api.emit("pods", "ADDED", pod(f"iris-{ns}", ns=ns, ip=ip))
        user = f"system:serviceaccount:{ns}:client"
        api.tokens[f"tok-{ns}"] = {"username": user, "uid": f"u-{ns}", "groups": ["system:serviceaccounts"],
                                   "extra": {"authentication.kubernetes.io/pod-name": [f"client-{ns}"]}}
        api.grants[user] = {(ns, "*")}
    api.tokens["tok-nobody"] = {"username": "system:serviceaccount:a:nobody", "groups": []}


def test_tokens_are_checked_by_the_api_server_and_tenants_reach_their_own_namespace_only():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            tenants(api)
            async with FakePod("127.0.0.2", s.pod_port, "a") as pod_a, FakePod("127.0.0.3", s.pod_port, "b"), \
                    gateway(api, pod_port=s.pod_port) as gw:
                infer = "/a/iris/v2/models/iris/infer"
                status, hdrs, body = await call(gw, "POST", infer, b"{}", token=None)
                assert status == 401 and hdrs["WWW-Authenticate"] == 'Bearer realm="kiln-gateway"', body
                assert "Authorization: Bearer" in json.loads(body)["error"] and api.reviews == []
                status, hdrs, body = await call(gw, "POST", infer, b"{}", token="garbage")
                assert status == 401 and 'error="invalid_token"' in hdrs["WWW-Authenticate"], body
                # A's token on A's model: answered, and the token stays with the gateway
                status, _, body = await call(gw, "POST", infer, b"{}", token="tok-a")
                assert status == 200 and json.loads(body)["pod"] == "a", body
                assert "Authorization" not in pod_a.requests[-1][2]
                spec = next(r[1] for r in api.reviews if r[0] == "access")
                assert spec["user"] == "system:serviceaccount:a:client" and spec["uid"] == "u-a"
                assert spec["groups"] == ["system:serviceaccounts"] and spec["extra"] == {
                    "authentication.kubernetes.io/pod-name": ["client-a"]}
                assert spec["resourceAttributes"] == {"namespace": "a", "name": "iris", "verb": "create",
                                                      "group": "kiln.dev", "resource": "deployments",
                                                      "subresource": "predict"}
                # A's token on B's model, B's metadata and health, and on a name B does not even have: one answer
                for path in ("/b/iris/v2/models/iris/infer", "/b/iris/v2/models/iris", "/b/iris/v2/health/ready",
                             "/b/iris/metrics", "/b/not-there/v2/models/x"):
                    status, _, body = await call(gw, "GET", path, token="tok-a")
                    error = json.loads(body)["error"]
                    assert status == 403 and 'namespace "b"' in error and "system:serviceaccount:a:client" in error
                    assert "deployments/predict" in error
                # a ServiceAccount bound to nothing
                status, _, body = await call(gw, "POST", infer, b"{}", token="tok-nobody")
                assert status == 403 and 'Kiln Deployment "iris" in namespace "a"' in json.loads(body)["error"]
                # inside its own namespace, a tenant learns what exists
                status, _, body = await call(gw, "GET", "/a/not-there/x", token="tok-a")
                assert status == 404 and "not-there" in json.loads(body)["error"]
                assert not gw.auth.inflight

    run(scenario())


def test_answers_are_remembered_refusals_briefly_and_never_past_the_ttl():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            tenants(api)
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port, auth_ttl=0.3,
                                                                      auth_negative_ttl=0.3) as gw:
                for _ in range(5):
                    assert (await call(gw, "GET", "/a/iris/x", token="tok-a"))[0] == 200
                    assert (await call(gw, "GET", "/b/iris/x", token="tok-a"))[0] == 403
                    assert (await call(gw, "GET", "/a/iris/x", token="garbage"))[0] == 401
                    assert (await call(gw, "GET", "/b/iris/x", token="garbage"))[0] == 401
                # one TokenReview per token, one SubjectAccessReview per token and Deployment
                assert api.counted("token") == 2 and api.counted("access") == 2
                # tokens are kept as their sha256 only
                import hashlib

                keys = [*gw.auth.users._entries, *(k[0] for k in gw.auth.decisions._entries)]
                assert keys and all(k in {hashlib.sha256(b"tok-a").digest(), hashlib.sha256(b"garbage").digest()}
                                    for k in keys)
                await asyncio.sleep(0.35)  # both expire: asked again
                assert (await call(gw, "GET", "/a/iris/x", token="tok-a"))[0] == 200
                assert (await call(gw, "GET", "/a/iris/x", token="garbage"))[0] == 401
                assert api.counted("token") == 4 and api.counted("access") == 3

    run(scenario())


def test_a_refused_request_never_waits_nor_wakes_a_deployment_scaled_to_zero():
    async def scenario():
        async with FakeApi() as api:
            tenants(api)
            api.emit("deployments", "ADDED", kdep("cold", ns="b"))  # no pod: scaled to zero
            async with gateway(api, wake_url=api.url, wait_seconds=0.3) as gw:
                for token, status in ((None, 401), ("garbage", 401), ("tok-a", 403), ("tok-nobody", 403)):
                    t0 = asyncio.get_running_loop().time()
                    assert (await call(gw, "POST", "/b/cold/v2/models/m/infer", b"{}", token=token))[0] == status
                    assert asyncio.get_running_loop().time() - t0 < 0.25  # at once, not after the wait
                assert api.wakes == [] and gw.waiters.total == 0 and gw.waiters.holds() == 0
                # B's own client is let through to wait, and wakes it
                status, _, _ = await call(gw, "POST", "/b/cold/v2/models/m/infer", b"{}", token="tok-b")
                assert status == 503 and api.wakes == ["b/cold"]

    run(scenario())


def test_concurrent_requests_with_a_new_token_share_one_review_and_review_floods_are_bounded():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            tenants(api)
            api.review_delay = 0.3
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port,
                                                                      auth_max_pending=2) as gw:
                answers = await asyncio.gather(*(call(gw, "GET", "/a/iris/x", token="tok-a") for _ in range(20)))
                assert [a[0] for a in answers] == [200] * 20
                assert api.counted("token") == 1 and api.counted("access") == 1
                # more distinct reviews than may wait: the rest are told to come back, at once
                fresh = [f"new-{i}" for i in range(4)]
                answers = await asyncio.gather(*(call(gw, "GET", "/a/iris/x", token=t) for t in fresh))
                codes = sorted(a[0] for a in answers)
                assert codes == [401, 401, 503, 503], answers
                refused = next(a for a in answers if a[0] == 503)
                assert refused[1]["Retry-After"] == "1" and "too many" in json.loads(refused[2])["error"]
                assert not gw.auth.inflight

    run(scenario())


def test_an_api_server_that_cannot_answer_gives_503_and_nothing_is_remembered():
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            tenants(api)
            api.review_status = 500
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port) as gw:
                status, hdrs, body = await call(gw, "GET", "/a/iris/x", token="tok-a")
                assert status == 503 and hdrs["Retry-After"] == "1" and "API server" in json.loads(body)["error"]
                api.review_status = 201
                assert (await call(gw, "GET", "/a/iris/x", token="tok-a"))[0] == 200

    run(scenario())


def test_a_client_that_leaves_during_its_review_leaves_nothing_behind():
    async def scenario():
        async with FakeApi() as api:
            tenants(api)
            api.review_delay = 0.3
            async with gateway(api, wait_seconds=30) as gw:
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(b"GET /b/iris/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer tok-a\r\n\r\n")
                await eventually(lambda: gw.auth.inflight, what="a review in flight")
                writer.close()
                # the review runs to its end for whoever asks next, then nothing of the request is left
                await eventually(lambda: not gw.auth.inflight, what="the review to end")
                assert gw.waiters.total == 0 and gw.waiters.holds() == 0
                api.review_delay = 0
                assert (await call(gw, "GET", "/b/iris/x", token="tok-a"))[0] == 403
                assert api.counted("access") == 1  # the answer of the abandoned review was kept

    run(scenario())


ODD_PATHS = [
    b"/a%2Fb/iris/x", b"/%2F/iris/x", b"/ml%2firis/x/y", b"/ml/iris%2F..%2Fother/x", b"/%2e%2e/iris/x",
    b"/../iris/x", b"/./iris/x", b"/ml/../x", b"/ml/./x", b"//", b"///", b"//iris", b"/ml//x", b"/ml/iris//x",
    b"/%00/x", b"/ml/iris%00/x", b"/ml%00/iris/x", "/café/iris/x".encode(), "/ml/ïris/x".encode(),
    b"/ml/\xff\xfe/x", b"/\xc0\xaf/x", b"/ml?x=1", b"/?a=b", b"/ml/iris?%2F", b"/ml/iris#frag", b"/ml/iris/%",
    b"/ml/iris/%zz", b"/ML/IRIS/x", b"/-/-/x", b"/" + b"a" * 64 + b"/x/y", b"/metrics", b"/metrics/x",
    b"/healthz", b"/readyz", b"/ml/" + b"a" * 300 + b"/x", b"/ml/iris/" + b"%2F" * 1000, b"*",
    b"http://evil/ml/iris/x", b"/ml;x/iris/y", b"/ml/iris;v=1/x", b"/ml/iris..x/y", b"/ml/.iris/y",
]


def random_paths(n: int, seed: int = 11) -> list[bytes]:
    import random

    rng = random.Random(seed)
    pieces = [b"ml", b"iris", b"", b".", b"..", b"%2F", b"%2f", b"%2e", b"%00", b"%", b"-", b"a.b", "é".encode(),
              b"\xff", b"?", b";", b"~", b"A", b"0", b"%25", b"//"]
    return [b"/" + b"/".join(rng.choice(pieces) + rng.choice(pieces) for _ in range(rng.randint(0, 5)))
            for _ in range(n)]


@pytest.mark.parametrize("path", ODD_PATHS + random_paths(150))
def test_split_never_fails_on_odd_paths(path):
    route = routing.split(path)
    if route is not None:
        namespace, name, rest = route
        assert isinstance(namespace, str) and isinstance(name, str) and rest.startswith(b"/")
        routing.valid(namespace, name)  # answers, never raises


@pytest.mark.parametrize("auth", ["kubernetes", "none"])
def test_odd_paths_never_get_a_5xx_and_invalid_names_cost_no_review(auth):
    async def scenario():
        async with FakeApi() as api:
            s = settings()
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
            async with FakePod("127.0.0.2", s.pod_port, "a"), gateway(api, pod_port=s.pod_port, auth=auth) as gw:
                status, _, body = await call(gw, "GET", "/a%2Fb/iris/v2/models/iris/infer")
                assert status == 404 and "/<namespace>/<deployment>/<path>" in json.loads(body)["error"]
                assert api.reviews == []  # refused before any review
                for path in ODD_PATHS + random_paths(150):
                    status, _, body = await call(gw, "GET", path)
                    assert 200 <= status < 500, (path, status, body[:200])
                    if path.startswith(b"/metrics"):
                        assert b"kiln_gateway" not in body  # the gateway's metrics live on the admin port only

    run(scenario())


def test_auth_none_lets_everyone_through_and_forwards_their_headers(monkeypatch):
    async def scenario():
        async with FakeApi() as api:
            s = settings(auth="none")
            api.emit("deployments", "ADDED", kdep("iris"))
            api.emit("pods", "ADDED", pod("a", ip="127.0.0.2"))
            async with FakePod("127.0.0.2", s.pod_port, "a") as a, gateway(api, pod_port=s.pod_port,
                                                                           auth="none") as gw:
                assert (await call(gw, "GET", "/ml/iris/x", token=None))[0] == 200
                assert (await call(gw, "GET", "/ml/iris/x", token="for-the-model"))[0] == 200
                assert a.requests[-1][2]["Authorization"] == "Bearer for-the-model" and api.reviews == []
                assert gw.auth is None

    run(scenario())
    from kiln_operator.gateway import config

    monkeypatch.delenv("KILN_GATEWAY_AUTH", raising=False)
    assert config.load().auth == "kubernetes"  # on unless turned off
    monkeypatch.setenv("KILN_GATEWAY_AUTH", "None")
    assert config.load().auth == "none"
    monkeypatch.setenv("KILN_GATEWAY_AUTH", "off")  # a typo stops the gateway instead of opening it
    with pytest.raises(ValueError, match="KILN_GATEWAY_AUTH"):
        config.load()


def test_a_request_without_a_credential_is_refused_on_its_head_before_its_body_is_read():
    """The head announces a body that never comes whole: the 401 must not wait for it (nor for body_timeout)."""
    async def scenario():
        async with FakeApi() as api:
            api.emit("deployments", "ADDED", kdep("iris"))
            async with gateway(api, body_timeout=30, max_body=1 << 20) as gw:
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(b"POST /ml/iris/v2/models/iris/infer HTTP/1.1\r\nHost: gw\r\n"
                             b"Content-Length: 4096\r\n\r\n" + b"x" * 1024)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                writer.close()
                assert head.startswith(b"HTTP/1.1 401") and b'WWW-Authenticate: Bearer realm="kiln-gateway"' in head
                assert api.reviews == []

    run(scenario())
