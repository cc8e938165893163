"""Validate a ``--json`` document against the JSON Schema the package ships for its command."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry, Resource

from hotluks.cli.output import FORMAT, schema_name


@functools.cache
def _schemas() -> tuple[dict[str, Any], Registry]:
    folder = resources.files("hotluks").joinpath("schemas")
    schemas = {p.name: json.loads(p.read_text()) for p in folder.iterdir() if p.name.endswith(".json")}
    return schemas, Registry().with_resources((n, Resource.from_contents(s)) for n, s in schemas.items())


def validate(command: str, doc: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is a valid hotluks/1 document of ``command``."""
    schemas, registry = _schemas()
    jsonschema.Draft202012Validator(schemas[schema_name(command)], registry=registry).validate(doc)
    assert doc["format"] == FORMAT and doc["command"] == command, doc
