"""Validation of Kiln specs against the CRD schemas in crds/ — the one definition.

The API server enforces these schemas on apply; the trainer (and anything run outside
the cluster) validates the same spec with the same schema, so there is one model of
the spec, not two. Defaults declared in the schema are applied the way the API server
applies them.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml

CRD_DIR = Path(__file__).parent / "crds"
KIND_FILES = {"TrainingJob": "trainingjob.yaml", "Model": "model.yaml", "Deployment": "deployment.yaml"}


class SpecError(ValueError):
    """A spec that does not match its schema; `field` is the dotted path of the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@cache
def crd(kind: str) -> dict:
    return yaml.safe_load((CRD_DIR / KIND_FILES[kind]).read_text())


def spec_schema(kind: str) -> dict:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_defaults(schema: dict, value):
    """Fill schema defaults into a copy of value, as a structural-schema API server does.

    Unlike the API server, an absent optional object with no required fields is
    materialised when its own fields have defaults, so that code reading the spec
    (the trainer) finds every default in one place: the CRD.
    """
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
            elif sub.get("type") == "object" and not sub.get("required"):
                filled = apply_defaults(sub, {})
                if filled:
                    out[name] = filled
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _path(error: jsonschema.ValidationError) -> str:
    parts = ["spec"]
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    path = parts[0] + "".join(parts[1:])
    if error.validator == "required":
        missing = error.message.split("'")[1]
        path = f"{path}.{missing}"
    return path


def without_nulls(value, schema: dict):
    """value with every null member the schema marks `nullable` left out: such a null means unset.

    Optional objects and lists in the CRDs are `nullable`, because a server-side apply that drops one
    from its manifest (a GitOps sync after a field was removed from Git) leaves it null rather than
    absent (kubernetes/kubernetes#103011); everything reading a spec treats such a null as absent.
    Free-form members (estimator params, search grids) are left as they are: there null is a value.
    """
    if isinstance(value, dict) and schema.get("properties"):
        props = schema["properties"]
        return {k: (without_nulls(v, props[k]) if k in props else v) for k, v in value.items()
                if not (v is None and props.get(k, {}).get("nullable"))}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [without_nulls(v, schema["items"]) for v in value]
    return value


def spec_without_nulls(kind: str, spec: dict) -> dict:
    return without_nulls(spec, spec_schema(kind))


def validate(kind: str, spec: dict) -> dict:
    """Return spec with defaults applied, or raise SpecError naming the first bad field."""
    if not isinstance(spec, dict):
        raise SpecError("spec", "must be an object")
    spec = spec_without_nulls(kind, spec)
    schema = spec_schema(kind)
    # OpenAPI v3.0 uses draft-4 style boolean exclusiveMinimum/exclusiveMaximum.
    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        raise SpecError(_path(err), err.message)
    return apply_defaults(schema, spec)
