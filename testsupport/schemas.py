"""Validate a ``--json`` document against the JSON Schema the package ships for its command.

The same schemas :mod:`hotluks.cli.jsoncheck` checks every printed document against while the
test suite runs (``HOTLUKS_JSON_CHECK``, set by :mod:`testsupport.json_check`); this is for
documents a test builds itself (``envelope(...)`` around a runner result) or reads back.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry, Resource

from hotluks.cli.jsoncheck import schemas
from hotluks.cli.output import FORMAT, QMP_KEYS, schema_name


@functools.cache
def _registry() -> Registry:
    return Registry().with_resources((n, Resource.from_contents(s)) for n, s in schemas().items())


def validate(command: str, doc: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is a valid hotluks/1 document of ``command``.

    hotluks' own keys must be snake_case; QMP data inside (``arguments``, ``undo``, …) keeps QEMU's spelling.
    """
    jsonschema.Draft202012Validator(schemas()[schema_name(command)], registry=_registry()).validate(doc)
    assert doc["format"] == FORMAT and doc["command"] == command, doc
    _snake(doc)


def _snake(value: Any, qmp: bool = False) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            assert qmp or "-" not in key, key
            _snake(inner, qmp or key in QMP_KEYS)
    elif isinstance(value, list):
        for inner in value:
            _snake(inner, qmp)
