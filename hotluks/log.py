"""hotluks' loggers: as a library hotluks never configures logging, ``hotluks.*`` end in a NullHandler.

Only the modules that log import this module (and with it :mod:`logging`, about 7 ms of
imports): ``import hotluks`` and the pure commands (``plan``, ``cold-cmdline``) stay without it.
"""

from __future__ import annotations

import logging

logging.getLogger("hotluks").addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (below ``hotluks``, whose NullHandler is in place)."""
    return logging.getLogger(name)
