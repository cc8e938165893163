"""Edits of a LUKS2 JSON document, shared by the header-validation tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def set_at(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``doc[a][b]…`` for ``path='a/b/…'``; ``value=KeyError`` deletes it."""
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = doc
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change
