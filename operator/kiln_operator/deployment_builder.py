"""Kiln Deployment spec → Service, apps/v1 Deployments (one per served version), HPA, PDB. Pure."""

from __future__ import annotations

from kiln_operator import labels, security

PORT = 8080
GRPC_PORT = 8081  # the Open Inference Protocol over gRPC, on the pod and the Service
DEPLOYMENT = "kiln.dev/deployment"
TRACK = "kiln.dev/track"


def selector(name: str) -> dict:
    return {DEPLOYMENT: name}


def server_name(name: str, version: int) -> str:
    return labels.dns_name(name, f"v{version}")


def _owner(dep: dict) -> list[dict]:
    return [labels.owner_reference("Deployment", dep["metadata"])]


def build_service(dep: dict) -> dict:
    meta = dep["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": _owner(dep),
                     "labels": {**labels.MANAGED_BY, "app.kubernetes.io/name": "kiln-server",
                                **selector(meta["name"])}},
        "spec": {"selector": selector(meta["name"]),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                            "appProtocol": "kubernetes.io/h2c"}]},
    }


def logging_config_name(name: str) -> str:
    return labels.dns_name(name, "logging")


# spec.logging.sampleRate reaches the servers as a file of this ConfigMap (build_logging_config), which the server
# follows while serving (--payload-log-sample-rate-file): a new rate needs no rollout.
LOGGING_MOUNT = "/etc/kiln/logging"
SAMPLE_RATE_KEY = "sampleRate"


def build_logging_config(dep: dict, logging) -> dict:
    """The ConfigMap of a Deployment's payload-logging settings that may change under running servers."""
    meta = dep["metadata"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": logging_config_name(meta["name"]), "namespace": meta["namespace"],
                     "ownerReferences": _owner(dep), "labels": {**labels.MANAGED_BY, **selector(meta["name"])}},
        "data": {SAMPLE_RATE_KEY: repr(float(logging.sample_rate))},
    }


def runtime_for(spec: dict, entry: dict) -> tuple[str, str]:
    """(runtime, artifact format) for a version; raises ValueError naming the field when impossible."""
    formats = set((entry.get("artifacts") or {}).keys()) or set(entry.get("formats") or [])
    wanted = spec.get("runtime") or ("onnx" if "onnx" in formats else "sklearn")
    if wanted == "onnx":
        if "onnx" not in formats:
            raise ValueError(f"spec.runtime: version {entry['version']} has no ONNX artifact (has {sorted(formats)})")
        return "onnx", "onnx"
    fmt = "joblib" if "joblib" in formats else "pkl" if "pkl" in formats else None
    if fmt is None:
        raise ValueError(f"spec.runtime: version {entry['version']} has no joblib/pkl artifact for sklearn")
    if not spec.get("allowUnsafeFormats"):
        raise ValueError(f"spec.allowUnsafeFormats: serving version {entry['version']} needs its {fmt} artifact, "
                         "which can run code when loaded; set allowUnsafeFormats: true to accept that")
    return "sklearn", fmt


def build_server(dep: dict, entry: dict, *, track: str, replicas: int | None, image: str, s3_secret: str,
                 logging=None) -> dict:
    """The apps/v1 Deployment that serves one version of the model (replicas None: an HPA owns them).

    logging: a payload_logging.Logging when spec.logging is on (see payload_logging.resolve)."""
    meta, spec = dep["metadata"], dep["spec"]
    version = entry["version"]
    runtime, fmt = runtime_for(spec, entry)
    artifact = (entry.get("artifacts") or {}).get(fmt) or {"sha256": entry.get("sha256", "")}
    lbl = {**labels.MANAGED_BY, "app.kubernetes.io/name": "kiln-server", **selector(meta["name"]),
           labels.MODEL: spec["model"]["name"], labels.VERSION: str(version), TRACK: track}
    resources = spec.get("resources") or {}
    req = {k: str(resources[k]) for k in ("cpu", "memory") if resources.get(k)}
    lim = {"memory": req["memory"]} if "memory" in req else {}
    batching = spec.get("batching") or {}
    env = [
        {"name": "KILN_MODEL_URI", "value": entry["uri"]},
        {"name": "KILN_MODEL_NAME", "value": spec["model"]["name"]},
        {"name": "KILN_MODEL_VERSION", "value": str(version)},
        {"name": "KILN_EXPECTED_SHA256", "value": artifact["sha256"]},
        # The card tells the server the feature names and order; a card edited in storage must not be trusted.
        {"name": "KILN_EXPECTED_CARD_SHA256", "value": entry.get("cardSha256") or ""},
        {"name": "KILN_RUNTIME", "value": runtime},
        {"name": "KILN_ALLOW_UNSAFE_FORMATS", "value": "true" if runtime == "sklearn" else "false"},
        {"name": "KILN_PORT", "value": str(PORT)},
        # Bind to the pod's own address (the downward API), as on any cluster.
        {"name": "KILN_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "KILN_CACHE_DIR", "value": "/tmp/kiln-model"},
        {"name": "KILN_BATCH_MAX_SIZE", "value": str(batching.get("maxBatchSize", 32))},
        {"name": "KILN_BATCH_MAX_LATENCY_MS", "value": str(batching.get("maxLatencyMs", 1))},
        {"name": "KILN_GRPC_PORT", "value": str(GRPC_PORT)},
    ]
    if logging is not None:
        env += [
            {"name": "KILN_PAYLOAD_LOG_URI", "value": logging.uri},
            {"name": "KILN_PAYLOAD_LOG_SAMPLE_RATE_FILE", "value": f"{LOGGING_MOUNT}/{SAMPLE_RATE_KEY}"},
            {"name": "KILN_PAYLOAD_LOG_COMPRESSION", "value": logging.compression},
            # A writable credential for the records only, under names the artifact reads never use.
            {"name": "KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID",
             "valueFrom": {"secretKeyRef": {"name": logging.secret, "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "KILN_PAYLOAD_LOG_AWS_SECRET_ACCESS_KEY",
             "valueFrom": {"secretKeyRef": {"name": logging.secret, "key": "AWS_SECRET_ACCESS_KEY"}}},
        ]
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2, "timeoutSeconds": 2,
             "failureThreshold": 3}
    container = {
        "name": "server", "image": image,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}],
        "env": env, "envFrom": [{"secretRef": {"name": s3_secret}}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                          "initialDelaySeconds": 30},
        "resources": {k: v for k, v in (("requests", req), ("limits", lim)) if v},
        "securityContext": security.CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [security.TMP_MOUNT],
    }
    volumes = [security.TMP_VOLUME]
    if logging is not None:
        container["volumeMounts"] = [security.TMP_MOUNT, {"name": "logging", "mountPath": LOGGING_MOUNT,
                                                          "readOnly": True}]
        volumes.append({"name": "logging", "configMap": {"name": logging_config_name(meta["name"])}})
    manifest = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": server_name(meta["name"], version), "namespace": meta["namespace"],
                     "labels": lbl, "ownerReferences": _owner(dep)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {**selector(meta["name"]), labels.VERSION: str(version)}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": lbl, "annotations": {"kiln.dev/sha256": artifact["sha256"]}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": security.POD_SECURITY_CONTEXT,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    if replicas is None:
        del manifest["spec"]["replicas"]
    return manifest


def build_hpa(dep: dict, target: str, api_version: str) -> dict:
    """Native HPA for metric: cpu (autoscaling/v2, or v2beta2 on older clusters: same shape)."""
    meta, spec = dep["metadata"], dep["spec"]
    replicas = spec.get("replicas") or {}
    scaling = spec.get("autoscaling") or {}
    return {
        "apiVersion": api_version, "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": _owner(dep),
                     "labels": {**labels.MANAGED_BY, **selector(meta["name"])}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": max(1, int(replicas.get("min", 1))),
            "maxReplicas": int(replicas.get("max", 3)),
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": int(scaling.get("target", 70))}}}],
        },
    }


def build_pdb(dep: dict, api_version: str) -> dict:
    meta = dep["metadata"]
    return {
        "apiVersion": api_version, "kind": "PodDisruptionBudget",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "ownerReferences": _owner(dep),
                     "labels": {**labels.MANAGED_BY, **selector(meta["name"])}},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector(meta["name"])}},
    }


def canary_split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas approximating weight% of traffic behind one Service."""
    if weight >= 100:
        return 0, max(total, 1)
    total = max(total, 2)
    canary = min(total - 1, max(1, round(total * weight / 100)))
    return total - canary, canary
