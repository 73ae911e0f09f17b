"""The shared artifact contract: spec validation against the CRDs, storage URIs, cards, checksums."""

import pytest

from kiln_contract import card, checksums, spec, storage

VALID = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "random_forest"}}


def test_valid_spec_gets_the_crd_defaults():
    out = spec.validate("TrainingJob", VALID)
    assert out["split"] == {"testFraction": 0.2, "seed": 42, "stratify": True}
    assert out["export"]["formats"] == ["onnx", "joblib"]
    assert out["retries"] == 1
    assert "search" not in out  # an object with required fields is never invented
    assert VALID == {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "random_forest"}}


@pytest.mark.parametrize(("patch", "field"), [
    ({"algorithm": {"name": "deep_magic"}}, "spec.algorithm.name"),
    ({"split": {"testFraction": 1.5}}, "spec.split.testFraction"),
    ({"split": {"testFraction": 0}}, "spec.split.testFraction"),
    ({"dataset": {"uri": "ftp://x/y.csv"}}, "spec.dataset.uri"),
    ({"evaluation": {"gates": [{"metric": "accuracy", "op": "=>", "value": 0.9}]}}, "spec.evaluation.gates[0].op"),
])
def test_invalid_spec_names_the_field(patch, field):
    with pytest.raises(spec.SpecError) as err:
        spec.validate("TrainingJob", {**VALID, **patch})
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_missing_required_field_is_named():
    with pytest.raises(spec.SpecError) as err:
        spec.validate("TrainingJob", {"dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "knn"}})
    assert err.value.field == "spec.model"


def test_every_schema_field_has_a_description():
    def walk(node, path):
        if not isinstance(node, dict):
            return
        for name, sub in node.get("properties", {}).items():
            if name not in ("metadata",):
                assert sub.get("description"), f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    for kind in spec.KIND_FILES:
        walk(spec.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"], kind)


def test_storage_uris():
    loc = storage.parse_s3("s3://kiln/models/iris")
    assert (loc.bucket, loc.key) == ("kiln", "models/iris")
    assert loc.child("v3", "model.onnx").uri == "s3://kiln/models/iris/v3/model.onnx"
    assert storage.version_prefix("s3://kiln/models/", "iris", 3) == "s3://kiln/models/iris/v3"
    assert storage.card_uri("s3://kiln/models/iris/v3") == "s3://kiln/models/iris/v3/modelcard.json"
    with pytest.raises(ValueError):
        storage.parse_s3("https://kiln/models")


def test_card_check_and_round_trip():
    good = {k: {} for k in card.REQUIRED_KEYS} | {
        "artifacts": [{"file": "model.onnx", "format": "onnx", "sha256": "a" * 64, "bytes": 3}],
        "gates": [{"metric": "accuracy", "passed": True}], "task": "classification"}
    assert card.loads(card.dumps(good))["artifacts"][0]["file"] == "model.onnx"
    assert card.artifact(good, "onnx")["bytes"] == 3 and card.artifact(good, "joblib") is None
    assert card.gates_passed(good)
    with pytest.raises(card.CardError, match="metrics"):
        card.check({k: v for k, v in good.items() if k != "metrics"})
    with pytest.raises(card.CardError, match="sha256"):
        card.check(good | {"artifacts": [{"file": "x", "format": "onnx", "bytes": 1}]})


def test_checksums(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"kiln")
    assert checksums.sha256_file(f) == checksums.sha256_bytes(b"kiln")
    checksums.verify("a.bin", checksums.sha256_bytes(b"kiln").upper(), checksums.sha256_file(f))
    with pytest.raises(checksums.ChecksumMismatch, match="a.bin"):
        checksums.verify("a.bin", "0" * 64, checksums.sha256_file(f))


def test_every_example_manifest_matches_its_crd():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "examples"
    kinds = {}
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "kiln.dev/v1alpha1":
                spec.validate(doc["kind"], doc.get("spec") or {})
                kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    assert set(kinds) == {"TrainingJob", "Model", "Deployment"}, kinds
