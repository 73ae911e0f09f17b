"""server-image/Dockerfile: what the node simulator and the restricted Pod Security profile rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "server-image" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_entrypoint_is_a_json_array_running_the_package():
    entry = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["python", "-m", "kiln_server"]


def test_runs_as_non_root_from_a_slim_python_311():
    ins = instructions()
    # FROM ${BASE}, whose default is python:3.11-slim (the real-node tests pass a Debian base of their own); the
    # build stage before it (a compiler, on BUILD_BASE) is not shipped
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE=python:3.11-slim")
    assert [rest for word, rest in ins if word == "FROM"] == ["${BUILD_BASE} AS build", "${BASE}"]
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert [w for w, _ in ins].index("USER") > max(i for i, (w, _) in enumerate(ins) if w == "RUN")


def test_writes_only_under_tmp_and_installs_the_server_extra():
    env = " ".join(rest for word, rest in instructions() if word == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "TMPDIR=/tmp", "KILN_CACHE_DIR=/tmp/",
                    "ORT_DISABLE_TELEMETRY=1"):
        assert setting in env
    runs = [rest for word, rest in instructions() if word == "RUN"]
    # the build stage makes the project's wheel (with the compiled record store); the image installs it with the
    # server extra and checks that the extension imports (it is optional in setup.py: the other images lack gcc)
    assert "pip wheel --no-deps -w /dist ." in runs[0]
    assert 'pip install "${wheel}[server]"' in runs[-1] and "kiln_server._payload_chunks" in runs[-1]
    assert ("COPY", "--from=build /dist/ /tmp/dist/") in instructions()
