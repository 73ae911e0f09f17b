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


def delete_and_wait(custom, ns: str, plural: str, name: str, timeout: float, what: str) -> None:
    """Delete a Kiln object and wait until the API server no longer has it (finalizers done)."""
    from kubernetes.client import ApiException

    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, plural, name)

    def gone():
        try:
            get(custom, ns, plural, name)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, timeout, what)


def model_versions(custom, ns: str, name: str, bucket: str) -> dict[int, dict]:
    """Every version of a Model in the namespace's default storage: its status entries and those it moved
    to the history index (<storage>/<model>/index/), status winning where both hold one."""
    import json

    from kiln_contract import storage

    s3 = storage.s3_client()
    loc = storage.parse_s3(f"s3://{bucket}/models/{ns}/{name}/index/")
    found: dict[int, dict] = {}
    for obj in s3.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key).get("Contents", []):
        body = json.loads(s3.get_object(Bucket=loc.bucket, Key=obj["Key"])["Body"].read())
        found.update({v["version"]: v for v in body["versions"]})
    status = get(custom, ns, "models", name).get("status") or {}
    found.update({v["version"]: v for v in status.get("versions") or []})
    return found
