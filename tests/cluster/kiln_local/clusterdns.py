"""The real node's cluster DNS: `<service>.<namespace>.svc.cluster.local` → the Service's ClusterIP, nothing else.

`python -m kiln_local.clusterdns ADDRESS` answers UDP queries on ADDRESS:53 (the bridge's address, never 0.0.0.0)
from a watch of the cluster's Services, as CoreDNS's kubernetes plugin would for ClusterIP Services. Every other
name is NXDOMAIN: pods' lookups never leave the machine (the kubelet's resolvConf names only this server).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

DOMAIN = "cluster.local"
services: dict[tuple[str, str], str] = {}  # (name, namespace) -> cluster IP


def _watch(kubeconfig: str) -> None:
    from kubernetes import client, config, watch

    while True:
        try:
            api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
            listed = api.list_service_for_all_namespaces()
            services.clear()
            for s in listed.items:
                _record("ADDED", s)
            for event in watch.Watch().stream(api.list_service_for_all_namespaces,
                                              resource_version=listed.metadata.resource_version, timeout_seconds=300):
                _record(event["type"], event["object"])
        except Exception as exc:  # noqa: BLE001 - the API server restarting: list again
            print(f"clusterdns: watch: {exc}", file=sys.stderr, flush=True)
            time.sleep(1)


def _record(kind: str, svc) -> None:
    key = (svc.metadata.name, svc.metadata.namespace)
    ip = svc.spec.cluster_ip
    if kind == "DELETED" or not ip or ip == "None":
        services.pop(key, None)
    else:
        services[key] = ip


def lookup(name: str) -> str | None | bool:
    """The A record of name: an IP, True (the name exists, no IPv4 address), or None (NXDOMAIN)."""
    labels = name.lower().rstrip(".").split(".")
    suffix = ["svc", *DOMAIN.split(".")]
    if labels[-len(suffix):] != suffix or len(labels) != len(suffix) + 2:
        return None
    return services.get((labels[0], labels[1]))


def _qname(packet: bytes, pos: int) -> tuple[str, int]:
    labels = []
    while packet[pos]:
        n = packet[pos]
        labels.append(packet[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += n + 1
    return ".".join(labels), pos + 1


def answer(packet: bytes) -> bytes | None:
    if len(packet) < 12:
        return None
    ident, flags, qd = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000 or qd != 1:
        return None
    name, end = _qname(packet, 12)
    qtype, qclass = struct.unpack("!HH", packet[end:end + 4])
    question = packet[12:end + 4]
    found = lookup(name)
    rd = flags & 0x0100
    if found is None:
        return struct.pack("!HHHHHH", ident, 0x8400 | rd | 3, 1, 0, 0, 0) + question  # NXDOMAIN, authoritative
    if qtype == 1 and isinstance(found, str):
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(found)
        return struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 1, 0, 0) + question + rr
    return struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 0, 0, 0) + question  # the name, no such record


def serve(address: str, kubeconfig: str) -> None:
    threading.Thread(target=_watch, args=(kubeconfig,), daemon=True).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            reply = answer(packet)
        except Exception:  # noqa: BLE001 - a malformed query gets no answer
            reply = None
        if reply:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
