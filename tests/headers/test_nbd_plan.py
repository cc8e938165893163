"""NBD over TLS in the grammar and the plan (pure), and the pure helpers of the header tools."""

from __future__ import annotations

import pytest

from hotluks.errors import XMLError
from hotluks.headers.serve import serve_argv
from hotluks.model import Disk
from hotluks.nbd_read import image_opts
from hotluks.plan.planner import PlanContext, build_plan
from hotluks.render.cmdline import cold_boot_args


def _disk(header_source: str, payload_source: str = "<source file='/srv/p.raw'/>", kind: str = "file") -> Disk:
    return Disk.from_xml(
        f"<disk type='{kind}' device='disk'><driver name='qemu' type='raw'/>{payload_source}"
        "<encryption format='luks'><secret type='passphrase' usage='p'/>"
        f"<header type='network'>{header_source}</header></encryption><target dev='vdb' bus='virtio'/></disk>")


TCP = "<source protocol='nbd' name='hdr' tls='yes'><host name='127.0.0.1' port='10899'/></source>"
UNIX = ("<source protocol='nbd' name='hdr' tls='yes' tlsHostname='headers.example'>"
        "<host transport='unix' socket='/run/hdr.sock'/></source>")


def test_tls_object_is_a_planned_step_before_the_nbd_node_with_its_undo() -> None:
    plan = build_plan(_disk(TCP), context=PlanContext(nbd_tls_dir="/etc/hotluks/nbd"))
    names = [s.name for s in plan.steps]
    tls = plan.steps[names.index("hl-vdb-tls")]
    assert tls.command == "object-add" and tls.undo_command == "object-del" and tls.undo_arguments == {"id": tls.name}
    assert tls.arguments == {"qom-type": "tls-creds-x509", "id": "hl-vdb-tls", "dir": "/etc/hotluks/nbd",
                             "endpoint": "client", "verify-peer": True}
    nbd = plan.steps[names.index("hl-vdb-hdr-proto")]
    assert names.index("hl-vdb-tls") < names.index("hl-vdb-hdr-proto")
    assert nbd.arguments["tls-creds"] == "hl-vdb-tls" and "tls-hostname" not in nbd.arguments
    assert tls.secret is None and "hl-vdb-tls" in plan.object_ids
    argv = cold_boot_args(plan, {"p": "/run/keys/p"})
    assert argv[argv.index("-object", 2) + 1].startswith('{"qom-type":"tls-creds-x509"')


def test_default_tls_dir_is_libvirts() -> None:
    plan = build_plan(_disk(TCP))
    assert next(s for s in plan.steps if s.name == "hl-vdb-tls").arguments["dir"] == "/etc/pki/qemu"


def test_unix_socket_tls_carries_the_hostname_and_one_object_serves_header_and_payload() -> None:
    payload = ("<source protocol='nbd' name='data' tls='yes'><host name='127.0.0.1' port='10900'/></source>")
    plan = build_plan(_disk(UNIX, payload, kind="network"))
    tls_steps = [s for s in plan.steps if s.arguments.get("qom-type") == "tls-creds-x509"]
    assert len(tls_steps) == 1
    hdr = next(s for s in plan.steps if s.name == "hl-vdb-hdr-proto").arguments
    assert hdr["server"] == {"type": "unix", "path": "/run/hdr.sock"} and hdr["tls-hostname"] == "headers.example"
    assert next(s for s in plan.steps if s.name == "hl-vdb-proto").arguments["tls-creds"] == "hl-vdb-tls"


def test_no_tls_no_object() -> None:
    plan = build_plan(_disk(TCP.replace(" tls='yes'", "")))
    assert all(s.arguments.get("qom-type") != "tls-creds-x509" for s in plan.steps)
    assert "tls-creds" not in next(s for s in plan.steps if s.name == "hl-vdb-hdr-proto").arguments


def test_tls_hostname_without_tls_is_an_error() -> None:
    with pytest.raises(XMLError, match="tlsHostname needs tls='yes'"):
        _disk(UNIX.replace(" tls='yes'", ""))


def test_image_opts_mirror_the_plan() -> None:
    src = _disk(UNIX).encryption.header.source  # type: ignore[union-attr]
    assert image_opts(src, tls_id="t0") == ("driver=raw,file.driver=nbd,file.server.type=unix,"
                                            "file.server.path=/run/hdr.sock,file.export=hdr,file.tls-creds=t0,"
                                            "file.tls-hostname=headers.example")
    iscsi = _disk("<source protocol='iscsi' name='iqn.2026-12.x:y/2'><host name='127.0.0.1' port='3261'/>"
                  "<auth username='u'><secret type='iscsi' usage='chap'/></auth></source>")
    assert image_opts(iscsi.encryption.header.source, secret_id="s0") == (  # type: ignore[union-attr]
        "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:3261,file.target=iqn.2026-12.x:y,"
        "file.lun=2,file.user=u,file.password-secret=s0")


def test_serve_recipe() -> None:
    argv = serve_argv("/srv/h.img", tls_dir="/etc/srv", allow_dn="CN=a,O=b", socket="/run/h.sock")
    assert argv[0] == "qemu-nbd" and "--snapshot" in argv and argv[-1] == "/srv/h.img"
    assert "authz-simple,id=hl-srv-authz,identity=CN=a,,O=b" in argv and argv[argv.index("-k") + 1] == "/run/h.sock"
    assert "tls-creds-x509,id=hl-srv-tls,dir=/etc/srv,endpoint=server,verify-peer=on" in argv
    with pytest.raises(ValueError):
        serve_argv("/srv/h.img", tls_dir=None, allow_dn="CN=a")
