"""examples/gitops (issue #15): the Kiln objects against the CRDs, the Argo CD and Flux objects' structure, and the
operator's Helm values rendered by the chart itself. The same directory is applied for real, as a GitOps
controller would, by tests/integration/test_gitops_drift.py."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from chart_scripts import load as load_chart_script

from kiln_contract import spec as specs

REPO = Path(__file__).resolve().parents[2]
GITOPS = REPO / "examples" / "gitops"
MODELS = GITOPS / "models"
PART_OF = "app.kubernetes.io/part-of"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = {p.relative_to(GITOPS).as_posix(): docs(p) for p in sorted(GITOPS.rglob("*.yaml"))}
OBJECTS = [(path, d) for path, ds in ALL.items() for d in ds]


def of_kind(api_prefix: str, kind: str) -> list[tuple[str, dict]]:
    return [(p, d) for p, d in OBJECTS if d.get("kind") == kind and d.get("apiVersion", "").startswith(api_prefix)]


# Just enough of each controller's API to catch a misspelt or misplaced field (their CRDs are not vendored here).
ARGO_APPLICATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "argoproj.io/v1alpha1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "required": ["project", "source", "destination"], "additionalProperties": False,
            "properties": {
                "project": {"type": "string"},
                "source": {"type": "object", "required": ["repoURL", "targetRevision", "path"],
                           "additionalProperties": False,
                           "properties": {"repoURL": {"type": "string", "pattern": "^https://"},
                                          "targetRevision": {"type": "string"}, "path": {"type": "string"},
                                          "helm": {"type": "object", "additionalProperties": False,
                                                   "properties": {"releaseName": {"type": "string"},
                                                                  "valuesObject": {"type": "object"}}}}},
                "destination": {"type": "object", "required": ["server", "namespace"], "additionalProperties": False,
                                "properties": {"server": {"type": "string"}, "namespace": {"type": "string"}}},
                "syncPolicy": {"type": "object", "additionalProperties": False, "properties": {
                    "automated": {"type": "object", "additionalProperties": False,
                                  "properties": {"prune": {"type": "boolean"}, "selfHeal": {"type": "boolean"}}},
                    "syncOptions": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z]+=[a-z]+$"}},
                    "managedNamespaceMetadata": {"type": "object"}}},
            }},
    },
}
FLUX_SOURCE_REF = {"type": "object", "required": ["kind", "name"],
                   "properties": {"kind": {"enum": ["GitRepository", "OCIRepository", "HelmRepository", "Bucket"]}}}
FLUX_HELMRELEASE = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "helm.toolkit.fluxcd.io/v2"},
        "spec": {"type": "object", "required": ["interval", "chart"], "additionalProperties": False, "properties": {
            "interval": {"type": "string"}, "releaseName": {"type": "string"}, "values": {"type": "object"},
            "chart": {"type": "object", "required": ["spec"], "properties": {"spec": {
                "type": "object", "required": ["chart", "sourceRef"], "properties": {"sourceRef": FLUX_SOURCE_REF}}}},
            "install": {"type": "object", "properties": {"crds": {"enum": ["Skip", "Create", "CreateReplace"]}}},
            "upgrade": {"type": "object", "properties": {"crds": {"enum": ["Skip", "Create", "CreateReplace"]}}},
        }},
    },
}
FLUX_KUSTOMIZATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kustomize.toolkit.fluxcd.io/v1"},
        "spec": {"type": "object", "required": ["interval", "path", "sourceRef", "prune"],
                 "additionalProperties": False,
                 "properties": {"interval": {"type": "string"}, "path": {"type": "string"},
                                "sourceRef": FLUX_SOURCE_REF, "targetNamespace": {"type": "string"},
                                "prune": {"type": "boolean"},
                                "wait": {"type": "boolean"}, "timeout": {"type": "string"},
                                "healthChecks": {"type": "array", "items": {
                                    "type": "object", "required": ["apiVersion", "kind", "name"]}}}},
    },
}


def repo_path(path: str) -> Path:
    return REPO / path.lstrip("./")


# -- the team's model manifests ----------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_and_sets_no_namespace_or_common_labels():
    kustomization = yaml.safe_load((MODELS / "kustomization.yaml").read_text())
    files = sorted(p.name for p in MODELS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    # the controller's destination decides the namespace; commonLabels would also write spec.selector and
    # spec.template into kiln.dev's Deployment (kustomize treats every kind named Deployment as apps/v1's)
    assert "namespace" not in kustomization and "commonLabels" not in kustomization


def test_the_model_manifests_are_one_of_each_kind_and_valid_against_the_crds():
    objs = [d for p in sorted(MODELS.glob("*.yaml")) if p.name != "kustomization.yaml" for d in docs(p)]
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Model", "TrainingJob"]
    for obj in objs:
        assert obj["apiVersion"] == "kiln.dev/v1alpha1"
        assert "namespace" not in obj["metadata"] and "status" not in obj
        assert obj["metadata"]["labels"][PART_OF] == "team-models"  # what a label-selected prune finds
        specs.validate(obj["kind"], obj["spec"])
    by_kind = {o["kind"]: o for o in objs}
    model = by_kind["Model"]["metadata"]["name"]
    assert by_kind["TrainingJob"]["spec"]["model"] == model
    assert by_kind["Deployment"]["spec"]["model"] == {"name": model, "alias": "production"}  # no version in Git
    assert not by_kind["Model"]["spec"].get("deleteArtifacts")  # a prune must not delete the registry


def test_every_kiln_object_anywhere_in_the_examples_is_valid():
    kiln = [(p, d) for p, d in OBJECTS if d.get("apiVersion") == "kiln.dev/v1alpha1"]
    assert len(kiln) >= 3
    for path, obj in kiln:
        try:
            specs.validate(obj["kind"], obj["spec"])
        except specs.SpecError as exc:
            pytest.fail(f"{path}: {obj['kind']}/{obj['metadata']['name']}: {exc}")


# -- Argo CD -------------------------------------------------------------------------------------------------


def test_argo_cd_applications_are_well_formed_and_point_at_paths_that_exist():
    apps = of_kind("argoproj.io/", "Application")
    assert {d["metadata"]["name"] for _, d in apps} == {"kiln-operator", "team-a-models"}
    for path, app in apps:
        jsonschema.validate(app, ARGO_APPLICATION)
        assert repo_path(app["spec"]["source"]["path"]).is_dir(), path
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"], path
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}, path


def test_argo_cd_health_checks_cover_the_three_kinds():
    cm = next(d for _, d in OBJECTS if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "argocd-cm")
    assert set(cm["data"]) == {f"resource.customizations.health.kiln.dev_{k}" for k in
                               ("TrainingJob", "Model", "Deployment")}
    for key, lua in cm["data"].items():
        code = re.sub(r'"[^"]*"|--[^\n]*', "", lua)  # strings and comments out; then every block has its end
        opened = len(re.findall(r"(?<!else)\bif\b", code)) + len(re.findall(r"\bfor\b", code))
        assert opened == len(re.findall(r"\bend\b", code)), key
        assert code.rstrip().endswith("return hs") and "obj.status ~= nil" in code, key


# -- Flux ---------------------------------------------------------------------------------------------------


def test_flux_objects_are_well_formed_and_their_sources_exist():
    sources = {(d["kind"], d["metadata"]["name"]) for _, d in of_kind("source.toolkit.fluxcd.io/", "GitRepository")}
    releases = of_kind("helm.toolkit.fluxcd.io/", "HelmRelease")
    kustomizations = of_kind("kustomize.toolkit.fluxcd.io/", "Kustomization")
    assert len(releases) == 1 and len(kustomizations) == 1
    for _, hr in releases:
        jsonschema.validate(hr, FLUX_HELMRELEASE)
        spec = hr["spec"]["chart"]["spec"]
        assert (spec["sourceRef"]["kind"], spec["sourceRef"]["name"]) in sources
        assert (repo_path(spec["chart"]) / "Chart.yaml").exists()
        assert hr["spec"]["upgrade"]["crds"] == "CreateReplace"
    for _, ks in kustomizations:
        jsonschema.validate(ks, FLUX_KUSTOMIZATION)
        assert (ks["spec"]["sourceRef"]["kind"], ks["spec"]["sourceRef"]["name"]) in sources
        assert (repo_path(ks["spec"]["path"]) / "kustomization.yaml").exists()
        assert ks["spec"]["prune"] is True and ks["spec"]["targetNamespace"]


# -- the operator's values, as the chart sees them -------------------------------------------------------------


def operator_values() -> list[tuple[str, dict, str]]:
    out = []
    for path, app in of_kind("argoproj.io/", "Application"):
        helm = app["spec"]["source"].get("helm")
        if helm:
            out.append((path, helm.get("valuesObject") or {}, app["spec"]["destination"]["namespace"]))
    for path, hr in of_kind("helm.toolkit.fluxcd.io/", "HelmRelease"):
        out.append((path, hr["spec"].get("values") or {}, hr["metadata"]["namespace"]))
    return out


@pytest.mark.parametrize("index", range(2), ids=["argocd", "flux"])
def test_the_operator_values_render_the_chart(index):
    pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[dev]')")
    chart = load_chart_script("render")
    path, values, namespace = operator_values()[index]
    objs = chart.objects(chart.render(values, namespace=namespace))  # schema-checked by Helm
    op = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "kiln-operator")
    container = op["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(values["image"]["repository"]), path
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == [values["s3"]["existingSecret"]]
    bound = {o["metadata"]["namespace"] for o in objs if o["kind"] == "RoleBinding"}
    assert set(values["operator"]["watchNamespaces"]) <= bound
    # the namespaces the models are synced into are among those the operator watches
    targets = {d["spec"]["destination"]["namespace"] for _, d in of_kind("argoproj.io/", "Application")
               if d["spec"]["source"]["path"].endswith("gitops/models")}
    targets |= {d["spec"]["targetNamespace"] for _, d in of_kind("kustomize.toolkit.fluxcd.io/", "Kustomization")}
    assert targets <= set(values["operator"]["watchNamespaces"])
