"""kopf handlers: thin — they read the object, call builders and ensure_* functions, write status."""

from __future__ import annotations

import logging

import kopf

from kiln_operator import conditions, resources, settings

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


@kopf.on.probe(id="ready")
def ready(**_) -> bool:
    return True


@kopf.on.create(resources.TRAININGJOBS)
def trainingjob_created(spec, meta, status, patch, logger, **_) -> None:
    generation = meta.get("generation")
    patch.status["phase"] = status.get("phase") or "Pending"
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = conditions.set_condition(
        status.get("conditions"), "Succeeded", "Unknown", "Accepted",
        f"run of {spec['algorithm']['name']} for model {spec['model']} accepted", generation)
    logger.info("TrainingJob accepted for model %s", spec["model"])
