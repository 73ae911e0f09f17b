"""Helpers for tests against the local cluster: Kiln objects made and read, and polling."""

import time


def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    """Poll check() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


GROUP, VERSION = "kiln.dev", "v1alpha1"


def create(custom, ns: str, plural: str, kind: str, name: str, spec: dict) -> None:
    """Create a Kiln object (custom: a CustomObjectsApi)."""
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


def get(custom, ns: str, plural: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
