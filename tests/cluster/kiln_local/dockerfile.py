"""What a Kiln image would run, read from its Dockerfile: ENTRYPOINT, CMD, ENV."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from kiln_local.paths import REPO

# Image repository name (last path component, tag dropped) → Dockerfile in this repo.
IMAGES = {
    "trainer": REPO / "trainer-image" / "Dockerfile",
    "kiln-trainer": REPO / "trainer-image" / "Dockerfile",
    "server": REPO / "server-image" / "Dockerfile",
    "kiln-server": REPO / "server-image" / "Dockerfile",
    "operator": REPO / "operator" / "Dockerfile",
    "kiln-operator": REPO / "operator" / "Dockerfile",
}


@dataclass
class ImageConfig:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def image_name(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def dockerfile_for(image: str) -> Path | None:
    """The Dockerfile behind a Kiln image reference such as ghcr.io/x/kiln-trainer:0.1, or None."""
    path = IMAGES.get(image_name(image))
    return path if path and path.exists() else None


def _logical_lines(text: str):
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


def parse(text: str) -> ImageConfig:
    """The final stage's ENTRYPOINT/CMD/ENV (a new FROM resets them, as in a multi-stage build)."""
    config = ImageConfig()
    for line in _logical_lines(text):
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            config = ImageConfig()
        elif instr == "ENTRYPOINT":
            config.entrypoint = _exec_form(rest)
            config.cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif instr == "CMD":
            config.cmd = _exec_form(rest)
        elif instr == "ENV":
            if "=" in rest.split(" ", 1)[0]:
                for pair in shlex.split(rest):
                    k, _, v = pair.partition("=")
                    config.env[k] = v
            else:
                k, _, v = rest.partition(" ")
                config.env[k] = v.strip()
    return config


def argv_for(config: ImageConfig, command: list[str] | None, args: list[str] | None) -> list[str]:
    """Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD); args replace CMD."""
    if command:
        return list(command) + list(args or [])
    return list(config.entrypoint) + list(args if args is not None and args != [] else config.cmd)
