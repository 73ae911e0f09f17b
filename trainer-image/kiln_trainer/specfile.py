"""Reading the TrainingJob spec: from a file (YAML or JSON, whole manifest or bare spec)
or from the KILN_SPEC environment variable, validated by kiln_contract.spec — the one
definition of the spec, which also applies the CRD's defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from kiln_contract import spec as contract_spec
from kiln_trainer.errors import BadInput

SPEC_ENV = "KILN_SPEC"


def _unwrap(doc) -> dict:
    """A whole TrainingJob manifest yields its .spec; a bare spec is returned as is."""
    if isinstance(doc, dict) and "spec" in doc and ("kind" in doc or "apiVersion" in doc or len(doc) == 1):
        kind = doc.get("kind")
        if kind not in (None, "TrainingJob"):
            raise BadInput("kind", f"expected a TrainingJob manifest, got kind {kind!r}")
        return doc["spec"]
    return doc


def parse(text: str, source: str) -> dict:
    """One spec from YAML or JSON text; of several YAML documents, the TrainingJob."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]  # JSON is YAML: one parser reads both
    except yaml.YAMLError as exc:
        raise BadInput("spec", f"{source} is neither YAML nor JSON: {exc}") from exc
    if len(docs) > 1:
        jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "TrainingJob"]
        if len(jobs) != 1:
            raise BadInput("spec", f"{source} holds {len(docs)} documents and {len(jobs)} TrainingJobs; need one")
        docs = jobs
    doc = docs[0] if docs else None
    if not isinstance(doc, dict):
        raise BadInput("spec", f"{source} must hold an object (a TrainingJob or its spec)")
    return _unwrap(doc)


def load(path: str | None, environ=os.environ) -> dict:
    """The raw (unvalidated) spec from --spec, else from $KILN_SPEC."""
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise BadInput("spec", f"cannot read spec file {path}: {exc.strerror or exc}") from exc
        return parse(text, path)
    text = environ.get(SPEC_ENV)
    if text:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput("spec", f"${SPEC_ENV} is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise BadInput("spec", f"${SPEC_ENV} must hold a JSON object")
        return _unwrap(doc)
    raise BadInput("spec", f"no spec given: pass --spec FILE or set ${SPEC_ENV}")


def validate(raw: dict) -> dict:
    """The spec with the CRD's defaults applied, or BadInput naming the first bad field."""
    try:
        return contract_spec.validate("TrainingJob", raw)
    except contract_spec.SpecError as exc:
        raise BadInput(exc.field, str(exc).split(": ", 1)[-1]) from exc
