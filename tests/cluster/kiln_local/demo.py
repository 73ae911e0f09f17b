"""`make demo`: train iris, register it, serve it, and ask it for predictions — on the local cluster."""

from __future__ import annotations

import sys
import time

from kiln_local.cluster import GATEWAY, TESTER, TESTER_NAMESPACE, kubectl
from kiln_local.gateway_client import infer
from kiln_local.paths import REPO

NAMESPACE = "default"
TIMEOUT = 300


def show(*args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    out = kubectl(*args, check=False)
    sys.stdout.write(out.stdout or out.stderr)


def wait_for(what: str, check) -> None:
    print(f"[demo] waiting for {what} …", flush=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise SystemExit(f"[demo] {what} did not happen within {TIMEOUT}s; see .kiln/logs/ and kubectl describe")


def jsonpath(kind: str, name: str, path: str) -> str:
    return kubectl("get", kind, name, "-n", NAMESPACE, "-o", f"jsonpath={path}", check=False).stdout.strip()


def main() -> int:
    t0 = time.monotonic()
    for example in ("iris-trainingjob.yaml", "iris-deployment.yaml"):
        show("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / example))
    wait_for("the TrainingJob to succeed",
             lambda: jsonpath("trainingjobs.kiln.dev", "iris", "{.status.phase}") in ("Succeeded", "Failed"))
    if jsonpath("trainingjobs.kiln.dev", "iris", "{.status.phase}") == "Failed":
        show("describe", "trainingjobs.kiln.dev", "iris", "-n", NAMESPACE)
        return 1
    wait_for("the Deployment to be Ready", lambda: jsonpath(
        "deployments.kiln.dev", "iris", '{.status.conditions[?(@.type=="Ready")].status}') == "True")
    show("get", "kiln", "-n", NAMESPACE)
    show("get", "deployments.apps,pods,services", "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=kiln")

    from sklearn.datasets import load_iris

    data = load_iris()
    picks = [0, 1, 50, 51, 100, 101]
    rows = [[float(x) for x in data.data[i]] for i in picks]
    print(f"\n$ POST http://{GATEWAY}/{NAMESPACE}/iris/v2/models/iris/infer  ({len(rows)} rows, "
          f"Authorization: Bearer <token of ServiceAccount {TESTER_NAMESPACE}/{TESTER}>)", flush=True)
    status, answer = infer(NAMESPACE, "iris", "iris", rows)
    if status != 200:
        raise SystemExit(f"[demo] prediction failed with {status}: {answer}")
    labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
    print(f"model {answer['model_name']} version {answer.get('model_version')}")
    print(f"{'sepal len':>9} {'sepal wid':>9} {'petal len':>9} {'petal wid':>9}  {'predicted':>10}  {'actual':>10}")
    for row, label, i in zip(rows, labels, picks, strict=True):
        name = data.target_names[int(label)] if str(label).lstrip("-").isdigit() else label
        actual = data.target_names[data.target[i]]
        print(f"{row[0]:9.1f} {row[1]:9.1f} {row[2]:9.1f} {row[3]:9.1f}  {name:>10}  {actual:>10}")
    print(f"\n[demo] done in {time.monotonic() - t0:.0f}s. Try: export KUBECONFIG=$PWD/.kiln/kubeconfig; "
          "kubectl get kiln; kubectl describe tj iris")
    return 0


if __name__ == "__main__":
    sys.exit(main())
