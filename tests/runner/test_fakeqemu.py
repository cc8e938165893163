"""The fake QEMU is as strict as QEMU where hotluks could go wrong."""

from __future__ import annotations

import asyncio

import pytest

from hotluks.backends.base import QMPCommandError
from testsupport.fakeqemu import FakeQemu


def test_strict_like_qemu() -> None:
    async def go() -> None:
        fake = FakeQemu(guest="paused")
        q = fake.execute
        await q("object-add", {"qom-type": "secret", "id": "k", "data": "eA==", "format": "base64"})
        with pytest.raises(QMPCommandError, match="duplicate property 'k'"):
            await q("object-add", {"qom-type": "secret", "id": "k", "data": "eA=="})
        with pytest.raises(QMPCommandError, match="Cannot find device='' nor node-name='nope'"):
            await q("blockdev-add", {"node-name": "f", "driver": "raw", "file": "nope"})
        await q("blockdev-add", {"node-name": "p", "driver": "file", "filename": "/x"})
        await q("blockdev-add", {"node-name": "f", "driver": "luks", "file": "p", "key-secret": "k"})
        with pytest.raises(QMPCommandError, match="Duplicate nodes"):
            await q("blockdev-add", {"node-name": "f", "driver": "raw", "file": "p"})
        with pytest.raises(QMPCommandError, match="already in use"):
            await q("blockdev-add", {"node-name": "g", "driver": "raw", "file": "p"})
        with pytest.raises(QMPCommandError, match="No secret with id 'k2'"):
            await q("blockdev-add", {"node-name": "h", "driver": "file", "filename": "/y", "key-secret": "k2"})
        with pytest.raises(QMPCommandError, match="busy"):
            await q("blockdev-del", {"node-name": "p"})
        await q("device_add", {"driver": "virtio-blk-pci", "id": "d", "drive": "f", "bus": "rp1"})
        with pytest.raises(QMPCommandError, match="Duplicate device ID"):
            await q("device_add", {"driver": "virtio-blk-pci", "id": "d", "drive": "f", "bus": "rp2"})
        with pytest.raises(QMPCommandError, match="already in use"):
            await q("device_add", {"driver": "virtio-blk-pci", "id": "e", "drive": "f", "bus": "rp2"})
        await q("blockdev-add", {"node-name": "q", "driver": "file", "filename": "/z"})
        with pytest.raises(QMPCommandError, match="slot 0 function 0 not available"):
            await q("device_add", {"driver": "virtio-blk-pci", "id": "e", "drive": "q", "bus": "rp1"})
        await q("blockdev-del", {"node-name": "q"})
        with pytest.raises(QMPCommandError, match="busy"):
            await q("blockdev-del", {"node-name": "f"})
        with fake.events(["DEVICE_DELETED"]) as events:
            await q("device_del", {"id": "d"})
            with pytest.raises(QMPCommandError, match="already in the process of unplug"):
                await q("device_del", {"id": "d"})
            with pytest.raises(TimeoutError):
                await events.get(0.05)  # a paused guest does not let go
            fake.cont()
            assert (await events.get(1))["data"]["device"] == "d"
        await q("blockdev-del", {"node-name": "f"})
        await q("blockdev-del", {"node-name": "p"})
        with pytest.raises(QMPCommandError, match="not found"):
            await q("remove-fd", {"fdset-id": 7})
        with pytest.raises(QMPCommandError, match="has not been found"):
            await q("migrate", {"uri": "exec:true"})
    asyncio.run(go())
