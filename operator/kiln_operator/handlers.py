"""kopf registrations only — the table of contents of the operator.

Watches fill the indexes (indexes.py); every event queues the key of the Kiln object it concerns
in the controller (controller.py), whose workers reconcile from those indexes.
"""

from __future__ import annotations

import logging

import kopf

from kiln_operator import deployment_builder, endpoints, indexes, kube, resources, settings
from kiln_operator import labels as kiln_labels
from kiln_operator.controller import Controller

CONFIG = settings.load()
MANAGED = indexes.MANAGED
SERVING = indexes.SERVING


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff base (a deep copy of the object) on every event for its on.create/update
    handlers; Kiln has none (every event only queues a key), so it keeps none."""

    def build(self, *, body, extra_fields=None):
        return {}

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence):
        return None


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs) -> None:
    # Watches that never time out hang silently on a half-dead connection.
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_server_timeout + 30
    settings.watching.connect_timeout = 10
    # kopf waits this long for more events of one object before handling the latest; ours only queue a key.
    settings.batching.batch_window = 0.01
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo.controller = Controller(CONFIG, {name: kwargs[name] for name in indexes.INDEX_NAMES})
    await memo.controller.start()
    memo.endpoints = await endpoints.serve(memo.controller, CONFIG.listen) if CONFIG.listen else None


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_) -> None:
    if getattr(memo, "endpoints", None):
        await memo.endpoints.cleanup()
    if getattr(memo, "controller", None):
        await memo.controller.stop()


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    sa = kube.service_account_dir()
    if sa is None:
        return kopf.login_via_client(**kwargs)
    return kopf.ConnectionInfo(server=kube.server_url(), ca_path=str(sa / "ca.crt"),
                               token=(sa / "token").read_text().strip(),
                               default_namespace=(sa / "namespace").read_text().strip())


@kopf.on.probe(id="ready")
def ready(**_) -> bool:
    return True


# --- the Kiln kinds -------------------------------------------------------------------------------
@kopf.on.event(resources.TRAININGJOBS)
async def trainingjob_event(namespace, name, body, type, memo: kopf.Memo, **_) -> None:
    memo.controller.notice("TrainingJob", namespace, name, body)
    if type == "DELETED":  # the version its run reserved is cancelled (its Jobs go with it)
        memo.controller.trainingjob_deleted(namespace, body)


@kopf.on.event(resources.MODELS)
async def model_event(namespace, name, body, type, memo: kopf.Memo, **_) -> None:
    ctl = memo.controller
    ctl.notice("Model", namespace, name, body)
    for dep in ctl.world.users_of(namespace, name):  # an alias moved, a version registered
        ctl.notice("Deployment", namespace, dep["metadata"]["name"])
    if type in (None, "ADDED"):  # runs waiting for this Model (ModelMissing) start now
        for tj in ctl.world.trainingjobs_of(namespace, name):
            ctl.notice("TrainingJob", namespace, tj)


@kopf.on.event(resources.DEPLOYMENTS)
async def deployment_event(namespace, name, body, spec, memo: kopf.Memo, **_) -> None:
    memo.controller.notice("Deployment", namespace, name, body)
    if (spec.get("model") or {}).get("name"):  # retention never archives what a Deployment serves
        memo.controller.notice("Model", namespace, spec["model"]["name"])


# --- their children: an event queues the owner ----------------------------------------------------
@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(namespace, labels: dict, memo: kopf.Memo, **_) -> None:
    if labels.get(kiln_labels.TRAININGJOB):
        memo.controller.notice("TrainingJob", namespace, labels[kiln_labels.TRAININGJOB])


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(namespace, labels: dict, memo: kopf.Memo, **_) -> None:
    if labels.get(kiln_labels.TRAININGJOB):
        memo.controller.notice("TrainingJob", namespace, labels[kiln_labels.TRAININGJOB])
    elif labels.get(deployment_builder.DEPLOYMENT):
        memo.controller.notice("Deployment", namespace, labels[deployment_builder.DEPLOYMENT])


@kopf.on.event("apps", "v1", "deployments", labels=SERVING)
@kopf.on.event("", "v1", "services", labels=SERVING)
@kopf.on.event("", "v1", "configmaps", labels=SERVING)
@kopf.on.event("autoscaling", "horizontalpodautoscalers", labels=SERVING)
@kopf.on.event("policy", "poddisruptionbudgets", labels=SERVING)
async def serving_child_event(namespace, labels: dict, memo: kopf.Memo, **_) -> None:
    memo.controller.notice("Deployment", namespace, labels[deployment_builder.DEPLOYMENT])

