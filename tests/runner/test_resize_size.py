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


class _Backend:
    """Just enough of a backend for the failure paths of one block_resize (edge cases QEMU rarely shows)."""

    def __init__(self, after: int | None, error: Exception):
        self.after, self.error, self.sent = after, error, 0

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        if command == "block_resize":
            self.sent += 1
            raise self.error
        if self.sent and self.after is None:
            raise OSError("monitor gone")
        return [{"node-name": "n", "image": {"virtual-size": self.after if self.sent else MIB}}]


@pytest.mark.parametrize(("after", "kind", "code"), [(MIB, "RolledBack", 1), (2 * MIB, "Incomplete", 3),
                                                     (None, "Incomplete", 3)])
def test_a_failed_resize_says_what_the_size_is(after: int | None, kind: str, code: int) -> None:
    import asyncio

    from hotluks.backends.base import QMPCommandError
    from hotluks.errors import HotluksError
    from hotluks.runner.resize import _send

    backend = _Backend(after, QMPCommandError("block_resize", "GenericError", "cannot grow"))
    with pytest.raises(HotluksError) as failed:
        asyncio.run(_send(backend, "n", MIB, 2 * MIB))  # type: ignore[arg-type]
    assert type(failed.value).__name__ == kind and failed.value.exit_code == code
    assert "cannot grow" in str(failed.value)
