"""The IPsecPeering CRD's own schema as a validator: structural defaults and JSON Schema checks.

Used to check example peerings in docs and tests the way the API server would
(CEL rules aside; `peering.parse_peering` implements those and more).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any, cast

import jsonschema
import yaml

CRD_PATH = Path(os.environ.get("IPSEC_MESH_CRD", Path(__file__).resolve().parents[3] / "crds" / "ipsecpeerings.yaml"))


@functools.lru_cache(maxsize=None)
def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(path.read_text()))


def openapi_schema(version: str = "v1alpha1") -> dict[str, Any]:
    for entry in load_crd()["spec"]["versions"]:
        if entry["name"] == version:
            return cast(dict[str, Any], entry["schema"]["openAPIV3Schema"])
    raise KeyError(version)


def apply_defaults(obj: Any, schema: dict[str, Any] | None = None) -> Any:
    """A copy of `obj` with the schema's defaults filled in, as the API server does on create."""
    schema = openapi_schema() if schema is None else schema
    obj = copy.deepcopy(obj)
    _default(obj, schema)
    return obj


def _default(obj: Any, schema: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                _default(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in obj.items():
                if name not in (schema.get("properties") or {}):
                    _default(value, extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _default(item, schema["items"])


def _json_schema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to plain JSON Schema: drop x-kubernetes-*, close objects."""
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _json_schema(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    out.pop("format", None)
    # Structural schemas prune unknown fields; --strict clients reject them. Reject here too.
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def validate(obj: dict[str, Any]) -> list[str]:
    """Schema problems of a custom resource (after defaulting); empty when valid."""
    schema = _json_schema(openapi_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(apply_defaults(obj)), key=lambda e: list(map(str, e.path)))
    ]
