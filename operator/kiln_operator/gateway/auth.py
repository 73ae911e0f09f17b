"""Who may send requests to /<namespace>/<deployment>/...: the API server decides, the gateway remembers.

A request carries `Authorization: Bearer <token>`. A TokenReview asks the API server whose token it is (a
ServiceAccount's projected token, an OIDC user's ID token: whatever the cluster's authenticators accept); a
SubjectAccessReview whether that user may `create` the subresource `deployments/predict` of group kiln.dev, named
<deployment>, in <namespace>. RBAC is therefore the tenancy model: a RoleBinding to the `<release>-predictor`
ClusterRole in a namespace grants predictions on that namespace's models, and no read of their specs.

Both answers are cached under the token's sha256, never the token itself. A request whose answer is cached costs
a hash and a dict lookup and no API call. Allowed answers last `ttl` seconds (never past the token's own `exp`),
refusals `negative_ttl` seconds, in LRU maps of bounded size. Every request that needs the same review shares the
one in flight; at most `concurrency` reviews run at once and at most `max_pending` distinct ones exist: a flood
of fresh tokens meets 503, not an unbounded queue in front of the API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import aiohttp

from kiln_operator.gateway import metrics
from kiln_operator.gateway.apiserver import Credentials
from kiln_operator.gateway.proxy import Refusal
from kiln_operator.gateway.server import Headers

log = logging.getLogger("kiln.gateway.auth")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# The permission a prediction needs. A subresource of its own, so that the right to predict is not the right
# to read a Deployment's spec (get deployments.kiln.dev) and no built-in role grants it by accident.
GROUP, RESOURCE, SUBRESOURCE, VERB = "kiln.dev", "deployments", "predict", "create"
MAX_TOKEN = 16 * 1024  # OIDC ID tokens with many groups run to a few KiB; nothing real is larger
REVIEW_TIMEOUT = 5.0
RETRY_AFTER = 1
WARN_EVERY = 10.0  # seconds between two warnings about an API server that cannot be asked

_TOKEN = re.compile(rb"[!-~]+")  # visible ASCII: what RFC 6750's b64token and JWTs are made of
_MISS = object()
_CHALLENGE = [(b"WWW-Authenticate", b'Bearer realm="kiln-gateway"')]
_INVALID = [(b"WWW-Authenticate", b'Bearer realm="kiln-gateway", error="invalid_token"')]


def bearer(headers: Headers) -> bytes:
    """The token of the request's one `Authorization: Bearer <token>` header; refuses (401/400) anything else."""
    found = None
    for name, value in headers:
        if len(name) == 13 and name.lower() == b"authorization":
            if found is not None:  # two credentials: which one a proxy in front acted on is unknowable
                raise Refusal(400, "more than one Authorization header")
            found = value
    if found is None:
        raise Refusal(401, "a bearer token is required: Authorization: Bearer <token> (for a ServiceAccount: "
                           "kubectl create token <serviceaccount>)", headers=_CHALLENGE)
    scheme, _, token = found.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise Refusal(401, 'the Authorization header must be "Bearer <token>"', headers=_CHALLENGE)
    return token


def well_formed(token: bytes) -> None:
    """Refuses what cannot be a token before the API server is asked about it (only then: a token whose answer is
    cached has passed this already)."""
    if len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token):
        raise Refusal(401, "the bearer token is not a token", headers=_INVALID)


def seconds_left(token: bytes) -> float:
    """Seconds until a JWT's `exp` (ServiceAccount and OIDC tokens are JWTs); infinite for other tokens.

    Read, not verified: the API server has just verified the token, this only keeps its answer from being
    remembered for longer than the token lives.
    """
    parts = token.split(b".")
    if len(parts) != 3:
        return math.inf
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
        return float(claims["exp"]) - time.time()
    except (ValueError, KeyError, TypeError):
        return math.inf


class Cache:
    """An LRU map whose entries expire: key -> value until a monotonic time."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()

    def get(self, key: Hashable, now: float) -> object:
        entry = self._entries.get(key)
        if entry is None:
            return _MISS
        if now >= entry[0]:
            del self._entries[key]
            return _MISS
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, value: object, expires: float) -> None:
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class User:
    """Who a token belongs to, as the TokenReview said, and until when that answer may be used (monotonic)."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)
    expires: float = math.inf


class Authorizer:
    bearer = staticmethod(bearer)

    def __init__(self, credentials: Credentials, ttl: float = 60.0, negative_ttl: float = 10.0, size: int = 10_000,
                 concurrency: int = 8, max_pending: int = 256, audiences: tuple[str, ...] = ()):
        self.credentials = credentials
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_pending = max_pending
        self.audiences = audiences
        self.users = Cache(size)  # sha256(token) -> User, or None: not a token the API server accepts
        self.decisions = Cache(size)  # (sha256(token), namespace, name) -> True, or the refused user's name
        self.inflight: dict[Hashable, asyncio.Task] = {}
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warned = -math.inf

    # -- the request path ----------------------------------------------------------------------------------------
    def cached(self, token_digest: bytes, namespace: str, name: str) -> bool:
        """True when an allowed answer is remembered; raises a remembered refusal; False: ask with verify()."""
        verdict = self.decisions.get((token_digest, namespace, name), time.monotonic())
        if verdict is True:
            return True
        if verdict is _MISS:
            return False
        raise self._forbidden(verdict, namespace, name)

    async def verify(self, token: bytes, token_digest: bytes, namespace: str, name: str) -> None:
        """Ask the API server (or join a review in flight); return when allowed, else raise 401, 403 or 503."""
        user = self.users.get(token_digest, time.monotonic())
        if user is _MISS:
            well_formed(token)
            user = await self._shared(token_digest, lambda: self._token_review(token, token_digest))
        if user is None:
            raise Refusal(401, "the bearer token was not accepted by the API server (expired, revoked, or meant "
                               "for another audience)", headers=_INVALID)
        key = (token_digest, namespace, name)
        if not await self._shared(key, lambda: self._access_review(user, key)):
            raise self._forbidden(user.name, namespace, name)

    @staticmethod
    def _forbidden(user: str, namespace: str, name: str) -> Refusal:
        return Refusal(403, f'"{user}" may not send requests to Kiln Deployment "{name}" in namespace "{namespace}": '
                            f'it needs "{VERB}" on "{RESOURCE}/{SUBRESOURCE}" ({GROUP}) there, e.g. a RoleBinding to '
                            f"the <release>-predictor ClusterRole")

    async def _shared(self, key: Hashable, review: Callable[[], Awaitable]):
        """One review per key at a time, shared by every request that needs it. The review runs as a task of
        its own and its result is cached by it, so a client that goes away neither cancels it for the others nor
        wastes it."""
        task = self.inflight.get(key)
        if task is None:
            if len(self.inflight) >= self.max_pending:
                raise Refusal(503, "too many tokens are being verified at once; try again", RETRY_AFTER)
            task = asyncio.get_running_loop().create_task(review())
            self.inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))
        return await asyncio.shield(task)

    def _done(self, key: Hashable, task: asyncio.Task) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a review whose clients all left must not log "never retrieved"

    # -- the reviews --------------------------------------------------------------------------------------------
    async def _token_review(self, token: bytes, token_digest: bytes) -> User | None:
        spec: dict = {"token": token.decode("ascii")}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        status = await self._review(TOKEN_REVIEWS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                                    "spec": spec}, "token")
        now = time.monotonic()
        found = status.get("user") or {}
        # An audience-unaware authenticator may ignore spec.audiences: only an answer naming one of ours counts.
        audience_ok = not self.audiences or bool(set(status.get("audiences") or ()) & set(self.audiences))
        if not (status.get("authenticated") is True and found.get("username") and audience_ok):
            metrics.AUTH_REVIEWS.labels("token", "denied").inc()
            self.users.put(token_digest, None, now + self.negative_ttl)
            return None
        metrics.AUTH_REVIEWS.labels("token", "allowed").inc()
        ttl = min(self.ttl, seconds_left(token))
        user = User(found["username"], found.get("uid") or "", tuple(found.get("groups") or ()),
                    dict(found.get("extra") or {}), now + ttl)
        if ttl > 0:
            self.users.put(token_digest, user, user.expires)
        return user

    async def _access_review(self, user: User, key: tuple[bytes, str, str]) -> bool:
        _, namespace, name = key
        spec: dict = {"user": user.name, "groups": list(user.groups), "resourceAttributes": {
            "namespace": namespace, "verb": VERB, "group": GROUP, "resource": RESOURCE, "subresource": SUBRESOURCE,
            "name": name}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = user.extra
        status = await self._review(ACCESS_REVIEWS, {"apiVersion": "authorization.k8s.io/v1",
                                                     "kind": "SubjectAccessReview", "spec": spec}, "access")
        allowed = status.get("allowed") is True and not status.get("denied")
        metrics.AUTH_REVIEWS.labels("access", "allowed" if allowed else "denied").inc()
        now = time.monotonic()
        if allowed:
            self.decisions.put(key, True, min(now + self.ttl, user.expires))
        else:
            self.decisions.put(key, user.name, now + self.negative_ttl)
        return allowed

    async def _review(self, path: str, body: dict, kind: str) -> dict:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        async with self._slots:
            try:
                async with self._client().post(self.credentials.server + path, json=body,
                                               headers=self.credentials.headers()) as resp:
                    if resp.status not in (200, 201):
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                          message=(await resp.text())[:300])
                    answer = await resp.json(content_type=None)
                    if not isinstance(answer, dict):
                        raise ValueError(f"not a {body['kind']}: {str(answer)[:100]}")
                    return answer.get("status") or {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                metrics.AUTH_REVIEWS.labels(kind, "error").inc()
                self._warn(f"{kind} review failed: {type(exc).__name__}: {exc}")
                raise Refusal(503, "the gateway could not have the request's token checked by the API server; "
                                   "try again", RETRY_AFTER) from None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.credentials.ssl_context, limit=self._concurrency),
                timeout=aiohttp.ClientTimeout(total=REVIEW_TIMEOUT), raise_for_status=False)
        return self._session

    def _warn(self, message: str) -> None:
        # An API server outage fails every review: one line per WARN_EVERY seconds says it as well as thousands.
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("%s (requests needing a review get 503 until the API server answers)", message)

    async def close(self) -> None:
        for task in list(self.inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
