"""Helpers for the server tests: model version directories built here, by the card contract alone,
and the server run as a real process (`Server`, `infer`, `v2_matrix`).

Not the trainer's code: a scikit-learn Pipeline, its ONNX export (zipmap disabled) and a
modelcard.json with every REQUIRED_KEY, written with kiln_contract.card.dumps. The tests
that check the helper itself are in test_server_support.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np

from kiln_contract import MODEL_CARD
from kiln_contract import card as cards
from kiln_contract.checksums import sha256_file


def _card(task, names, dtypes, categories, classes, distributions, signature, artifacts, params):
    card = {
        "metrics": {"accuracy": 0.95} if task == "classification" else {"r2": 0.5},
        "gates": [],
        "params": params,
        "artifacts": artifacts,
        "dataset": {"uri": "builtin:test", "sha256": "0" * 64, "rows": 100, "columns": len(names) + 1},
        "features": {"names": names, "dtypes": dtypes, "categories": categories, "distributions": distributions,
                     "target": "target", "classes": classes},
        "libraries": {"python": sys.version.split()[0]},
        "spec": {"model": "test"},
        "timings": {"fit": 0.1},
        "device": {"kind": "cpu"},
        "task": task,
    }
    if signature:
        card["signature"] = signature
    return card


def _distributions(frame_cols: dict) -> dict:
    """Numeric training profiles: {kind, count, mean, histogram: {edges (11), counts (10)}}."""
    out = {}
    for name, col in frame_cols.items():
        col = np.asarray(col, dtype=float)
        counts, edges = np.histogram(col, bins=10)
        out[name] = {"kind": "numeric", "count": int(col.size), "missing": 0, "mean": float(col.mean()),
                     "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return out


def build_model(kind: str):
    """(pipeline, X as the pipeline takes it, y, names, categorical mask) for one reference model."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if kind in ("rf", "logreg"):
        data = load_breast_cancer()
        X, y = data.data, data.target
        names = [str(n) for n in data.feature_names]
        est = (RandomForestClassifier(n_estimators=20, random_state=0) if kind == "rf"
               else LogisticRegression(max_iter=2000))
        pipe = Pipeline([("scale", StandardScaler()), ("model", est)]).fit(X, y)
        return pipe, X, y, names, [False] * len(names)
    if kind == "regression":
        data = load_diabetes()
        names = [str(n) for n in data.feature_names]
        pipe = Pipeline([("scale", StandardScaler()), ("model", LinearRegression())]).fit(data.data, data.target)
        return pipe, data.data, data.target, names, [False] * len(names)
    if kind == "categorical":
        import pandas as pd
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import OneHotEncoder

        rng = np.random.default_rng(0)
        n = 300
        frame = pd.DataFrame({
            "size": rng.normal(10, 3, n),
            "color": rng.choice(["red", "green", "blue"], n),
            "weight": rng.normal(5, 1, n),
        })
        y = np.where((frame["size"] > 10) ^ (frame["color"] == "red"), "big", "small")
        ct = ColumnTransformer([("num", StandardScaler(), ["size", "weight"]),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), ["color"])])
        pipe = Pipeline([("prep", ct), ("model", LogisticRegression())]).fit(frame, y)
        return pipe, frame, y, list(frame.columns), [False, True, False]
    raise ValueError(kind)


def write_version(directory: Path, kind: str = "rf", formats=("onnx", "joblib"), signature: bool = True) -> dict:
    """Write model.onnx / model.joblib and modelcard.json (last) into directory; return what tests need."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe, X, y, names, categorical = build_model(kind)
    task = "regression" if kind == "regression" else "classification"
    artifacts = []
    if "onnx" in formats:
        if any(categorical):
            initial = [(n, StringTensorType([None, 1]) if c else FloatTensorType([None, 1]))
                       for n, c in zip(names, categorical, strict=True)]
            sig_inputs = [{"name": n, "datatype": "BYTES" if c else "FP32", "shape": [-1, 1]}
                          for n, c in zip(names, categorical, strict=True)]
        else:
            initial = [("input", FloatTensorType([None, len(names)]))]
            sig_inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, len(names)]}]
        options = {id(pipe.steps[-1][1]): {"zipmap": False}} if task == "classification" else None
        onx = to_onnx(pipe, initial_types=initial, options=options)
        outputs = [o.name for o in onx.graph.output]
        (directory / "model.onnx").write_bytes(onx.SerializeToString())
    if "joblib" in formats:
        joblib.dump(pipe, directory / "model.joblib")
    for fmt in formats:
        path = directory / cards.FORMAT_FILES[fmt]
        artifacts.append({"file": path.name, "format": fmt, "sha256": sha256_file(path),
                          "bytes": path.stat().st_size})
    sig = None
    if signature and "onnx" in formats:
        sig = {"inputs": sig_inputs,
               "outputs": {"label": outputs[0], **({"probabilities": outputs[1]} if len(outputs) > 1 else {})}}
    if any(categorical):
        numeric_cols = {n: X[n] for n, c in zip(names, categorical, strict=True) if not c}
        dtypes = {n: ("object" if c else "float64") for n, c in zip(names, categorical, strict=True)}
        categories = {n: sorted(set(X[n])) for n, c in zip(names, categorical, strict=True) if c}
    else:
        numeric_cols = {n: X[:, j] for j, n in enumerate(names)}
        dtypes = {n: "float64" for n in names}
        categories = {}
    classes = [c.item() if hasattr(c, "item") else c for c in pipe.classes_] if task == "classification" else None
    card = _card(task, names, dtypes, categories, classes, _distributions(numeric_cols), sig, artifacts,
                 {k: str(v) for k, v in pipe.steps[-1][1].get_params().items()})
    (directory / MODEL_CARD).write_bytes(cards.dumps(card))
    return {"dir": directory, "pipeline": pipe, "X": X, "y": y, "names": names, "card": card,
            "categorical": categorical}


_BUILT: dict = {}


def model_version(kind: str = "rf", formats=("onnx", "joblib")) -> dict:
    """write_version() once per test session and kind; the directory is removed at exit."""
    key = (kind, tuple(formats))
    if key not in _BUILT:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="kiln-test-model-"))
        atexit.register(shutil.rmtree, root, True)
        _BUILT[key] = write_version(root / "v1", kind, formats)
    return _BUILT[key]


# --- running the server as a real process ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m kiln_server` on a free loopback port; stopped (and reaped) by stop()."""

    def __init__(self, model: str, name: str = "bc", *args: str, env: dict | None = None, log: Path | None = None):
        self.port = free_port()
        self.name = name
        self.argv = [sys.executable, "-m", "kiln_server", "--model", str(model), "--name", name,
                     "--port", str(self.port), "--host", "127.0.0.1", *args]
        self.env = {**os.environ, "KILN_LOG_LEVEL": "warning", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = log  # where stdout and stderr go; None: pipes, read at stop (a chatty server can fill them)

    def start(self, timeout: float = 30.0) -> Server:
        if self.log is None:
            out = err = subprocess.PIPE
        else:
            out = err = open(self.log, "ab")  # noqa: SIM115 - the child holds it; closed below
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=err)
        finally:
            if self.log is not None:
                out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                text = err.decode() if err is not None else Path(self.log).read_text(errors="replace")
                raise RuntimeError(f"server exited {self.proc.returncode}: {text[-3000:]}")
            with contextlib.suppress(OSError):
                status, _ = self.request("GET", "/v2/health/ready", timeout=1)
                if status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not become ready")

    def run_to_exit(self, timeout: float = 60.0) -> tuple[int, str]:
        """For servers that must refuse to start: (exit code, stderr)."""
        proc = subprocess.run(self.argv, env=self.env, capture_output=True, timeout=timeout)
        return proc.returncode, proc.stderr.decode()

    def request(self, method: str, path: str, body=None, timeout: float = 10, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if body is not None and not isinstance(body, bytes | str):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            ctype = resp.getheader("content-type", "")
            return resp.status, (json.loads(data) if data and "json" in ctype else data.decode())
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.communicate()
        return self.proc.returncode


def proc_status(pid: int) -> dict[str, int]:
    """/proc/<pid>/status sizes in bytes: VmRSS (resident now), VmHWM (the peak so far), ... (Linux)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_exchange(port: int, chunks, timeout: float = 10.0,
                 read_limit: int = 1 << 20) -> tuple[int | None, bytes, float]:
    """Send chunks (bytes, or an iterable of them) on a fresh connection while reading the answer.

    The answer is read concurrently so that a server refusing a request half-sent is heard even
    when the rest of the sending fails (reset, broken pipe). Returns (status of the first response or
    None, everything read until the server closed or `timeout` passed, seconds until then).
    """
    import threading

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if isinstance(chunks, bytes):
        chunks = [chunks]

    def write() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed: what it answered is what matters

    t0 = time.monotonic()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    data = b""
    try:
        while len(data) < read_limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # TimeoutError: the server neither answered nor closed; ConnectionResetError
        pass
    elapsed = time.monotonic() - t0
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the writer if it is blocked sending
    sock.close()
    writer.join(timeout)
    status = None
    if data.startswith(b"HTTP/1."):
        with contextlib.suppress(IndexError, ValueError):
            status = int(data.split(b" ", 2)[1])
    return status, data, elapsed


def infer(server: Server, body, path: str = "/v2/models/bc/infer"):
    """POST body (bytes, str, or an object sent as JSON) to an infer route: (status, JSON body or text)."""
    return server.request("POST", path, body)


def v2_matrix(rows: np.ndarray, name: str = "input", datatype: str = "FP32", rid: str | None = None) -> dict:
    rows = np.asarray(rows, dtype=float)
    body = {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": datatype,
                        "data": rows.reshape(-1).tolist()}]}
    if rid is not None:
        body["id"] = rid
    return body
