"""libvirt's full <disk> grammar, unit level: what is applied (and how), noted, or refused with the line."""

from __future__ import annotations

from typing import Any

import pytest

from hotluks.errors import UnsupportedError, XMLError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.render.listing import render_listing
from hotluks.xmlextras import IOTUNE_KEYS

SRC = "<source file='/var/lib/p.img'/>"


def disk(body: str, *, target: str = "<target dev='vdb' bus='virtio'/>", driver: str = "type='raw'",
         kind: str = "file", attrs: str = "") -> str:
    return f"<disk type='{kind}' device='disk'{attrs}><driver name='qemu' {driver}/>{body}{target}</disk>"


def device(xml: str) -> dict[str, Any]:
    return build_plan(Disk.from_xml(xml)).steps[-1].arguments


def test_every_iotune_key_maps_to_a_throttle_limit() -> None:
    assert len(IOTUNE_KEYS) == 19
    body = "".join(f"<{k}>{i + 1}</{k}>" for i, k in enumerate(IOTUNE_KEYS) if not k.startswith("total_"))
    # totals cannot be combined with read/write limits of the same kind: give them separately
    parsed = Disk.from_xml(disk(SRC + f"<iotune>{body}</iotune>"))
    keys = dict(parsed.iotune)
    assert {"bps-read", "bps-write", "iops-read", "iops-write", "iops-size", "bps-read-max",
            "iops-write-max-length"} <= set(keys)
    plan = build_plan(parsed)
    group = next(s for s in plan.steps if s.role == "throttle-group")
    assert group.arguments["qom-type"] == "throttle-group" and group.undo_command == "object-del"
    assert group.arguments["limits"] == keys
    throttle = next(s for s in plan.steps if s.role == "throttle")
    assert throttle.arguments["throttle-group"] == group.name and plan.top_node == throttle.name


def test_zero_means_no_limit_and_no_group() -> None:
    plan = build_plan(Disk.from_xml(disk(SRC + "<iotune><total_bytes_sec>0</total_bytes_sec></iotune>")))
    assert "throttle-group" not in [s.role for s in plan.steps]


def test_device_properties() -> None:
    dev = device(disk(SRC + "<blockio logical_block_size='4096' physical_block_size='4096' "
                      "discard_granularity='1048576'/><boot order='2'/>",
                      driver="type='raw' error_policy='enospace' rerror_policy='ignore' iothread='3' queues='4' "
                             "queue_size='128' ioeventfd='off' event_idx='on'"))
    assert dev["werror"] == "enospc" and dev["rerror"] == "ignore" and dev["iothread"] == "iothread3"
    assert (dev["num-queues"], dev["queue-size"], dev["ioeventfd"], dev["event_idx"]) == (4, 128, False, True)
    assert (dev["logical_block_size"], dev["discard_granularity"], dev["bootindex"]) == (4096, 1048576, 2)


def test_scsi_identity_properties() -> None:
    dev = device(disk(SRC + "<wwn>5000c50015ea71ac</wwn><vendor>HOTLUKS</vendor><product>ENC</product>",
                      target="<target dev='sdb' bus='scsi' rotation_rate='1'/>"))
    assert (dev["wwn"], dev["vendor"], dev["product"], dev["rotation_rate"]) == (
        "0x5000c50015ea71ac", "HOTLUKS", "ENC", 1)


def test_qcow2_discard_no_unref_and_copy_on_read() -> None:
    plan = build_plan(Disk.from_xml(disk("<source file='/p.qcow2'/>",
                                         driver="type='qcow2' discard_no_unref='on' copy_on_read='on'")))
    fmt = next(s for s in plan.steps if s.role == "payload-format")
    assert fmt.arguments["discard-no-unref"] is True
    assert plan.steps[-2].arguments["driver"] == "copy-on-read"


def test_nvme_source() -> None:
    xml = disk("<source type='pci' managed='no' namespace='2'><address domain='0x0001' bus='0x02' slot='0x00' "
               "function='0x0'/></source>", kind="nvme")
    proto = build_plan(Disk.from_xml(xml)).steps[0].arguments
    assert (proto["driver"], proto["device"], proto["namespace"]) == ("nvme", "0001:02:00.0", 2)


def test_dumpxml_state_is_noted_in_plan_and_listing() -> None:
    xml = disk("<source file='/p' index='2'/><backingStore type='file' index='3'><format type='raw'/>"
               "<source file='/b'/><backingStore/></backingStore><alias name='virtio-disk1'/>",
               attrs=" snapshot='no'")
    parsed = Disk.from_xml(xml)
    assert len(parsed.notes) == 4 and all(n.startswith("line 1:") for n in parsed.notes)
    assert render_listing(build_plan(parsed)).count("Note: ") == 4
    assert parsed.alias is None and build_plan(parsed).device_id == "hl-vdb"


@pytest.mark.parametrize("body, reason", [
    ("<mirror type='file' file='/m' job='copy'/>", "block job"),
    ("<transient/>", "transient"),
    ("<geometry cyls='1' heads='1' secs='1'/>", "geometry"),
    ("<throttlefilters/>", "iotune"),
    ("<auth username='u'><secret type='ceph' usage='x'/></auth>", "inside <source>"),
    ("<wwn>5000c50015ea71ac</wwn>", "SCSI"),
    ("<iotune><group_name>shared</group_name></iotune>", "group_name"),
    ("<iotune><read_bytes_sec>9</read_bytes_sec><read_bytes_sec_max>3</read_bytes_sec_max></iotune>", "below"),
    ("<iotune><read_iops_sec_max_length>3</read_iops_sec_max_length></iotune>", "needs"),
    ("<blockio logical_block_size='4096' physical_block_size='512'/>", "smaller"),
])
def test_refused_with_the_line(body: str, reason: str) -> None:
    xml = disk(SRC + "\n" + body)
    with pytest.raises(XMLError, match=reason) as info:
        Disk.from_xml(xml)
    assert info.value.line == 2


@pytest.mark.parametrize("xml, reason", [
    (disk(SRC, driver="type='raw' iothread='1'", target="<target dev='sdb' bus='scsi'/>"), "virtio-blk"),
    (disk(SRC, driver="type='raw' error_policy='stop'", target="<target dev='sdb' bus='usb'/>"), "usb-storage"),
    (disk(SRC, driver="type='raw' discard_no_unref='on'"), "qcow2"),
    (disk(SRC, driver="type='raw' queue_size='100'"), "power of two"),
    (disk(SRC, attrs=" model='virtio-transitional'"), "model"),
    (disk(SRC, attrs=" sgio='filtered'"), "lun"),
    (disk(SRC, target="<target dev='vdb' bus='virtio' tray='open'/>"), "cdrom"),
    (disk("<source file='/p' tlsHostname='x'/>"), "tlsHostname"),
    (disk("<source file='/p'><reservations managed='yes'/></source>"), "reservations"),
])
def test_refused_combinations(xml: str, reason: str) -> None:
    with pytest.raises(XMLError, match=reason):
        Disk.from_xml(xml)


@pytest.mark.parametrize("xml, reason", [
    (disk("<source pool='p' volume='v'/>", kind="volume"), "storage pool"),
    (disk("<source protocol='https' name='x'><host name='h'/></source>", kind="network"), "https"),
    (disk("<source dir='/d'/>", kind="dir"), "dir"),
])
def test_parsed_but_not_plannable(xml: str, reason: str) -> None:
    parsed = Disk.from_xml(xml)
    with pytest.raises(UnsupportedError, match=reason):
        build_plan(parsed)


def test_vmdk_over_librbd_parses_and_plans() -> None:
    xml = disk("<source protocol='rbd' name='pool/image2'><host name='mon' port='6789'/>"
               "<encryption format='luks2' engine='librbd'><secret type='passphrase' "
               "uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80fb0'/></encryption></source>",
               driver="type='vmdk'", kind="network")
    plan = build_plan(Disk.from_xml(xml))
    assert next(s for s in plan.steps if s.role == "payload-format").arguments["driver"] == "vmdk"


def test_curl_sources() -> None:
    xml = disk("<source protocol='https' name='/img/d.luks' query='t=1'><host name='web.example' port='8443'/>"
               "<ssl verify='no'/><auth username='u'><secret type='iscsi' usage='web'/></auth></source><readonly/>",
               kind="network")
    plan = build_plan(Disk.from_xml(xml))
    proto = next(s for s in plan.steps if s.role == "payload-protocol").arguments
    assert proto["url"] == "https://web.example:8443/img/d.luks?t=1"
    assert (proto["sslverify"], proto["username"], proto["read-only"]) == (False, "u", True)
    assert proto["password-secret"] == next(s.name for s in plan.steps if s.role == "auth")
    with pytest.raises(UnsupportedError, match="readonly"):
        build_plan(Disk.from_xml(xml.replace("<readonly/>", "")))
    with pytest.raises(UnsupportedError, match="cookies"):
        build_plan(Disk.from_xml(xml.replace("<ssl verify='no'/>", "<cookies><cookie name='c'>v</cookie></cookies>")))
    with pytest.raises(XMLError, match="<ssl> is for https"):
        Disk.from_xml(xml.replace("protocol='https'", "protocol='http'"))
