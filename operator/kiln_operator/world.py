"""Snapshots of the observed world for one reconcile, taken from the kopf indexes on the event loop's thread.

A watch shows our own writes a moment later; until it does, the objects our writes returned
stand in for the cached ones (`remember`), so a reconcile never acts on a state it already changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kiln_operator import search_shards

EXPECT_SECONDS = 60.0  # how long a Job we created may be missing from the watch before we believe it is gone


def _rv(obj: dict | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _one(index, key):
    if index is None or key not in index:
        return None
    for value in index[key]:
        return value
    return None


def _all(index, key) -> list:
    if index is None or key not in index:
        return []
    return list(index[key])


@dataclass
class TrainingWorld:
    tj: dict
    model: dict | None
    model_users: list[dict]  # Kiln Deployments of that Model (retention never archives what they serve)
    job: dict | None
    job_expected: bool  # we created that Job moments ago; the watch has not shown it yet
    pods: list[dict]
    storage_checked: bool = True  # the Model's storage was listed (versions from before a rebuild adopted)
    # a search across pods (search_shards): shard -> its Job (None if unseen), its pods; shards created moments ago
    shard_jobs: dict = field(default_factory=dict)
    shard_pods: dict = field(default_factory=dict)
    shard_expected: set = field(default_factory=set)


@dataclass
class ModelWorld:
    model: dict
    users: list[dict]
    storage_checked: bool
    downloads: dict = field(default_factory=dict)  # (uri, sha256) -> finished downloads.Download


@dataclass
class ServingWorld:
    dep: dict
    model: dict | None
    servers: dict[int, dict]  # version -> trimmed apps/v1 Deployment
    children: dict[tuple[str, str], dict]  # (kind, name) -> trimmed Service / ConfigMap / HPA / PDB / apps
    # Deployment
    pods: list[dict]


@dataclass
class World:
    indexes: dict = field(default_factory=dict)
    overlay: dict = field(default_factory=dict)  # (plural, ns, name) -> object a write of ours returned
    expected_jobs: dict = field(default_factory=dict)  # (ns, name) -> monotonic time we created it
    storage_checked: set = field(default_factory=set)  # Model uids whose storage was listed once

    def _kiln(self, plural: str, ns: str, name: str) -> dict | None:
        cached = _one(self.indexes.get(f"kiln_{plural}"), (ns, name))
        mine = self.overlay.get((plural, ns, name))
        if mine is None:
            return cached
        if cached is None or _rv(cached) >= _rv(mine):
            self.overlay.pop((plural, ns, name), None)
            return cached
        return mine

    def remember(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        plural = {"TrainingJob": "trainingjobs", "Model": "models", "Deployment": "deployments"}.get(obj.get("kind"))
        if plural and (obj.get("apiVersion") or "").startswith("kiln.dev/"):
            self.overlay[(plural, meta.get("namespace"), meta.get("name"))] = obj

    def expect_job(self, ns: str, name: str) -> None:
        self.expected_jobs[(ns, name)] = time.monotonic()

    def trainingjob(self, ns: str, name: str) -> dict | None:
        return self._kiln("trainingjobs", ns, name)

    def model(self, ns: str, name: str) -> dict | None:
        return self._kiln("models", ns, name)

    def deployment(self, ns: str, name: str) -> dict | None:
        return self._kiln("deployments", ns, name)

    def users_of(self, ns: str, model: str) -> list[dict]:
        names = _all(self.indexes.get("deployments_by_model"), (ns, model))
        return [d for d in (self.deployment(ns, n) for n in sorted(set(names))) if d is not None]

    def trainingjobs_of(self, ns: str, model: str) -> list[str]:
        return sorted(set(_all(self.indexes.get("trainingjobs_by_model"), (ns, model))))

    def training(self, ns: str, name: str) -> TrainingWorld | None:
        tj = self.trainingjob(ns, name)
        if tj is None:
            return None
        model_name = (tj.get("spec") or {}).get("model")
        job_name = (tj.get("status") or {}).get("jobName")
        job = _one(self.indexes.get("kiln_jobs"), (ns, job_name)) if job_name else None
        created = self.expected_jobs.get((ns, job_name))
        if job is not None or (created and time.monotonic() - created > EXPECT_SECONDS):
            self.expected_jobs.pop((ns, job_name), None)
            created = None
        pods = _all(self.indexes.get("kiln_pods"), (ns, "job", job_name)) if job_name else []
        model = self.model(ns, model_name)
        world = TrainingWorld(tj=tj, model=model, model_users=self.users_of(ns, model_name),
                              job=job, job_expected=created is not None, pods=pods,
                              storage_checked=model is None or model["metadata"].get("uid") in self.storage_checked)
        self._shards(world, ns, name)
        return world

    def _shards(self, world: TrainingWorld, ns: str, name: str) -> None:
        status = world.tj.get("status") or {}
        search = status.get("search") or {}
        if not search.get("shards") or status.get("modelVersion") is None:
            return
        for k in range(int(search["shards"])):
            job_name = search_shards.shard_job_name(name, status["modelVersion"], k)
            job = _one(self.indexes.get("kiln_jobs"), (ns, job_name))
            created = self.expected_jobs.get((ns, job_name))
            if job is not None or (created and time.monotonic() - created > EXPECT_SECONDS):
                self.expected_jobs.pop((ns, job_name), None)
                created = None
            world.shard_jobs[k] = job
            world.shard_pods[k] = _all(self.indexes.get("kiln_pods"), (ns, "job", job_name)) if job else []
            if created is not None:
                world.shard_expected.add(k)

    def registry(self, ns: str, name: str) -> ModelWorld | None:
        model = self.model(ns, name)
        if model is None:
            return None
        return ModelWorld(model=model, users=self.users_of(ns, name),
                          storage_checked=model["metadata"].get("uid") in self.storage_checked)

    def serving(self, ns: str, name: str) -> ServingWorld | None:
        dep = self.deployment(ns, name)
        if dep is None:
            return None
        model = self.model(ns, ((dep.get("spec") or {}).get("model") or {}).get("name"))
        children: dict[tuple[str, str], dict] = {}
        servers: dict[int, dict] = {}
        for kind, index in (("Deployment", "kiln_servers"), ("Service", "kiln_services"),
                            ("ConfigMap", "kiln_configmaps"), ("HorizontalPodAutoscaler", "kiln_hpas"),
                            ("PodDisruptionBudget", "kiln_pdbs")):
            for child in _all(self.indexes.get(index), (ns, name)):
                children[(kind, child["metadata"]["name"])] = child
                version = ((child["metadata"].get("labels") or {}).get("kiln.dev/version"))
                if kind == "Deployment" and version and version.isdigit():
                    servers[int(version)] = child
        pods = _all(self.indexes.get("kiln_pods"), (ns, "deployment", name))
        return ServingWorld(dep=dep, model=model, servers=servers, children=children, pods=pods)
