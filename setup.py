"""Build hook: the man page and shell completions are generated from the argparse definitions.

The licence is given here too: setuptools 77+ wants an SPDX expression (PEP 639) and
deprecates pyproject's ``license = {text = ...}`` table, which setuptools 66 (Debian 12, the
oldest we build with) still needs. Everything else is declared in pyproject.toml. The generated files go under build/generated
and are installed as data files (share/man/man1, share/bash-completion, share/zsh).
"""

import sys
from pathlib import Path

import setuptools
from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hotluks.cli.docgen import write_all  # noqa: E402 - needs the source tree on sys.path

data_files = [(target, [str(Path(p).relative_to(HERE))]) for target, p_list in write_all(HERE / "build" / "generated")
              for p in p_list]
LICENSE = {"license_expression": "MIT"} if int(setuptools.__version__.split(".")[0]) >= 77 else {"license": "MIT"}
setup(data_files=data_files, **LICENSE)
