"""A subset of the table corpus through the real path: the table as a CSV (or Parquet) object in
SeaweedFS, a Model and a TrainingJob on the local cluster, the trainer pod, the version in S3; then
the registered version served straight from S3 by `python -m kiln_server` (ONNX Runtime), whose
predictions over OIP V2 (tensors named as the user's columns) equal the registered Pipeline's."""

from __future__ import annotations

import io
import json

import joblib
import numpy as np
import pytest
import table_corpus
from kube_helpers import create, get, wait_until
from server_support import Server, infer
from test_table_corpus import held_out, v2_body

from kiln_contract import storage

pytestmark = pytest.mark.integration

SUBSET = [("colliding_names", "csv", "logistic_regression"), ("unicode_names", "parquet", "random_forest"),
          ("brackets_missing", "csv", "xgboost")]


def _put(uri: str, data: bytes) -> None:
    loc = storage.parse_s3(uri)
    storage.s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)


def _get(uri: str) -> bytes:
    loc = storage.parse_s3(uri)
    return storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def test_corpus_subset_trains_from_seaweedfs_through_trainingjobs_and_serves(custom, kiln_ns, s3_env, tmp_path):
    names = {}
    for i, (table_name, fmt, algo) in enumerate(SUBSET):
        table = table_corpus.build(table_name)
        path = table_corpus.write(table, tmp_path, fmt)
        uri = f"s3://{s3_env['KILN_BUCKET']}/datasets/{kiln_ns}/{path.name}"  # the namespace's own prefix
        _put(uri, path.read_bytes())
        model = f"corpus-{i}"
        create(custom, kiln_ns, "models", "Model", model, {"promotion": {"policy": "auto"}})
        spec = table_corpus.spec_for(table, algo, uri, fmt)
        spec["model"] = model
        create(custom, kiln_ns, "trainingjobs", "TrainingJob", model, spec)
        names[model] = (table, algo)

    for model, (table, _algo) in names.items():
        def done(model=model):
            st = get(custom, kiln_ns, "trainingjobs", model).get("status") or {}
            return st if st.get("phase") in ("Succeeded", "Failed") else None

        status = wait_until(done, 240, f"TrainingJob {model} to finish", interval=0.5)
        assert status["phase"] == "Succeeded", (table.name, status)
        mst = wait_until(lambda model=model: (get(custom, kiln_ns, "models", model).get("status") or {}).get(
            "versions"), 60, f"Model {model} to register its version")
        version = mst[0]
        card = json.loads(_get(f"{version['uri']}/modelcard.json"))
        assert card["createdAt"] and card["exportWithheld"] == {}, card.get("exportWithheld")
        assert card["features"]["names"] == [c for c in table.frame.columns if c != table.target]
        X_test, layout = held_out(card)  # the dataset read back from S3, split as the trainer split it
        pipe = joblib.load(io.BytesIO(_get(f"{version['uri']}/model.joblib")))
        want = pipe.predict(layout.model_input(X_test))
        if (card["export"].get("joblib") or {}).get("predictsClassIndex"):
            want = np.asarray(card["features"]["classes"], dtype=object)[np.asarray(want, dtype=int)]
        server = Server(version["uri"], "m", "--runtime", "onnx", env=dict(s3_env)).start(timeout=60)
        try:
            status_code, body = infer(server, v2_body(X_test, layout), "/v2/models/m/infer")
            assert status_code == 200, body
            label = next(o for o in body["outputs"] if o["name"] == "label")["data"]
            if card["task"] == "regression":
                np.testing.assert_allclose(np.asarray(label, dtype=float), np.asarray(want, dtype=float), rtol=1e-4)
            else:
                assert [str(v) for v in label] == [str(v) for v in want]
        finally:
            server.stop()
