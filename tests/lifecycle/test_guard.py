"""The migration guard's names."""

from __future__ import annotations

from hotluks.plan.names import guard_node


def test_guard_names_stay_off_hotluks_and_libvirt_names() -> None:
    from hotluks.lifecycle.guard import guarded_targets

    assert guard_node("vdb") == "hlg-vdb"
    assert not guard_node("vdb").startswith(("hl-", "libvirt-"))
    assert len(guard_node("x" * 64)) == 31
    assert guarded_targets(["hl-vdb-luks", "hlg-vdb", "libvirt-1-format", "hlg-sdc"]) == {"vdb", "sdc"}
