"""kopf handlers: thin — they hand the object to a reconcile function and post what it reports."""

from __future__ import annotations

import logging

import kopf

from kiln_operator import deployments, gateway, kube, models, resources, serving_state, settings, trainingjobs

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
    # Timers run every second or two; their per-run "succeeded" lines would drown the log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.execution.max_workers = 8


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    sa = kube.service_account_dir()
    if sa is None:
        return kopf.login_via_client(**kwargs)
    return kopf.ConnectionInfo(server=kube.server_url(), ca_path=str(sa / "ca.crt"),
                               token=(sa / "token").read_text().strip(),
                               default_namespace=(sa / "namespace").read_text().strip())


@kopf.on.startup()
async def start_gateway(memo: kopf.Memo, **_) -> None:
    if CONFIG.gateway:
        host, _, port = CONFIG.gateway.rpartition(":")
        memo.gateway = await gateway.serve(host or "0.0.0.0", int(port))


@kopf.on.cleanup()
async def stop_gateway(memo: kopf.Memo, **_) -> None:
    if getattr(memo, "gateway", None):
        await memo.gateway.cleanup()


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


@kopf.timer(resources.DEPLOYMENTS, interval=1.0, initial_delay=0)
def deployment(body, patch, **_) -> None:
    status_patch, events = deployments.reconcile(dict(body), CONFIG)
    patch.status.update(status_patch)
    _post(body, events)


@kopf.on.delete(resources.DEPLOYMENTS, optional=True)
def deployment_deleted(namespace, name, **_) -> None:
    serving_state.forget(namespace, name)
