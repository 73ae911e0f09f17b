"""charts/kiln/crds must be byte for byte the repository's crds/ (the single source of truth).

No Helm needed for the comparison itself, so this never skips; `python charts/sync_crds.py` fixes a failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from chart_scripts import load as load_chart_script

REPO = Path(__file__).resolve().parents[2]



sync_crds = load_chart_script("sync_crds")


def test_chart_crds_are_byte_for_byte_the_repository_crds():
    assert sync_crds.differences() == [], "charts/kiln/crds is stale: run `python charts/sync_crds.py`"
    assert sorted(p.name for p in (REPO / "charts" / "kiln" / "crds").iterdir()) == sorted(
        p.name for p in (REPO / "crds").glob("*.yaml"))


def test_helm_loads_exactly_those_files_as_the_chart_crds():
    import pytest

    pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[dev]')")
    crds = {c["filename"]: c["data"] for c in load_chart_script("render").crds()}
    assert crds == {f"kiln/crds/{p.name}": p.read_text() for p in sorted((REPO / "crds").glob("*.yaml"))}


def test_crd_check_fails_on_any_difference(tmp_path):
    source, target = tmp_path / "crds", tmp_path / "chart-crds"
    shutil.copytree(REPO / "crds", source)
    sync_crds.sync(source, target)
    assert sync_crds.differences(source, target) == []
    first = sorted(target.glob("*.yaml"))[0]
    first.write_bytes(first.read_bytes() + b" ")  # one trailing space
    (target / "old.yaml").write_text("stale")
    (source / "new.yaml").write_text("kind: CustomResourceDefinition\n")
    diff = sync_crds.differences(source, target)
    assert len(diff) == 3 and any(first.name in d for d in diff)
    assert sync_crds.main(["--check"]) == 0  # the real chart is in sync
    sync_crds.sync(source, target)
    assert sync_crds.differences(source, target) == [] and not (target / "old.yaml").exists()
