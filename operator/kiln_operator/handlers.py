"""kopf handlers: thin — they hand the object to a reconcile function and post what it reports."""

from __future__ import annotations

import logging

import kopf

from kiln_operator import models, resources, settings, trainingjobs

CONFIG = settings.load()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Watches that never time out hang silently on a half-dead connection.
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_server_timeout + 30
    settings.watching.connect_timeout = 10
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kiln.dev")
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 8


@kopf.on.probe(id="ready")
def ready(**_) -> bool:
    return True


def _post(body, events) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message)


@kopf.timer(resources.TRAININGJOBS, interval=2.0, initial_delay=0)
def trainingjob(body, patch, **_) -> None:
    status_patch, events = trainingjobs.reconcile(dict(body), CONFIG)
    patch.status.update(status_patch)
    _post(body, events)


@kopf.timer(resources.MODELS, interval=3.0, initial_delay=0)
def model(body, **_) -> None:
    _post(body, models.reconcile(dict(body), CONFIG))


@kopf.on.delete(resources.MODELS, when=lambda spec, **_: bool(spec.get("deleteArtifacts")))
def model_deleted(body, logger, **_) -> None:
    removed = models.delete_artifacts(dict(body), CONFIG)
    logger.info("deleted %d artifact objects of Model %s", removed, body["metadata"]["name"])
