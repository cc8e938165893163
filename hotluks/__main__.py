"""``python -m hotluks``: the same CLI as the ``hotluks`` console script."""

from hotluks.cli.main import entry

entry()
