"""The trainer's GPU path on a real GPU: XGBoost fitted with CUDA, exported, served on CPU.

Run on a machine with an NVIDIA GPU and xgboost's CUDA build (`make test-gpu`). Never skipped: where no GPU is
visible the tests fail and say so, since passing them is the only evidence that the CUDA path works (the unit
tests cover the CPU fallback with the same spec). The trainer runs in a subprocess, as in its pod, so the CUDA
context and the `CUDA_VISIBLE_DEVICES` it sees are its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from kiln_trainer import algorithms

ROWS = 200_000
FEATURES = 24


def require_gpu() -> list[str]:
    gpus = algorithms.visible_gpus()
    if not gpus:
        pytest.fail("no GPU visible (nvidia-smi -L lists none): the CUDA path cannot be shown here")
    if not algorithms.xgboost_has_cuda():
        pytest.fail("the installed xgboost is not a CUDA build (xgboost.build_info()['USE_CUDA'] is false)")
    return gpus


def train(spec: dict, out: Path, env: dict | None = None) -> dict:
    spec_path = out.with_suffix(".json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "kiln_trainer", "--spec", str(spec_path), "--output", str(out),
                           "--log-level", "WARNING"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "modelcard.json").read_text())


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A binary task with interactions that deep trees learn: large enough for the GPU to matter."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(ROWS, FEATURES))
    logit = X[:, 0] * X[:, 1] + np.sin(3 * X[:, 2]) + 0.5 * X[:, 3] ** 2 - X[:, 4] + 0.3 * rng.normal(size=ROWS)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(FEATURES)])
    frame["label"] = np.where(logit > np.median(logit), "high", "low")
    path = tmp_path_factory.mktemp("data") / "table.parquet"
    frame.to_parquet(path)
    return path


def spec(uri: str, gpu: int) -> dict:
    return {"model": "gpu-proof", "dataset": {"uri": uri, "target": "label"},
            "algorithm": {"name": "xgboost", "params": {"n_estimators": 300, "max_depth": 8, "learning_rate": 0.1}},
            "resources": {"gpu": gpu, "cpu": str(os.cpu_count() or 1)}, "export": {"formats": ["onnx", "joblib"]}}


def test_builtin_wine_trains_on_cuda(tmp_path):
    gpus = require_gpu()
    card = train({"model": "wine", "dataset": {"uri": "builtin:wine"},
                  "algorithm": {"name": "xgboost", "params": {"n_estimators": 50, "max_depth": 4}},
                  "resources": {"gpu": 1}}, tmp_path / "wine")
    assert card["device"] == {"kind": "cuda", "requestedGpus": 1, "gpus": gpus}, card["device"]
    assert card["params"]["device"] == "cpu"  # the artifact is switched back: it serves on any node
    assert card["metrics"]["accuracy"] > 0.85
    assert card["export"]["onnx"]["status"] == "ok" and card["export"]["onnx"]["parity"]["labelMismatches"] == 0


def test_cuda_model_matches_cpu_model_and_serves_without_a_gpu(table, tmp_path):
    require_gpu()
    gpu_card = train(spec(f"file://{table}", 1), tmp_path / "gpu")
    cpu_card = train(spec(f"file://{table}", 0), tmp_path / "cpu")
    assert gpu_card["device"]["kind"] == "cuda" and cpu_card["device"] == {"kind": "cpu"}
    # the same spec and seed: the GPU's histogram method is not bit-identical to the CPU's, but as good
    for metric in ("accuracy", "roc_auc"):
        assert abs(gpu_card["metrics"][metric] - cpu_card["metrics"][metric]) < 0.01, (metric, gpu_card["metrics"],
                                                                                      cpu_card["metrics"])
    assert gpu_card["metrics"]["accuracy"] > 0.85
    onnx = gpu_card["export"]["onnx"]
    assert onnx["status"] == "ok" and onnx["parity"]["labelMismatches"] == 0, onnx

    # the GPU-trained artifacts answer where no GPU is visible: ONNX Runtime on CPU, and the joblib pipeline in a
    # process with CUDA hidden (a booster left on device=cuda would warn and copy data; it must say cpu)
    rows = pd.read_parquet(table).drop(columns=["label"]).iloc[:2000]
    session = ort.InferenceSession(str(tmp_path / "gpu" / "model.onnx"), providers=["CPUExecutionProvider"])
    (tensor,) = session.get_inputs()  # all-numeric features: one [rows, features] tensor
    onnx_labels = session.run(None, {tensor.name: rows.to_numpy(np.float32)})[0].tolist()
    check = (
        "import joblib, json, sys, pandas as pd\n"
        "m = joblib.load(sys.argv[1]); rows = pd.read_parquet(sys.argv[2]).drop(columns=['label']).iloc[:2000]\n"
        "print(json.dumps({'device': m.steps[-1][1].get_params()['device'], 'labels': m.predict(rows).tolist()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check, str(tmp_path / "gpu" / "model.joblib"), str(table)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["device"] == "cpu"
    classes = gpu_card["features"]["classes"]
    # the joblib pipeline answers with class indices (export.joblib.predictsClassIndex), ONNX with the labels
    assert gpu_card["export"]["joblib"]["predictsClassIndex"] is True
    mismatches = sum(classes[int(i)] != label for i, label in zip(served["labels"], onnx_labels, strict=True))
    assert mismatches <= 2, mismatches  # float32 (ONNX) vs float64 thresholds: a tie at most, as parity allows
    print(f"\nfit on {ROWS} rows x {FEATURES} features, 300 trees of depth 8: GPU {gpu_card['timings']['fit']:.2f} s, "
          f"CPU ({cpu_card['params'].get('n_jobs')} threads) {cpu_card['timings']['fit']:.2f} s; "
          f"accuracy GPU {gpu_card['metrics']['accuracy']:.4f} CPU {cpu_card['metrics']['accuracy']:.4f}; "
          f"GPUs {gpu_card['device']['gpus']}")
