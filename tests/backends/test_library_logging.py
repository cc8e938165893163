"""As a library, hotluks never configures logging: a NullHandler, no root handlers."""

from __future__ import annotations

import subprocess
import sys


def test_import_adds_a_null_handler_and_leaves_the_root_logger_alone() -> None:
    code = ("import logging, hotluks, hotluks.api, hotluks.backends.select, hotluks.runner.operator; "
            "root = logging.getLogger(); "
            "print(len(root.handlers), root.level,"
            " [type(h).__name__ for h in logging.getLogger('hotluks').handlers],"
            " hotluks.errors.HotluksError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "30", "['NullHandler']", "hotluks.errors"]
