"""The observed world, fed by watch events: which Kiln Deployments exist and which of their pods are ready.

Only what routing needs is kept (a key and an IP per pod), never whole objects. Lookups are dictionary reads:
a prediction asks the API server nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kiln_operator.pods import is_ready

DEPLOYMENT_LABEL = "kiln.dev/deployment"
Key = tuple[str, str]  # (namespace, Kiln Deployment name)


def pod_route(pod: dict) -> tuple[str, Key | None, str | None]:
    """(pod identity, the Deployment it serves or None, its IP when ready else None)."""
    meta = pod.get("metadata") or {}
    ident = f"{meta.get('namespace')}/{meta.get('name')}"
    name = (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
    if not name:
        return ident, None, None
    return ident, (meta.get("namespace"), name), pod["status"]["podIP"] if is_ready(pod) else None


def _key_of(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace"), meta.get("name")


class Endpoints:
    """Kiln Deployments and ready pod IPs per Deployment; calls on_change(key) when a key's routing changes
    (ready IPs gained or lost, or the Deployment deleted) and on_gone(ip) when no pod has that IP any more."""

    def __init__(self, on_change: Callable[[Key], None] | None = None,
                 on_gone: Callable[[str], None] | None = None):
        self.on_change = on_change or (lambda key: None)
        self.on_gone = on_gone or (lambda ip: None)
        self._deployments: set[Key] = set()
        self._pods: dict[str, tuple[Key, str | None]] = {}
        self._members: dict[Key, dict[str, str | None]] = {}
        self._ready: dict[Key, list[str]] = {}
        self._next: dict[Key, int] = {}

    # -- reads (the request path) ----------------------------------------------------------------
    def exists(self, key: Key) -> bool:
        return key in self._deployments

    def ready(self, key: Key) -> list[str]:
        return list(self._ready.get(key, ()))

    def has_ready(self, key: Key) -> bool:
        return key in self._ready

    def count(self) -> int:
        return len(self._deployments)

    def ready_count(self) -> int:
        return sum(len(ips) for ips in self._ready.values())

    def pick(self, key: Key, exclude: set[str] | None = None) -> str | None:
        """The next ready IP of key in round robin, skipping exclude; None when there is none."""
        ips = self._ready.get(key)
        if not ips:
            return None
        n = self._next.get(key, 0)
        self._next[key] = n + 1
        if not exclude:
            return ips[n % len(ips)]
        for i in range(len(ips)):
            ip = ips[(n + i) % len(ips)]
            if ip not in exclude:
                return ip
        return None

    # -- Kiln Deployments --------------------------------------------------------------------------
    def deployment_event(self, kind: str, obj: dict) -> None:
        key = _key_of(obj)
        if kind == "DELETED":
            if key in self._deployments:
                self._deployments.discard(key)
                self.on_change(key)  # waiting requests learn at once that it is gone
        else:
            self._deployments.add(key)

    def reset_deployments(self, objs: Iterable[dict], namespace: str | None = None) -> None:
        """A fresh list replaces what was known (in namespace, or everywhere when None)."""
        fresh = {_key_of(o) for o in objs}
        stale = {k for k in self._deployments if namespace is None or k[0] == namespace}
        self._deployments -= stale - fresh
        self._deployments |= fresh
        for key in stale - fresh:
            self.on_change(key)

    # -- pods -------------------------------------------------------------------------------------------
    def pod_event(self, kind: str, pod: dict) -> None:
        ident, key, ip = pod_route(pod)
        if kind == "DELETED" or key is None:
            touched = self._drop(ident)
        else:
            touched = self._drop(ident) | self._put(ident, key, ip)
        self._refresh(touched)

    def reset_pods(self, pods: Iterable[dict], namespace: str | None = None) -> None:
        touched: set[Key] = set()
        for ident in [i for i in self._pods if namespace is None or i.startswith(namespace + "/")]:
            touched |= self._drop(ident)
        for pod in pods:
            ident, key, ip = pod_route(pod)
            if key is not None:
                touched |= self._put(ident, key, ip)
        self._refresh(touched)

    def _drop(self, ident: str) -> set[Key]:
        old = self._pods.pop(ident, None)
        if old is None:
            return set()
        key = old[0]
        members = self._members[key]
        members.pop(ident, None)
        if not members:
            del self._members[key]
        return {key}

    def _put(self, ident: str, key: Key, ip: str | None) -> set[Key]:
        self._pods[ident] = (key, ip)
        self._members.setdefault(key, {})[ident] = ip
        return {key}

    def _refresh(self, keys: set[Key]) -> None:
        gone: set[str] = set()
        for key in keys:
            before = self._ready.get(key, [])
            after = sorted({ip for ip in self._members.get(key, {}).values() if ip})
            if after == before:
                continue
            if after:
                self._ready[key] = after
            else:
                self._ready.pop(key, None)
                self._next.pop(key, None)
            gone |= set(before) - set(after)
            self.on_change(key)
        if gone:
            live = {ip for _, ip in self._pods.values() if ip}
            for ip in gone - live:
                self.on_gone(ip)
