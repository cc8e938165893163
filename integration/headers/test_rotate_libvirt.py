"""``rotate`` on a libvirt domain whose passphrase is a libvirt secret: the secret gets the new
value last; a fault injected at every step leaves the header opening with the old passphrase
and the libvirt secret unchanged, while QEMU keeps reading the disk."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.backends.select import open_backend
from hotluks.errors import RolledBackError, WrongPassphraseError
from hotluks.headers.rotate import STEPS, rotate
from hotluks.runner.operator import Operator
from testsupport.libvirtd import (
    QEMU_LOG_DIR,
    LibvirtDaemon,
    define_secret,
    give_to_qemu,
    qemu_accessible_dir,
    start_domain,
    start_libvirtd,
)
from testsupport.vms import PATTERN, make_disk, read_pattern_via_log

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
NEW = b"rotated through libvirt 5"


@pytest.fixture(scope="module")
def libvirt_uri() -> Iterator[str]:
    daemon: LibvirtDaemon = start_libvirtd()
    try:
        yield daemon.uri
    finally:
        daemon.stop()


def _secret_value(uri: str, uuid: str) -> bytes:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return bytes(conn.secretLookupByUUIDString(uuid).value())
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["libvirt", "virsh", *(f"fault:{s}" for s in STEPS)])
def test_rotate_with_a_libvirt_secret(libvirt_uri: str, tmp_path: Path, case: str) -> None:
    backend_name = case if not case.startswith("fault:") else "libvirt"
    fault_at = case.partition(":")[2] or None

    def fault(at: str) -> None:
        if at == fault_at:
            raise RuntimeError(f"injected fault at {at}")

    with start_domain(libvirt_uri, paused=True) as domain, qemu_accessible_dir() as workdir:
        disk = make_disk(workdir / "disk", "detached-header-raw", "vdb")
        assert disk.header is not None
        for path in disk.files:
            give_to_qemu(path)
        disk.secret_file.unlink()  # the passphrase lives in libvirt only
        with define_secret(domain.uri, "volume", disk.secret_key, disk.passphrase) as secret:

            async def main() -> None:
                async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
                    op = Operator(backend, state_dir=tmp_path / "state")
                    result = await op.attach(disk.disk(), {})
                    same = await op.disk_fingerprint(disk.disk())  # the header node reads /dev/fdset/N
                    if fault_at is None:
                        done = await rotate(op, disk.disk(), NEW, {}, disk_fingerprint=same)
                        assert done.libvirt_secret_updated
                    else:
                        with pytest.raises(RolledBackError, match=f"injected fault at {fault_at}"):
                            await rotate(op, disk.disk(), NEW, {}, fault=fault, disk_fingerprint=same)
                    log = QEMU_LOG_DIR / f"{domain.name}.log"
                    assert await read_pattern_via_log(backend, log, result.top_node, PATTERN) == "ok"
                    await op.detach("vdb", timeout=20)

            asyncio.run(asyncio.wait_for(main(), 120))
            current = NEW if fault_at is None else disk.passphrase
            stale = disk.passphrase if fault_at is None else NEW
            assert _secret_value(domain.uri, secret.uuid) == current
            luks.unlock(disk.header, current)
            with pytest.raises(WrongPassphraseError):
                luks.unlock(disk.header, stale)
