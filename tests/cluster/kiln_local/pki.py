"""Certificates and keys for the local control plane, made once with openssl."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kiln_local.paths import STATE

PKI = STATE / "pki"
APISERVER_SANS = ",".join([
    "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
    "IP:127.0.0.1", "IP:10.0.0.1",
    # a second instance's API address and `kubernetes` Service address (kiln_local.realnode)
    *filter(None, os.environ.get("KILN_APISERVER_EXTRA_SANS", "").split(",")),
])


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _cert(name: str, subject: str, sans: str | None = None) -> None:
    key, csr, crt = (PKI / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    if crt.exists():
        return
    _run("genrsa", "-out", str(key), "2048")
    _run("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext = PKI / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
             "extendedKeyUsage=serverAuth,clientAuth"]
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    _run("x509", "-req", "-in", str(csr), "-CA", str(PKI / "ca.crt"), "-CAkey", str(PKI / "ca.key"),
         "-CAcreateserial", "-out", str(crt), "-days", "3650", "-extfile", str(ext))


def ensure() -> Path:
    PKI.mkdir(parents=True, exist_ok=True)
    if not (PKI / "ca.crt").exists():
        _run("genrsa", "-out", str(PKI / "ca.key"), "2048")
        _run("req", "-x509", "-new", "-nodes", "-key", str(PKI / "ca.key"), "-subj", "/CN=kiln-local-ca",
             "-days", "3650", "-out", str(PKI / "ca.crt"))
    _cert("apiserver", "/CN=kube-apiserver", APISERVER_SANS)
    _cert("admin", "/O=system:masters/CN=kiln-admin")
    if not (PKI / "sa.key").exists():
        _run("genrsa", "-out", str(PKI / "sa.key"), "2048")
        _run("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))
    return PKI
