"""The README's exit-code table and error-class list are the ones in hotluks.errors.

Regenerate the README block with ``python tests/backends/test_errors_doc.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hotluks import errors

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- errors:begin (generated from hotluks/errors.py) -->", "<!-- errors:end -->"


def exit_codes() -> list[tuple[int, str]]:
    """``N meaning`` lines of the errors module's docstring."""
    doc = errors.__doc__ or ""
    return [(int(m.group(1)), m.group(2).strip()) for m in re.finditer(r"(?m)^  (\d) (.+)$", doc)]


def error_block() -> str:
    lines = ["| exit | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {text.replace('``', '`')} |" for code, text in exit_codes()]
    lines += ["", "| error class (`hotluks.errors`) | subclass of | exit | raised when |", "|---|---|---|---|"]
    aliases = {name: value for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.HotluksError) and value.__name__ != name}
    for cls in errors.error_classes():
        parents = ", ".join(f"`{b.__name__}`" for b in cls.__bases__ if b is not Exception)
        also = [name for name, value in aliases.items() if value is cls]
        name = f"`{cls.__name__}`" + (f" (alias {', '.join(f'`{a}`' for a in also)})" if also else "")
        doc = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        lines.append(f"| {name} | {parents or '—'} | {cls.exit_code} | {doc} |")
    return "\n".join([BEGIN, *lines, END])


def readme_block() -> str:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def test_readme_error_table_matches_the_code() -> None:
    assert readme_block() == error_block(), "README error table drifted: run python tests/backends/test_errors_doc.py"


def test_every_error_has_one_root_and_a_documented_exit_code() -> None:
    documented = {code for code, _ in exit_codes()}
    assert documented == {0, 1, 2, 3}
    for cls in errors.error_classes():
        assert issubclass(cls, errors.HotluksError) and cls.exit_code in documented - {0}
    # the agent-facing names narrow the broad ones, so `except InputError` keeps working
    for narrow, broad in [(errors.DomainNotFound, errors.InputError), (errors.NotRunning, errors.InputError),
                          (errors.NotAttached, errors.InputError), (errors.InvalidDisk, errors.InputError),
                          (errors.XMLError, errors.InvalidDisk), (errors.Conflict, errors.RefusedError),
                          (errors.PreflightFailed, errors.RefusedError)]:
        assert issubclass(narrow, broad)
    assert errors.ConflictError is errors.Conflict and errors.RolledBackError is errors.RolledBack
    assert errors.IncompleteError is errors.Incomplete and errors.PreflightError is errors.PreflightFailed
    assert (errors.RolledBack.exit_code, errors.Incomplete.exit_code) == (1, 3)


if __name__ == "__main__":
    text = README.read_text()
    if BEGIN in text:
        text = text.replace(readme_block(), error_block())
    else:
        sys.exit(f"{README} has no {BEGIN} marker")
    README.write_text(text)
