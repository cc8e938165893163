"""Project-wide pytest fixtures (shared by tests/ and integration/)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

#: vm / monitor / initial / state_dir for the integration tests (a directory's own conftest may override them);
#: every --json document printed during the session is checked against its schema (HOTLUKS_JSON_CHECK);
#: temporary files and directories left behind fail the session (testsupport.leftovers)
pytest_plugins = ["testsupport.vm_fixtures", "testsupport.json_check", "testsupport.leftovers"]


@pytest.fixture(autouse=True)
def _remove_temp_files(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests leave no temp files behind (pytest would keep the last runs' tmp_path)."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
