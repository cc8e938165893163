"""Capabilities probed from a real QEMU's ``query-qmp-schema`` and ``query-version``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import start_qemu
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.planner import build_plan

pytestmark = pytest.mark.qemu


def test_capabilities_from_real_qemu(monitor_for: Any) -> None:
    with start_qemu([]) as proc:
        qmp = monitor_for(proc)
        schema, version = qmp("query-qmp-schema"), qmp("query-version")
    caps = Capabilities.from_qmp(schema, version)
    assert caps.qemu_version is not None and caps.qemu_version >= (9, 0, 0)
    assert caps.qemu_version[:2] == (version["qemu"]["major"], version["qemu"]["minor"])
    assert caps.luks_detached_header is True
    assert caps.block_drivers is not None
    assert {"rbd", "luks", "qcow2", "raw", "file", "host_device", "nbd"} <= caps.block_drivers
    assert "luks-any" in caps.rbd_encrypt_formats and {"luks", "luks2"} <= caps.rbd_encrypt_formats
    assert caps.rbd_encrypt_parent is True
    # with what this QEMU can do, every shipped example plans
    for example in sorted((Path(__file__).resolve().parents[2] / "xml" / "examples").glob("*.xml")):
        assert build_plan(Disk.from_xml(example), caps).steps
