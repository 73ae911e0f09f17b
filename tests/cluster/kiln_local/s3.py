"""SeaweedFS as the embedded S3 store: `weed server -s3` on loopback, one default bucket,
credentials written to .kiln/s3.env for the operator, the tests and the demo."""

from __future__ import annotations

import json
import os
import secrets
import socket

from kiln_local import procs
from kiln_local.paths import S3_ENV, STATE, venv_bin

# Defaults are the shared simulator cluster's; a second instance (kiln_local.realnode) sets its own.
HOST = os.environ.get("KILN_S3_HOST", "127.0.0.1")
S3_PORT = int(os.environ.get("KILN_S3_PORT", "18333"))
MASTER_PORT = int(os.environ.get("KILN_WEED_MASTER_PORT", "19333"))
VOLUME_PORT = int(os.environ.get("KILN_WEED_VOLUME_PORT", "18080"))
FILER_PORT = int(os.environ.get("KILN_WEED_FILER_PORT", "18888"))
BUCKET = "kiln"
NAME = "seaweedfs"


def reader_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a read-only client: the reader's keys in place of the writer's."""
    out = {k: v for k, v in env.items() if k not in READER_KEYS}
    out.update({"AWS_ACCESS_KEY_ID": env[READER_KEYS[0]], "AWS_SECRET_ACCESS_KEY": env[READER_KEYS[1]]})
    return out


def read_env() -> dict[str, str]:
    if not S3_ENV.exists():
        return {}
    pairs = (line.split("=", 1) for line in S3_ENV.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


READER_KEYS = ("KILN_S3_READER_ACCESS_KEY_ID", "KILN_S3_READER_SECRET_ACCESS_KEY")


def _credentials() -> dict[str, str]:
    env = read_env()
    if env and all(k in env for k in READER_KEYS):
        return env
    if env:  # made before serving pods had read-only credentials: add them, keep the rest
        env.update({READER_KEYS[0]: "kiln-reader", READER_KEYS[1]: secrets.token_hex(16)})
        S3_ENV.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return env
    env = {
        "KILN_S3_ENDPOINT": f"http://{HOST}:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "kiln",
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        "AWS_REGION": "us-east-1",
        "KILN_BUCKET": BUCKET,
        # Serving pods' credentials: read and list only (the Secret kiln-s3-read).
        READER_KEYS[0]: "kiln-reader",
        READER_KEYS[1]: secrets.token_hex(16),
    }
    STATE.mkdir(parents=True, exist_ok=True)
    S3_ENV.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    S3_ENV.chmod(0o600)
    return env


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def up(timeout: float = 60) -> dict[str, str]:
    """Start SeaweedFS (or reuse the running one) and return the S3 environment."""
    env = _credentials()
    data = STATE / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    config = STATE / "s3-identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "kiln",
        "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }, {
        "name": "kiln-reader",
        "credentials": [{"accessKey": env[READER_KEYS[0]], "secretKey": env[READER_KEYS[1]]}],
        "actions": ["Read", "List"],
    }]}))
    procs.start(NAME, [
        venv_bin("weed"), "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={MASTER_PORT}", f"-volume.port={VOLUME_PORT}", f"-filer.port={FILER_PORT}",
        "-master.volumeSizeLimitMB=64", "-volume.max=32",
        "-s3", f"-s3.port={S3_PORT}", f"-s3.config={config}",
    ])
    procs.wait_for(lambda: _port_open(S3_PORT) and _bucket(env), "SeaweedFS S3", timeout, NAME)
    return env


def _bucket(env: dict[str, str]) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=env["KILN_S3_ENDPOINT"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if env["KILN_BUCKET"] not in names:
        client.create_bucket(Bucket=env["KILN_BUCKET"])
    # The S3 gateway answers before the volume server has registered with the master; until then
    # reads of stored objects fail. A write read back proves the data path is up.
    client.put_object(Bucket=env["KILN_BUCKET"], Key=".kiln-ready", Body=b"ok")
    return client.get_object(Bucket=env["KILN_BUCKET"], Key=".kiln-ready")["Body"].read() == b"ok"


def vacuum(threshold: float = 0.1) -> None:
    """Reclaim the space of deleted objects now. SeaweedFS frees a volume's deleted bytes only when it is vacuumed
    (by itself every 15 minutes); the local store holds 32 volumes of 64 MB, and a bench that writes and deletes
    hundreds of MB fills it well before then: later writes fail."""
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{MASTER_PORT}/vol/vacuum?garbageThreshold={threshold}", timeout=120):
        pass


def down() -> None:
    procs.stop(NAME, grace=5)  # weed server often ignores SIGTERM for good; its data is flushed by then
