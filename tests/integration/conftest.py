"""The local cluster, brought up once per test session (or reused when `make cluster-up` already did)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def cluster():
    from kiln_local import cluster as local
    from kiln_local import procs
    from kiln_local.paths import KUBECONFIG

    started_here = procs.running("kube-apiserver") is None
    local.up()
    os.environ.update(local.environ())
    yield KUBECONFIG
    if started_here and not os.environ.get("KILN_KEEP_CLUSTER"):
        local.down()


@pytest.fixture(scope="session")
def kube(cluster):
    from kubernetes import client, config

    config.load_kube_config(str(cluster))
    return client.ApiClient()


@pytest.fixture(scope="session")
def core(kube):
    from kubernetes import client

    return client.CoreV1Api(kube)


@pytest.fixture(scope="session")
def custom(kube):
    from kubernetes import client

    return client.CustomObjectsApi(kube)


@pytest.fixture
def namespace(core):
    """A fresh namespace per test, deleted afterwards."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are admitted only once the controllers made the "default" ServiceAccount and its token.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(sa.metadata.name == "default" and sa.secrets for sa in core.list_namespaced_service_account(name).items):
            break
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)



@pytest.fixture
def kiln_ns(namespace, core):
    """A namespace ready for Kiln workloads: it holds the S3 credentials Secret the operator hands to pods."""
    from kiln_local.cluster import copy_s3_secrets

    copy_s3_secrets(core, namespace)
    return namespace
