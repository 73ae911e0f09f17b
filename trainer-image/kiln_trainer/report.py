"""report.html: one self-contained page per version (plots are PNGs embedded as base64):
metrics, gates, confusion matrix or residual plot, feature importances where the model has
them, cleaning counts, search and export results."""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from kiln_trainer.algorithms import CLASSIFICATION

TOP_IMPORTANCES = 20


def _png(fig) -> str:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # column names in scripts the bundled font lacks (CJK…) draw as boxes: no reason to warn the user
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: dict) -> str:
    plt = _pyplot()
    labels = [str(x) for x in confusion["labels"]]
    matrix = np.asarray(confusion["matrix"])
    size = max(3.5, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title("Confusion matrix (test split)")
    return _png(fig)


def residual_png(y_true, y_pred) -> str:
    plt = _pyplot()
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.8), layout="constrained")
    a.scatter(y_true, y_pred, s=10, alpha=0.6)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    a.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    a.set_xlabel("actual")
    a.set_ylabel("predicted")
    a.set_title("Predicted vs actual")
    b.scatter(y_pred, y_true - y_pred, s=10, alpha=0.6)
    b.axhline(0, color="grey", linewidth=1)
    b.set_xlabel("predicted")
    b.set_ylabel("residual")
    b.set_title("Residuals (test split)")
    return _png(fig)


def importances_png(importances: list[tuple[str, float]]) -> str:
    plt = _pyplot()
    names = [n for n, _ in importances][::-1]
    values = [v for _, v in importances][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    ax.barh(range(len(names)), values)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Feature importances")
    return _png(fig)


def importances(estimator, names: list[str]) -> list[tuple[str, float]]:
    """Top importances (or |coefficients|) of the fitted estimator, by transformed feature."""
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        coef = getattr(estimator, "coef_", None)
        if coef is None:
            return []
        coef = np.abs(np.asarray(coef, dtype=float))
        values = coef.mean(axis=0) if coef.ndim == 2 else coef
    values = np.asarray(values, dtype=float).ravel()
    if len(names) != len(values):
        names = [f"f{i}" for i in range(len(values))]
    order = np.argsort(values)[::-1][:TOP_IMPORTANCES]
    return [(names[i], float(values[i])) for i in order]


def _table(rows, header=None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.pass{color:#070}.fail{color:#b00}img{max-width:100%}"""


def render(card: dict, y_true, y_pred, estimator, feature_names: list[str]) -> str:
    """The page for a finished run; card holds everything but the images' inputs."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Kiln report: "
             f"{html.escape(card['spec']['model'])}</title><style>{CSS}</style></head><body>"]
    passed = all(g["passed"] for g in card["gates"])
    verdict = "<span class='pass'>passed</span>" if passed else "<span class='fail'>FAILED</span>"
    spec = card["spec"]
    parts.append(f"<h1>{html.escape(spec['model'])}: {html.escape(spec['algorithm']['name'])} "
                 f"({html.escape(card['task'])})</h1>")
    parts.append(f"<p>Gates {verdict}. Device: {html.escape(card['device']['kind'])}"
                 + (f" — {html.escape(card['device']['warning'])}" if card["device"].get("warning") else "")
                 + "</p>")

    parts.append("<h2>Metrics (held-out split)</h2>")
    parts.append(_table(sorted(card["metrics"].items()), ["metric", "value"]))
    if card["gates"]:
        parts.append("<h2>Gates</h2>")
        parts.append(_table([[g["metric"], g["op"], g["value"], g["actual"], "pass" if g["passed"] else "FAIL"]
                             for g in card["gates"]], ["metric", "op", "threshold", "actual", "result"]))

    if card["task"] == CLASSIFICATION and card.get("evaluation", {}).get("confusionMatrix"):
        parts.append("<h2>Confusion matrix</h2>")
        parts.append(f"<img alt='confusion matrix' src='{confusion_png(card['evaluation']['confusionMatrix'])}'>")
    elif card["task"] != CLASSIFICATION and len(y_true):
        parts.append("<h2>Residuals</h2>")
        parts.append(f"<img alt='residual plot' src='{residual_png(y_true, y_pred)}'>")

    imps = importances(estimator, feature_names)
    if imps:
        parts.append("<h2>Feature importances</h2>")
        parts.append(f"<img alt='feature importances' src='{importances_png(imps)}'>")

    ds = card["dataset"]
    parts.append("<h2>Data</h2>")
    parts.append(_table([["uri", ds["uri"]], ["sha256", ds["sha256"]], ["rows read", ds["rows"]],
                         ["columns", len(ds["columns"])], ["train rows", card["evaluation"]["trainRows"]],
                         ["test rows", card["evaluation"]["testRows"]]]))
    cl = card["cleaning"]
    parts.append("<h2>Cleaning</h2>")
    parts.append(_table([["rows in", cl["rowsIn"]], *[[f"removed by {k}", v] for k, v in cl["rowsRemoved"].items()],
                         ["missing-value policy", cl["missingPolicy"]], ["cells imputed in the Pipeline",
                                                                          cl["imputedCells"]],
                         ["dropped columns", ", ".join(cl["droppedColumns"]) or "none"], ["rows out", cl["rowsOut"]]]))
    if card.get("search"):
        s = card["search"]
        parts.append("<h2>Search</h2>")
        parts.append(_table([[k, s[k]] for k in ("method", "metric", "cvFolds", "candidates", "gridSize", "truncated",
                                                 "bestScore", "bestParams")]))
    parts.append("<h2>Export</h2>")
    parts.append(_table([[a["file"], a["format"], a["bytes"], a["sha256"]] for a in card["artifacts"]],
                        ["file", "format", "bytes", "sha256"]))
    onnx = card["export"].get("onnx")
    if onnx:
        parts.append(_table([[k, v] for k, v in onnx.items()], ["onnx", ""]))
    parts.append("<h2>Parameters</h2>")
    parts.append(_table(sorted(card["params"].items()), ["parameter", "value"]))
    parts.append("<h2>Timings (s)</h2>")
    parts.append(_table(sorted(card["timings"].items())))
    parts.append("<h2>Libraries</h2>")
    parts.append(_table(sorted(card["libraries"].items())))
    if card.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in card["warnings"])
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
