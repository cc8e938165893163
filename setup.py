"""Build hook: the man page and shell completions are generated from the argparse definitions.

Everything else is declared in pyproject.toml. The generated files go under build/generated
and are installed as data files (share/man/man1, share/bash-completion, share/zsh).
"""

import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hotluks.cli.docgen import write_all  # noqa: E402 - needs the source tree on sys.path

data_files = [(target, [str(Path(p).relative_to(HERE))]) for target, p_list in write_all(HERE / "build" / "generated")
              for p in p_list]
setup(data_files=data_files)
