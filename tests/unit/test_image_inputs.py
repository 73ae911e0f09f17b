"""The three Dockerfiles against pyproject.toml and the real node's image builder (kiln_local.images)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kiln_local import images

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {name: REPO / path for name, path in images.IMAGES.items()}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_package_setuptools_declares_is_in_the_build_context(name):
    """`pip install .` in the image fails ("package directory ... does not exist") unless every package of
    pyproject.toml's list has at least its __init__.py copied: found by the first real build (kiln_operator.gateway
    was missing from the trainer and server images)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = [p.relative_to(REPO) for p in images.copied(DOCKERFILES[name])]
    for package in tool["packages"]:
        top, *rest = package.split(".")
        init = Path(tool["package-dir"][top], *rest, "__init__.py")
        assert any(init == c or init.is_relative_to(c) for c in copied), f"{name}: {init} not COPYed"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_base_image_is_a_build_argument_defaulting_to_python_slim(name):
    lines = [line.strip() for line in DOCKERFILES[name].read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "ARG BASE=python:3.11-slim-bookworm"
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms[-1] == "FROM ${BASE}"  # the image's own stage; a build stage before it (the server's) is not shipped
    assert images.has_build_stage(name) == (len(froms) > 1)
    if len(froms) > 1:
        assert froms[0] == "FROM ${BUILD_BASE} AS build" and "ARG BUILD_BASE=python:3.11-bookworm" in lines


def test_the_server_extra_loads_every_algorithm_the_trainer_can_produce():
    """The sklearn runtime unpickles what the trainer fitted: the server image needs the trainer's model libraries
    (XGBoost included: a version whose ONNX export was withheld is served from its joblib pickle)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {r.split("==")[0].split(">")[0].split("<")[0].strip() for r in extras["server"]}
    assert {"scikit-learn", "xgboost", "onnxruntime", "joblib"} <= names


def test_an_image_hash_follows_its_copied_files_and_base(tmp_path):
    a = images.inputs_hash("server", "base:1", "build:1")
    assert a == images.inputs_hash("server", "base:1", "build:1")
    assert a != images.inputs_hash("server", "base:2", "build:1")
    assert a != images.inputs_hash("server", "base:1", "build:2")
    # what a build stage copies from another stage is not in the build context
    assert all(p.is_relative_to(REPO) for p in images.copied(DOCKERFILES["server"]))
    assert images.tag("server") == f"kiln/server:{images.version()}"


def test_the_operator_image_knows_its_user():
    """kopf calls getpass.getuser() at start (its peering identity): without a passwd entry for the image's USER and
    no $USER, that raises KeyError and the operator crash-loops (found on the real node)."""
    text = DOCKERFILES["operator"].read_text()
    user = next(line.split()[1] for line in text.splitlines() if line.startswith("USER "))
    uid, gid = user.split(":")
    assert f":x:{uid}:{gid}:" in text and "/etc/passwd" in text
    assert f":x:{gid}:" in text and "/etc/group" in text
