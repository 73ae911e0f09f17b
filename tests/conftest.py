"""Fixtures shared by every test directory."""

import os

import pytest


@pytest.fixture(scope="session")
def s3_env():
    """SeaweedFS on loopback (started once, or reused) with its credentials in os.environ."""
    from kiln_local import s3

    env = s3.up()
    os.environ.update(env)
    return env


@pytest.fixture
def s3_prefix(s3_env, request):
    """A fresh s3:// prefix in the default bucket for one test."""
    import uuid

    return f"s3://{s3_env['KILN_BUCKET']}/tests/{request.node.name}-{uuid.uuid4().hex[:8]}"
