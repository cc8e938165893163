"""SIZE arguments of ``hotluks resize`` (as qemu-img reads them) and the refusals before anything is sent."""

from __future__ import annotations

import pytest

from hotluks.errors import InputError, RefusedError
from hotluks.runner.journal import JournalStep, Record
from hotluks.runner.resize import ResizeResult, check_new_size, parse_size, top_node

MIB = 1 << 20


@pytest.mark.parametrize(("text", "current", "expected"), [
    ("1073741824", 0, 1 << 30), ("10G", 0, 10 << 30), ("1.5G", 0, 3 << 29), ("512m", 0, 512 * MIB),
    ("64K", 0, 65536), ("2T", 0, 2 << 40), ("100B", 0, 100), (" 1M ", 0, MIB), ("1E", 0, 1 << 60),
    ("+1G", MIB, MIB + (1 << 30)), ("-1M", 2 * MIB, MIB), ("+0", MIB, MIB),
])
def test_sizes_as_qemu_img_reads_them(text: str, current: int, expected: int) -> None:
    assert parse_size(text).target(current) == expected


@pytest.mark.parametrize("text", ["", "G", "1X", "1GB", "1..5G", "0x10", "+-1G", "1 G G", "16E", "9223372036854775808"])
def test_bad_sizes_are_input_errors(text: str) -> None:
    with pytest.raises(InputError):
        parse_size(text)


def test_refusals() -> None:
    check_new_size(MIB, 2 * MIB, force=False)
    check_new_size(2 * MIB, MIB, force=True)
    with pytest.raises(RefusedError, match="without --force"):
        check_new_size(2 * MIB, MIB, force=False)
    for bad in (0, -MIB, MIB + 1):
        with pytest.raises(InputError):
            check_new_size(MIB, bad, force=True)


def test_top_node_comes_from_the_record() -> None:
    steps = [JournalStep("node", "proto", "hl-vdb-proto", "blockdev-add", {"node-name": "hl-vdb-proto"}),
             JournalStep("node", "luks", "hl-vdb-luks", "blockdev-add", {"node-name": "hl-vdb-luks"}),
             JournalStep("device", "device", "hl-vdb", "device_add", {"id": "hl-vdb", "drive": "hl-vdb-luks"})]
    record = Record("vm", "vdb", "hl-vdb", "attached-luks", "attached", steps)
    assert top_node(record) == "hl-vdb-luks"
    with pytest.raises(RefusedError, match="nothing to resize"):
        top_node(Record("vm", "vdb", "hl-vdb", "attached-luks", "attached", steps[:2]))


def test_result_json() -> None:
    same = ResizeResult("vm", "vdb", "hl-vdb", "hl-vdb-luks", MIB, MIB)
    assert same["changed"] is False and same.to_json()["new_size"] == MIB
    assert ResizeResult("vm", "vdb", "hl-vdb", "n", MIB, 2 * MIB, 0.25)["changed"] is True
