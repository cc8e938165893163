"""The bundled LUKS engine decrypts an ``rbd export`` of a librbd-encrypted image to exactly the
bytes QEMU wrote through librbd: LUKS1 (4 MiB payload offset, 512-byte sectors) and LUKS2
(16 MiB data offset, 4096-byte sectors whose IVs count 512-byte units)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hotluks import luks
from testsupport.vms import PATTERN, PATTERN_LEN

if TYPE_CHECKING:
    from conftest import Ceph

pytestmark = [pytest.mark.ceph, pytest.mark.slow]

MiB = 1024 * 1024
#: (payload offset, sector size) librbd uses
GEOMETRY = {"luks1": (4 * MiB, 512), "luks2": (16 * MiB, 4096)}


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_engine_decrypts_an_rbd_export(fmt: str, ceph: Ceph, workdir: Path, passphrase: bytes) -> None:
    image = ceph.librbd_image(fmt)
    # QEMU's block layer + librbd write more plaintext: unaligned to librbd's 4096-byte
    # sectors (read-modify-write) and crossing a 4 MiB object boundary
    offset, data = 4 * MiB - 4608, os.urandom(96 * 1024 + 512)
    ceph.cluster.write_plaintext(image, fmt, ceph.passfile, data, offset=offset)
    # librbd's own view of the region and the 4 KiB before it (a sector librbd rewrote around
    # the unaligned start); after the end lies a hole past the object's end (librbd reads zeroes,
    # the export holds zeroes, not ciphertext): not comparable
    view = ceph.cluster.read_plaintext(image, fmt, ceph.passfile, len(data) + 4096, offset=offset - 4096)
    assert view[4096:] == data

    exported = ceph.cluster.export(image, workdir / "export.raw")
    header = luks.open_header(str(exported))
    payload_offset, sector = GEOMETRY[fmt]
    assert (header.version, header.data_segment.offset, header.data_segment.sector_size) == \
        (int(fmt[-1]), payload_offset, sector)
    raw = exported.read_bytes()
    assert data not in raw and bytes([PATTERN]) * 4096 not in raw  # stored as ciphertext

    out = io.BytesIO()
    written = luks.decrypt_payload(exported, out, passphrase)
    plain = out.getvalue()
    assert written == len(plain) == exported.stat().st_size - payload_offset
    assert plain[:PATTERN_LEN] == bytes([PATTERN]) * PATTERN_LEN
    assert plain[offset - 4096:offset + len(data)] == view


def test_wrong_passphrase_on_export_is_a_typed_error(ceph: Ceph, workdir: Path) -> None:
    from hotluks.errors import WrongPassphraseError

    exported = ceph.cluster.export(ceph.librbd_image("luks1"), workdir / "export.raw")
    with pytest.raises(WrongPassphraseError):
        luks.decrypt_payload(exported, io.BytesIO(), b"not-the-passphrase")
