"""deploy/terraform checked without terraform, providers or network (issue #15).

Every .tf file is parsed (python-hcl2); every variable is typed, described, validated, used and listed in the
README; the module's locals are evaluated (tests/terraform_hcl.py) for the example root, the README's production
snippet and the defaults, and the chart is rendered by Helm's own engine with exactly those values (schema
checked); the names the module creates (Secrets, the gateway URL) are checked against what the chart renders; the
example's Kiln objects are validated against the CRDs; checkov runs on the whole directory.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import hcl2
import jsonschema
import pytest
import yaml
from chart_scripts import load as load_chart_script
from checkov_tool import checkov
from terraform_hcl import Config, EvalError, Parser, Scope, clean, evaluate, load_file

from kiln_contract import spec as specs

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "deploy" / "terraform"
EXAMPLE = TF / "examples" / "trial"
README = TF / "README.md"
CHART = REPO / "charts" / "kiln"
MAX_CHECKOV_FINDINGS = 3

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[dev]')")
chart = load_chart_script("render")

MODULE = Config(TF)
ROOTS = [MODULE, Config(EXAMPLE)]
TF_FILES = sorted(TF.rglob("*.tf"))

# Stand-ins for what only exists at apply time (resource attributes): the tests never need their real values.
GENERATED_SECRET = "x" * 40


# -- parsing, variables ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TF)))
def test_every_tf_file_parses(path):
    parsed = load_file(path)
    assert parsed, f"{path} is empty"


def test_there_is_a_module_and_an_example_root():
    assert {"variables.tf", "main.tf", "outputs.tf", "versions.tf"} <= set(MODULE.files)
    assert {("helm_release", "kiln"), ("kubernetes_namespace_v1", "kiln"), ("kubernetes_secret_v1", "operator_s3"),
            ("kubernetes_namespace_v1", "team"), ("kubernetes_secret_v1", "workload")} <= set(MODULE.resources)
    example = ROOTS[1]
    manifests = {evaluate(body["manifest"], example_scope())["kind"]
                 for (rtype, _), body in example.resources.items() if rtype == "kubernetes_manifest"}
    assert manifests == {"Model", "TrainingJob", "Deployment"}
    assert {"gateway_url", "namespace"} <= set(MODULE.outputs) and {"gateway_url", "namespace"} <= set(
        example.outputs)


@pytest.mark.parametrize("config", ROOTS, ids=["module", "example"])
def test_every_variable_is_typed_described_validated_used_and_documented(config):
    readme = (config.directory / "README.md") if (config.directory / "README.md").exists() else README
    documented = set(re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", readme.read_text(), re.M))
    used = config.references("var")
    problems = []
    for name, decl in config.variables.items():
        if "type" not in decl:
            problems.append(f"{name}: no type")
        if len(evaluate(decl.get("description", '""'), Scope())) < 10:
            problems.append(f"{name}: no description")
        if not decl.get("validation") and decl.get("type") != "bool" and not name.endswith("_annotations"):
            problems.append(f"{name}: no validation block")
        if name not in used:
            problems.append(f"{name}: declared but never used")
        if name not in documented:
            problems.append(f"{name}: not in the variables table of {readme.relative_to(REPO)}")
    assert problems == []
    assert used <= set(config.variables), f"undeclared variables: {used - set(config.variables)}"
    assert config.references("local") <= set(config.locals)


def test_sensitive_inputs_are_marked_sensitive():
    for name, decl in MODULE.variables.items():
        if name.startswith("s3_") and ("secret" in name or "access_key" in name):
            assert decl.get("sensitive") is True, f"{name} must be sensitive"


@pytest.mark.parametrize("config", ROOTS, ids=["module", "example"])
def test_the_defaults_pass_their_own_validations(config):
    assert config.validate_inputs(config.scope({})) == []


@pytest.mark.parametrize("name,value", [
    ("release_name", "Kiln_Release"), ("namespace", "kube-system"), ("chart_repository", "ftp://charts"),
    ("chart_version", "latest"), ("helm_timeout", 5), ("extra_values_yaml", "- a list"),
    ("image_repositories", {"operator": "a/b"}), ("image_tag", "bad tag"), ("allowed_image_prefixes", ["reg/*"]),
    ("s3_endpoint", "s3.example.com"), ("s3_bucket", "Bad_Bucket"), ("team_namespaces", ["a", "a"]),
    ("team_quota", {"cpu": "lots", "memory": "1Gi", "gpu": 0, "pods": 1}), ("gateway_replicas", 0),
    ("workload_secret_name", "Not A Name"),
])
def test_validations_refuse_bad_values(name, value):
    failed = MODULE.validate_inputs(MODULE.scope({name: value}))
    assert [f for f in failed if f.startswith(f"{name}:")], f"{name}={value!r} was accepted"


# -- what the module hands the chart -----------------------------------------------------------------------------


def example_scope() -> Scope:
    example = ROOTS[1]
    return example.scope({}, resources={"random_password": {"s3_secret_key": {"result": GENERATED_SECRET}}})


def example_inputs() -> dict:
    block = dict(ROOTS[1].modules["kiln"])
    assert evaluate(block.pop("source"), Scope()) == "../.."
    block.pop("depends_on", None)
    return {name: evaluate(value, example_scope()) for name, value in block.items()}


def readme_inputs() -> dict:
    """The production snippet in README.md (```hcl module "kiln" {...}```), with stand-ins for its var.* inputs."""
    blocks = re.findall(r"```hcl\n(module \"kiln\" \{.*?\n\})\n```", README.read_text(), re.S)
    assert blocks, "README.md has no ```hcl module \"kiln\" { ... } ``` block"
    block = clean(hcl2.loads(blocks[0]))["module"][0]["kiln"]
    refs = set(re.findall(r"\bvar\.([a-z0-9_]+)", blocks[0]))
    scope = Scope(var={r: f"placeholder-{r.replace('_', '-')}" for r in refs})
    block.pop("source")
    return {name: evaluate(value, scope) for name, value in block.items()}


CONFIGURATIONS = {
    "defaults": lambda: {},
    "example-trial": example_inputs,
    "readme-production": readme_inputs,
    "production-keys-readonly-quota": lambda: {
        "release_name": "ml", "namespace": "ml-system", "team_namespaces": ["team-a", "team-b"],
        "s3_endpoint": "https://s3.example.com", "s3_bucket": "models", "s3_create_bucket": True,
        "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "secret-example-key",
        "s3_read_access_key_id": "AKIAREADONLY", "s3_read_secret_access_key": "readonly-example-key",
        "team_quota": {"cpu": "8", "memory": "32Gi", "gpu": 1, "pods": 50}, "gateway_replicas": 3,
        "monitoring_enabled": True, "chart_repository": "oci://registry.example.com/charts",
        "extra_values_yaml": "resources:\n  limits:\n    memory: 1Gi\n"},
}


def module_scope(inputs: dict) -> Scope:
    scope = MODULE.scope(inputs)
    ns, release = scope.var["namespace"], scope.var["release_name"]
    scope.resources = {"kubernetes_namespace_v1": {"kiln": [{"metadata": [{"name": ns}]}]},
                       "helm_release": {"kiln": {"name": release}},
                       "kubernetes_secret_v1": {"workload": {n: {} for n in scope.var["team_namespaces"]}}}
    return scope


def helm_values(scope: Scope) -> dict:
    """What helm_release.kiln's values list amounts to: its documents merged in order, as Helm merges -f files."""
    release = MODULE.resources[("helm_release", "kiln")]
    merged: dict = {}
    for doc in evaluate(release["values"], scope):
        merged = chart.merge(merged, yaml.safe_load(doc) or {})
    return merged


def rendered_for(inputs: dict) -> tuple[Scope, dict, list[dict]]:
    scope = module_scope(inputs)
    assert MODULE.validate_inputs(scope) == []
    for pre in MODULE.resources[("helm_release", "kiln")]["lifecycle"][0]["precondition"]:
        assert evaluate(pre["condition"], scope) is True, evaluate(pre["error_message"], scope)
    values = helm_values(scope)
    objs = chart.objects(chart.render(values, name=scope.var["release_name"], namespace=scope.var["namespace"]))
    return scope, values, objs


def env_of(objs: list[dict], deployment: str) -> dict:
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    env["envFrom"] = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
    return env


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_the_chart_renders_with_exactly_the_modules_values(configuration):
    inputs = CONFIGURATIONS[configuration]()
    scope, values, objs = rendered_for(inputs)
    # values.schema.json, checked here too (render() already fails on a value the schema refuses)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(chart.merge(defaults, values), json.loads((CHART / "values.schema.json").read_text()))
    lint = chart.lint(values)
    assert lint["errors"] == [] and [m for m in lint["messages"] if m["severity"] >= 3] == []

    fullname, ns = scope.local("fullname"), scope.var["namespace"]
    watched = [] if scope.var["watch_all_namespaces"] else scope.var["team_namespaces"]
    assert {o["metadata"].get("namespace") for o in objs} <= {None, ns, *watched}
    op = env_of(objs, f"{fullname}-operator")
    # the Secret the module creates in each team namespace is the one the operator hands to pods
    assert op["KILN_S3_SECRET"] == scope.var["workload_secret_name"]
    assert op["KILN_S3_SERVING_SECRET"] == (scope.local("serving_secret_name") or scope.var["workload_secret_name"])
    # the endpoint written into the team Secrets is the one the operator uses
    assert op.get("KILN_S3_ENDPOINT", "") == scope.local("s3_endpoint")
    assert op["KILN_BUCKET"] == scope.var["s3_bucket"] and op["AWS_REGION"] == scope.var["s3_region"]
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    if scope.local("create_operator_secret"):
        assert op["envFrom"] == [scope.local("operator_secret_name")]
        assert scope.local("operator_secret_name") not in secrets  # the module's Secret, not a second one
    elif scope.var["trial_seaweedfs"]:
        assert op["envFrom"] == [f"{fullname}-s3"] and f"{fullname}-s3" in secrets
        assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == f"{fullname}-seaweedfs" for o in objs)
        assert any(o["kind"] == "Job" for o in objs)  # the bucket is created in the trial SeaweedFS
    else:
        assert op["envFrom"] == []  # credentials from the ServiceAccount
    # watched namespaces: the operator's RoleBinding in each
    bindings = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == "RoleBinding"}
    for team in watched:
        assert (team, f"{fullname}-operator") in bindings
    # the gateway_url output names the gateway Service the chart renders
    url = evaluate(MODULE.outputs["gateway_url"]["value"], scope)
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)", url).groups()
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == f"{fullname}-gateway")
    assert host == f"{svc['metadata']['name']}.{ns}.svc" and int(port) in [p["port"] for p in svc["spec"]["ports"]]
    metrics = evaluate(MODULE.outputs["operator_metrics_url"]["value"], scope)
    op_svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == f"{fullname}-operator")
    assert metrics == f"http://{op_svc['metadata']['name']}.{ns}.svc:" + str(
        next(p["port"] for p in op_svc["spec"]["ports"] if p["name"] == "http")) + "/metrics"
    assert evaluate(MODULE.outputs["namespace"]["value"], scope) == ns


def test_the_example_is_a_trial_with_generated_keys_and_the_readme_a_production_install():
    trial, production = example_inputs(), readme_inputs()
    assert trial["trial_seaweedfs"] is True and trial["s3_secret_access_key"] == GENERATED_SECRET
    assert not production.get("trial_seaweedfs") and production["s3_endpoint"].startswith("https://")
    scope, values, _ = rendered_for(trial)
    assert values["s3"]["accessKeyId"] == "kiln" and values["s3"]["existingSecret"] == ""
    scope, values, _ = rendered_for(production)
    assert values["s3"]["accessKeyId"] == "" and values["s3"]["existingSecret"] == scope.local("operator_secret_name")


def test_team_secrets_hold_what_the_workload_pods_need():
    scope = module_scope(CONFIGURATIONS["production-keys-readonly-quota"]())
    workload = evaluate(MODULE.resources[("kubernetes_secret_v1", "workload")]["data"], scope)
    assert set(workload) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "KILN_S3_ENDPOINT"}
    serving = evaluate(MODULE.resources[("kubernetes_secret_v1", "serving")]["data"], scope)
    assert serving["AWS_ACCESS_KEY_ID"] == "AKIAREADONLY"
    aws = module_scope({"s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "secret-example-key"})
    assert "KILN_S3_ENDPOINT" not in evaluate(MODULE.resources[("kubernetes_secret_v1", "workload")]["data"], aws)


def test_preconditions_refuse_half_credentials_and_a_keyless_trial():
    pres = MODULE.resources[("helm_release", "kiln")]["lifecycle"][0]["precondition"]

    def refused(inputs):
        scope = module_scope(inputs)
        return [evaluate(p["error_message"], scope) for p in pres if evaluate(p["condition"], scope) is not True]

    assert refused({"s3_access_key_id": "AKIAEXAMPLE"})
    assert refused({"trial_seaweedfs": True})
    assert refused({"team_namespaces": ["kiln-system"]})
    assert refused({}) == []


# -- the example's Kiln objects ------------------------------------------------------------------------------


def test_the_examples_kiln_objects_are_valid_against_the_crds():
    example = ROOTS[1]
    scope = example_scope()
    names = set()
    for (rtype, _), body in example.resources.items():
        if rtype != "kubernetes_manifest":
            continue
        obj = evaluate(body["manifest"], scope)
        assert obj["apiVersion"] == "kiln.dev/v1alpha1"
        assert obj["metadata"]["namespace"] == scope.var["team_namespace"]
        specs.validate(obj["kind"], obj["spec"])
        names.add(obj["metadata"]["name"])
    assert names == {scope.var["model_name"]}
    assert scope.var["team_namespace"] in example_inputs()["team_namespaces"]


def test_the_evaluator_refuses_what_it_cannot_evaluate():
    with pytest.raises(Exception, match="not evaluated here"):
        evaluate("${file(\"x\")}", Scope())
    with pytest.raises(EvalError):
        evaluate("${var.nope}", Scope())
    assert Parser("a ? b : c").parse()[0] == "cond"


# -- checkov ---------------------------------------------------------------------------------------------------


def test_checkov_findings_are_few_and_each_is_justified_in_the_readme():
    run = subprocess.run([*checkov(), "-d", str(TF), "--skip-download", "--compact", "-o", "json"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert any(r.get("check_type") == "terraform" for r in reports), run.stdout[:2000]
    terraform = next(r for r in reports if r.get("check_type") == "terraform")
    assert terraform["summary"]["parsing_errors"] == 0
    assert terraform["summary"]["resource_count"] >= 8  # it did read the module and the example
    failed = [f for r in reports for f in r.get("results", {}).get("failed_checks", [])]
    ids = sorted({f["check_id"] for f in failed})
    assert len(failed) <= MAX_CHECKOV_FINDINGS, [(f["check_id"], f["resource"]) for f in failed]
    justified = README.read_text().split("## checkov", 1)
    assert len(justified) == 2, "README.md needs a '## checkov' section"
    for check_id in ids:
        assert check_id in justified[1], f"{check_id} is not justified in README.md's checkov section"
