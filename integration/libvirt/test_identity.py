"""A libvirt domain is its UUID plus its running QEMU, through libvirt, virsh or a raw QMP socket."""

from __future__ import annotations

import contextlib
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import VMIdentity
from hotluks.backends.identity import start_time
from hotluks.backends.select import open_backend
from hotluks.errors import DomainNotFound
from testsupport.libvirtd import TransientDomain, domain_xml, give_to_qemu, qemu_accessible_dir

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]


@contextlib.contextmanager
def running(uri: str, name: str, vm_uuid: str, qemu_args: tuple[str, ...] = ()) -> Iterator[TransientDomain]:
    """A paused transient domain with a fixed UUID (destroyed afterwards)."""
    import libvirt
    from lxml import etree

    root = etree.fromstring(domain_xml(name, qemu_args=qemu_args))
    uuid_el = etree.Element("uuid")
    uuid_el.text = vm_uuid
    root.insert(1, uuid_el)
    xml = etree.tostring(root, encoding="unicode")
    conn = libvirt.open(uri)
    try:
        conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        with TransientDomain(name=name, uri=uri, uuid=vm_uuid, xml=xml, _conn=conn) as dom:
            yield dom
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByUUIDString(vm_uuid).destroy()
        raise


async def identity(vm: str, uri: str, backend: str) -> VMIdentity:
    async with await open_backend(vm, uri=uri, backend=backend) as b:
        return await b.identity()


def test_every_way_in_gives_one_identity_and_a_restart_a_new_instance(libvirt_uri: str, arun: Run) -> None:
    vm_uuid = str(uuidlib.uuid4())
    name = f"hotluks-id-{vm_uuid[:8]}"
    with qemu_accessible_dir() as sockdir:
        give_to_qemu(sockdir)  # QEMU (libvirt-qemu) creates its extra QMP socket here
        sock = sockdir / "extra.qmp"
        with running(libvirt_uri, name, vm_uuid, ("-qmp", f"unix:{sock},server=on,wait=off")) as dom:
            pid = dom.qemu_pid()
            assert pid is not None
            seen = {
                "libvirt by name": arun(identity(name, libvirt_uri, "libvirt")),
                "libvirt by uuid": arun(identity(vm_uuid.upper(), libvirt_uri, "libvirt")),
                "virsh by name": arun(identity(name, libvirt_uri, "virsh")),
                "virsh by uuid": arun(identity(vm_uuid, libvirt_uri, "virsh")),
                "raw QMP socket": arun(identity(f"unix:{sock}", libvirt_uri, "qmp")),
            }
            first = VMIdentity(vm_uuid, f"{pid}-{start_time(pid)}")
            assert seen == dict.fromkeys(seen, first)
        with running(libvirt_uri, name, vm_uuid) as dom:
            again = arun(identity(name, libvirt_uri, "libvirt"))
            assert again == arun(identity(name, libvirt_uri, "virsh"))
            assert again.key == first.key and again.instance != first.instance
            assert again.instance == f"{dom.qemu_pid()}-{start_time(dom.qemu_pid() or 0)}"


def test_stale_socket_path_is_not_a_domain(tmp_path: Path, arun: Run) -> None:
    with pytest.raises(DomainNotFound):
        arun(identity(str(tmp_path / "gone.sock"), "qemu:///system", "qmp"))
