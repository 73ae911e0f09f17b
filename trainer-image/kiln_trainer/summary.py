"""The run's one-line JSON summary: printed last on stdout and written to the termination-message
file, where the operator reads it from the pod's status.

Success: {"status": "Succeeded", "task", "algorithm", "metrics", "mainMetric": "name=value",
          "gatesPassed", "sha256" (primary artifact: onnx if present else joblib), "primaryArtifact",
          "formats", "exportWithheld" ({format: reason}; {} when every requested format was produced),
          "output", "rows", "dataset": {uri, sha256, rows}, "bestParams", "durations"}
Failure: {"status": "Failed", "reason": "BadInput"|"DataUnavailable"|"Error", "message": "..."}

The termination file is $KILN_TERMINATION_LOG when set (written when its directory exists and is
writable), else /dev/termination-log — only when that file already exists, as it does when the
kubelet mounts it, so running the trainer outside a pod leaves /dev alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from kiln_contract import card as contract_card
from kiln_trainer import modelcard
from kiln_trainer.evaluation import LOWER_IS_BETTER

log = logging.getLogger(__name__)

TERMINATION_ENV = "KILN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE = 900  # the whole line stays far below the kubelet's 4 KiB cap
MAX_LINE = 3500


def main_metric(card: dict) -> str | None:
    name = card.get("mainMetric", {}).get("name")
    value = card["metrics"].get(name) if name else None
    return f"{name}={value:.4f}" if isinstance(value, int | float) else None


def succeeded(card: dict, output_uri: str, durations: dict) -> dict:
    art = modelcard.primary(card["artifacts"])
    line = {
        "status": "Succeeded",
        "task": card["task"],
        "algorithm": card["spec"]["algorithm"]["name"],
        "metrics": card["metrics"],
        "mainMetric": main_metric(card),
        "lowerIsBetter": card.get("mainMetric", {}).get("name") in LOWER_IS_BETTER,
        "gatesPassed": contract_card.gates_passed(card),
        "sha256": art["sha256"] if art else None,
        "primaryArtifact": art["file"] if art else None,
        "formats": [a["format"] for a in card["artifacts"]],
        # requested formats not produced, reasons cut short (the card's exportWithheld has them whole)
        "exportWithheld": {fmt: _short(why) for fmt, why in contract_card.withheld_formats(card).items()},
        "output": output_uri,
        "rows": card["dataset"]["rows"],
        "dataset": {k: card["dataset"][k] for k in ("uri", "sha256", "rows")},
        "bestParams": card.get("bestParams", {}),
        "durations": durations,
    }
    return modelcard.jsonable(line)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failed(reason: str, message: str) -> dict:
    message = " ".join(str(message).split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return {"status": "Failed", "reason": reason, "message": message}


def encode(summary: dict) -> str:
    line = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    if len(line.encode()) > MAX_LINE and "bestParams" in summary:
        summary = {**summary, "bestParams": {"truncated": True}}
        line = json.dumps(summary, separators=(",", ":"), sort_keys=True)
    return line


def termination_path(environ=os.environ) -> Path | None:
    explicit = environ.get(TERMINATION_ENV)
    if explicit:
        path = Path(explicit)
        return path if path.parent.is_dir() and os.access(path.parent, os.W_OK) else None
    path = Path(DEFAULT_TERMINATION_LOG)
    return path if path.exists() and os.access(path, os.W_OK) else None


def emit(summary: dict, stream, environ=os.environ) -> str:
    line = encode(summary)
    stream.write(line + "\n")
    stream.flush()
    path = termination_path(environ)
    if path is not None:
        try:
            path.write_text(line)
        except OSError as exc:
            log.warning("cannot write the termination message to %s: %s", path, exc)
    return line
