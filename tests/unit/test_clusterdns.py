"""The real node's cluster DNS (kiln_local.clusterdns): Service names only, everything else NXDOMAIN."""

from __future__ import annotations

import struct

from kiln_local import clusterdns


def query(name: str, qtype: int = 1, ident: int = 7) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def test_a_service_name_resolves_to_its_cluster_ip(monkeypatch):
    monkeypatch.setattr(clusterdns, "services", {("kiln-operator", "kiln-system"): "198.19.0.12"})
    reply = clusterdns.answer(query("kiln-operator.kiln-system.svc.cluster.local"))
    ident, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (ident, flags & 0xF, qd, an) == (7, 0, 1, 1)
    assert reply[-4:] == bytes([198, 19, 0, 12])
    # AAAA of the same name: it exists, no record
    reply = clusterdns.answer(query("kiln-operator.kiln-system.svc.cluster.local", qtype=28))
    assert struct.unpack("!HH", reply[2:4] + reply[6:8]) == (0x8500, 0)


def test_every_other_name_is_nxdomain(monkeypatch):
    monkeypatch.setattr(clusterdns, "services", {("a", "b"): "198.19.0.2"})
    for name in ("pypi.org", "a.b.svc", "a.b.svc.cluster.local.b.svc.cluster.local", "x.a.b.svc.cluster.local",
                 "c.b.svc.cluster.local"):
        reply = clusterdns.answer(query(name))
        assert struct.unpack("!H", reply[2:4])[0] & 0xF == 3, name
