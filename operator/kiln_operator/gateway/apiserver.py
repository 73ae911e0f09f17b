"""Credentials and the HTTP session for the API server: the pod's ServiceAccount, else the kubeconfig."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from kiln_operator import kube


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext
    token_file: Path | None = None
    authorization: str | None = None

    def headers(self) -> dict[str, str]:
        # Projected ServiceAccount tokens are rotated by the kubelet: read the file for every request (a
        # watch reconnect, a list), never once at start.
        if self.token_file is not None:
            return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}
        return {"Authorization": self.authorization} if self.authorization else {}


def from_environment() -> Credentials:
    sa = kube.service_account_dir()
    if sa is not None:
        return Credentials(kube.server_url(), ssl.create_default_context(cafile=str(sa / "ca.crt")),
                           token_file=sa / "token")
    return _from_kubeconfig()


def _from_kubeconfig() -> Credentials:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg)
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    if not cfg.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Credentials(cfg.host.rstrip("/"), context, authorization=(cfg.api_key or {}).get("authorization"))


def session(credentials: Credentials, watch_timeout: int) -> aiohttp.ClientSession:
    """One session for every list and watch. A watch may sit quiet for its whole timeoutSeconds; a read
    silent for longer than that means a dead connection."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=credentials.ssl_context, limit=32),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=watch_timeout + 30),
        raise_for_status=False,
    )
