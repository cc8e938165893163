"""``HOTLUKS_JSON_CHECK=LOG``: every ``--json`` document is validated before it is printed.

A test-suite aid (the root pytest plugin sets it for the whole session, so CLIs run as
subprocesses inherit it): each document is checked against the JSON Schema the package ships
for its command (``hotluks/schemas/<command>.json``); a command that has no schema of its own
may only print error documents (``error.json``). A valid document appends one line to
``LOG``: the command's name, a tab and the schema files it matched; an invalid one is not printed: the command says why on stderr and
exits 70. Only :mod:`hotluks.cli.output` imports this module, and only when the variable is set
(jsonschema is a test dependency, not a runtime one).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping
from importlib import resources
from typing import Any

ENV = "HOTLUKS_JSON_CHECK"
EXIT_INVALID = 70


@functools.cache
def schemas() -> dict[str, Any]:
    """Every shipped schema by file name (``luks-dump.json`` → its document)."""
    folder = resources.files("hotluks").joinpath("schemas")
    return {p.name: json.loads(p.read_text()) for p in folder.iterdir() if p.name.endswith(".json")}


def schema_for(command: str, doc: Mapping[str, Any]) -> str:
    """The schema file a document of ``command`` must satisfy."""
    from hotluks.cli.output import schema_name

    name = schema_name(command)
    if name in schemas():
        return name
    if doc.get("ok") is False and "error" in doc:
        return "error.json"  # a command whose only JSON is its error document
    raise LookupError(f"no schema for the --json output of {command!r} (add hotluks/schemas/{name})")


def problem(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(schema files, None)`` when ``doc`` is valid, else ``(schema file or None, why not)``.

    The schema files are the command's and those of the ``oneOf`` branch the document took
    (``attach.json error.json``, ``status.json status-all.json``), space-separated.

    Raises ``ModuleNotFoundError`` when jsonschema is not installed.
    """
    import jsonschema  # type: ignore[import-untyped]
    from referencing import Registry, Resource

    command = doc.get("command")
    if not isinstance(command, str):
        return None, f"the document has no command name: {dict(doc)!r:.200}"
    try:
        name = schema_for(command, doc)
    except LookupError as exc:
        return None, str(exc)
    registry = _registry(Registry, Resource)
    validator = jsonschema.Draft202012Validator(schemas()[name], registry=registry)
    errors = list(validator.iter_errors(doc))
    if not errors:
        taken = [ref for entry in schemas()[name].get("oneOf", ()) if isinstance(ref := entry.get("$ref"), str)
                 and ref != name and jsonschema.Draft202012Validator(schemas()[ref], registry=registry).is_valid(doc)]
        return " ".join([name, *taken]), None
    one_of = next((e for e in errors if e.validator == "oneOf" and not e.absolute_path), None)
    first = _meant(one_of, schemas()[name], doc) if one_of else jsonschema.exceptions.best_match(errors)
    where = "/".join(str(p) for p in first.absolute_path) or "(top)"
    return name, f"at {where}: {first.message}"


def _meant(error: Any, schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Any:
    """For a top-level ``oneOf`` (payload | error.json), the error inside the branch ``ok`` points to."""
    branches = schema.get("oneOf")
    if not branches or not error.context:
        return error
    wants_error = doc.get("ok") is False
    index = next((i for i, b in enumerate(branches) if (b.get("$ref") == "error.json") == wants_error), None)
    inside = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == index]
    import jsonschema

    return jsonschema.exceptions.best_match(inside) if inside else error


_REGISTRY: Any = None


def _registry(registry_type: Any, resource_type: Any) -> Any:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = registry_type().with_resources(
            (n, resource_type.from_contents(s)) for n, s in schemas().items())
    return _REGISTRY


def check(doc: Mapping[str, Any], log: str) -> None:
    """Validate ``doc`` and log its command, or say why it is invalid and exit 70."""
    try:
        name, why = problem(doc)
    except ModuleNotFoundError as exc:
        print(f"hotluks: {ENV} is set but {exc.name} is not installed: --json output not validated",
              file=sys.stderr)
        return
    command = doc.get("command")
    if why is not None:
        print(f"hotluks: internal error: the --json document of {command!r} does not match "
              f"hotluks/schemas/{name or '?'}: {why} ({ENV})", file=sys.stderr)
        sys.stdout.flush()
        raise SystemExit(EXIT_INVALID)
    line = f"{command}\t{name}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one short O_APPEND write: whole lines even from parallel processes
    finally:
        os.close(fd)
