"""Every invalid combination is a typed XMLError naming its line, through the API and the CLI.

Each case marks the offending line with ``<!--HERE-->``; the error must name exactly that line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import InputError, XMLError
from hotluks.model import Disk

K0 = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
K1 = "5b7b6d3c-2d3a-4e8f-9b1a-7c6d5e4f3a2b"
SECRET = f"<secret type='passphrase' uuid='{K0}'/>"
TARGET = "<target dev='vdb' bus='virtio'/>"
RBD = "<source protocol='rbd' name='pool/img'>"


def xml(kind: str, *body: str) -> str:
    return "\n".join([f"<disk type='{kind}' device='disk'>", *body, "</disk>"])


CASES: dict[str, tuple[str, str]] = {
    "librbd-with-header": (xml(
        "network", RBD, "</source>",
        "<encryption format='luks2' engine='librbd'>", SECRET,
        "<header type='file'><!--HERE-->", "<source file='/h'/>", "</header>", "</encryption>", TARGET),
        "<header> is only for engine='qemu'"),
    "librbd-on-file": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks' engine='librbd'><!--HERE-->", SECRET,
        "</encryption>", TARGET), "engine='librbd' needs an rbd source, not file /p"),
    "librbd-on-nbd": (xml(
        "network", "<source protocol='nbd' name='exp'><host name='h'/></source>",
        "<encryption format='luks' engine='librbd'><!--HERE-->", SECRET, "</encryption>", TARGET),
        "needs an rbd source"),
    "qemu-engine-luks2": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks2' engine='qemu'><!--HERE-->", SECRET,
        "</encryption>", TARGET), "engine='qemu' supports LUKS1 only"),
    "qemu-engine-luks-any": (xml(
        "network", RBD, "</source>", "<encryption format='luks-any' engine='qemu'><!--HERE-->", SECRET,
        "</encryption>", TARGET), "format='luks-any'"),
    "default-engine-luks2": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks2'><!--HERE-->", SECRET, "</encryption>", TARGET),
        "engine='qemu' supports LUKS1 only"),
    "qemu-engine-two-secrets": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks'><!--HERE-->", SECRET,
        f"<secret type='passphrase' uuid='{K1}'/>", "</encryption>", TARGET), "exactly one passphrase"),
    "same-secret-twice": (xml(
        "network", RBD, "</source>", "<encryption format='luks' engine='librbd'><!--HERE-->", SECRET, SECRET,
        "</encryption>", TARGET), "listed twice"),
    "device-cdrom": (xml("file", "<source file='/p'/>", TARGET).replace("device='disk'>", "device='cdrom'><!--HERE-->"),
                     "device='cdrom' is not supported"),
    "device-lun": (xml("block", "<source dev='/dev/sda'/>", TARGET).replace("device='disk'>", "device='lun'><!--HERE-->"),
                   "device='lun'"),
    "unknown-bus": (xml("file", "<source file='/p'/>", "<target dev='vdb' bus='nvme'/><!--HERE-->"),
                    "unsupported bus 'nvme'"),
    "ide-bus": (xml("file", "<source file='/p'/>", "<target dev='hdb' bus='ide'/><!--HERE-->"),
                "unsupported bus 'ide'"),
    "inferred-ide-bus": (xml("file", "<source file='/p'/>", "<target dev='hdb'/><!--HERE-->"),
                         "bus 'ide' (inferred from dev='hdb')"),
    "missing-secret": (xml("file", "<source file='/p'/>", "<encryption format='luks'/><!--HERE-->", TARGET),
                       "needs at least one <secret"),
    "missing-secret-with-header": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks'><!--HERE-->",
        "<header type='file'><source file='/h'/></header>", "</encryption>", TARGET), "needs at least one <secret"),
    "encryption-twice": (xml(
        "file", "<source file='/p'>", "<encryption format='luks'>", SECRET, "</encryption>", "</source>",
        "<encryption format='luks'><!--HERE-->", SECRET, "</encryption>", TARGET),
        "both under <disk> and under <source>"),
    "file-with-dev": (xml("file", "<source dev='/dev/sdb'/><!--HERE-->", TARGET),
                      "type='file' needs <source file=…>, not <source dev=…>"),
    "block-with-file": (xml("block", "<source file='/p'/><!--HERE-->", TARGET), "type='block' needs <source dev="),
    "network-with-file": (xml("network", "<source file='/p'/><!--HERE-->", TARGET),
                          "type='network' needs <source protocol="),
    "header-type-mismatch": (xml(
        "file", "<source file='/p'/>", "<encryption format='luks'>", SECRET, "<header type='file'>",
        "<source dev='/dev/sdh'/><!--HERE-->", "</header>", "</encryption>", TARGET),
        "header type='file' needs <source file=…>"),
    "rbd-name-no-pool": (xml("network", "<source protocol='rbd' name='image'><!--HERE-->", "</source>", TARGET),
                         "name='pool/image'"),
    "rbd-name-empty-part": (xml("network", "<source protocol='rbd' name='pool//img'><!--HERE-->", "</source>", TARGET),
                            "name='pool/image'"),
    "rbd-name-too-deep": (xml("network", "<source protocol='rbd' name='a/b/c/d'><!--HERE-->", "</source>", TARGET),
                          "pool/namespace/image"),
    "rbd-snapshot-writable": (xml("network", "<source protocol='rbd' name='pool/img@snap1'><!--HERE-->", "</source>",
                                  TARGET), "rbd snapshot 'snap1' is read-only: add <readonly/>"),
    "rbd-empty-snapshot": (xml("network", "<source protocol='rbd' name='pool/img@'><!--HERE-->", "</source>",
                               TARGET, "<readonly/>"), "optionally @snapshot"),
    "rbd-two-snapshots": (xml("network", "<source protocol='rbd' name='pool/img@a@b'><!--HERE-->", "</source>",
                              TARGET, "<readonly/>"), "optionally @snapshot"),
    "rbd-no-name": (xml("network", "<source protocol='rbd'><!--HERE-->", "</source>", TARGET), "rbd source needs name"),
    "virtio-with-drive-address": (xml(
        "file", "<source file='/p'/>", TARGET, "<address type='drive' unit='1'/><!--HERE-->"),
        "bus 'virtio' needs <address type='pci'>, not type='drive'"),
    "scsi-with-pci-address": (xml(
        "file", "<source file='/p'/>", "<target dev='sdb' bus='scsi'/>", "<address type='pci' slot='3'/><!--HERE-->"),
        "bus 'scsi' needs <address type='drive'>"),
    "usb-with-pci-address": (xml(
        "file", "<source file='/p'/>", "<target dev='sdb' bus='usb'/>", "<address type='pci' slot='3'/><!--HERE-->"),
        "bus 'usb' needs <address type='usb'>"),
    "pci-slot-out-of-range": (xml("file", "<source file='/p'/>", TARGET, "<address type='pci' slot='0x20'/><!--HERE-->"),
                              "PCI address out of range"),
    "pci-bad-octal": (xml("file", "<source file='/p'/>", TARGET, "<address type='pci' slot='09'/><!--HERE-->"),
                      "slot='09'> is not a number"),
    "rbd-auth-iscsi-secret": (xml(
        "network", RBD, "<auth username='admin'>", "<secret type='iscsi' usage='x'/><!--HERE-->", "</auth>",
        "</source>", TARGET), "rbd <auth> needs <secret type='ceph'>"),
    "iscsi-auth-ceph-secret": (xml(
        "network", "<source protocol='iscsi' name='iqn.2013-07.com.example:t/1'>", "<host name='h'/>",
        "<auth username='u'>", "<secret type='ceph' usage='x'/><!--HERE-->", "</auth>", "</source>", TARGET),
        "iscsi <auth> needs <secret type='iscsi'>"),
    "nbd-auth": (xml(
        "network", "<source protocol='nbd' name='e'>", "<host name='h'/>",
        "<auth username='u'><!--HERE-->", "<secret type='ceph' usage='x'/>", "</auth>", "</source>", TARGET),
        "<auth> is not supported for protocol 'nbd'"),
    "nbd-without-host": (xml("network", "<source protocol='nbd' name='e'><!--HERE-->", "</source>", TARGET),
                         "nbd source needs a <host>"),
    "iscsi-without-lun": (xml(
        "network", "<source protocol='iscsi' name='iqn.2013-07.com.example:t'><!--HERE-->", "<host name='h'/>",
        "</source>", TARGET), "iscsi source needs name='IQN/LUN'"),
    "config-on-nbd": (xml(
        "network", "<source protocol='nbd' name='e'>", "<host name='h'/>", "<config file='/etc/x'/><!--HERE-->",
        "</source>", TARGET), "<config file=…> is only for rbd"),
    "host-on-file": (xml("file", "<source file='/p'>", "<host name='h'/><!--HERE-->", "</source>", TARGET),
                     "<host> only makes sense for a network source"),
    "unix-socket-on-rbd": (xml(
        "network", "<source protocol='rbd' name='p/i'><!--HERE-->", "<host transport='unix' socket='/s'/>",
        "</source>", TARGET), "UNIX-socket <host> is only supported for nbd"),
    "io-native-without-direct": (xml(
        "file", "<driver name='qemu' type='raw' io='native'/><!--HERE-->", "<source file='/p'/>", TARGET),
        "io='native' needs cache='none'"),
    "nbd-two-hosts": (xml(
        "network", "<source protocol='nbd' name='e'>", "<host name='a'/>", "<host name='b'/><!--HERE-->", "</source>",
        TARGET), "exactly one <host>"),
    "rbd-tls": (xml("network", "<source protocol='rbd' name='p/i' tls='yes'><!--HERE-->", "<host name='a'/>",
                    "</source>", TARGET), "tls='yes' is only supported for nbd"),
    "nbd-tls-unix-without-hostname": (xml(
        "network", "<source protocol='nbd' name='e' tls='yes'><!--HERE-->", "<host transport='unix' socket='/s'/>",
        "</source>", TARGET), "needs tlsHostname"),
    "header-is-the-payload": (xml(
        "file", "<source file='/same'/>", "<encryption format='luks'>", SECRET, "<header type='file'>",
        "<source file='/same'/><!--HERE-->", "</header>", "</encryption>", TARGET),
        "the detached header and the payload are the same volume"),
    "removable-virtio": (xml("file", "<source file='/p'/>", "<target dev='vdb' bus='virtio' removable='on'/><!--HERE-->"),
                         "removable='on' is for usb and scsi disks"),
    "missing-target": (xml("file", "<source file='/p'/>").replace("device='disk'>", "device='disk'><!--HERE-->"),
                       "Expecting an element target"),
    "bad-alias": (xml("file", "<source file='/p'/>", TARGET, "<alias name='virtio-disk0'/><!--HERE-->"),
                  "does not match the <disk> schema"),
    "bad-format": (xml("file", "<source file='/p'/>", "<encryption format='plain'><!--HERE-->", SECRET,
                       "</encryption>", TARGET), "does not match the <disk> schema"),
    "relative-path": (xml("file", "<source file='p.img'/><!--HERE-->", TARGET), "does not match the <disk> schema"),
}


def _line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "<!--HERE-->" in line)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_invalid_through_api(case: str) -> None:
    text, fragment = CASES[case]
    with pytest.raises(XMLError) as info:
        Disk.from_xml(text)
    err = info.value
    assert isinstance(err, InputError) and err.exit_code == 2
    assert err.line == _line(text), f"{err} (expected line {_line(text)})"
    assert fragment in str(err)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_invalid_through_cli(case: str, cli: Any, write_xml: Any) -> None:
    text, fragment = CASES[case]
    path: Path = write_xml(text)
    for command in (("plan", str(path)), ("plan", "--json", str(path)), ("cold-cmdline", str(path))):
        result = cli(*command)
        assert result.code == 2
        assert result.out == ""
        assert result.err.startswith(f"hotluks: error: {path}:{_line(text)}: ")
        assert fragment in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("case", ["librbd-with-header", "bad-alias"])
def test_invalid_through_real_process(case: str, cli_process: Any, write_xml: Any) -> None:
    text, fragment = CASES[case]
    path: Path = write_xml(text)
    result = cli_process("plan", str(path))
    assert (result.code, result.out) == (2, "")
    assert f"{path}:{_line(text)}:" in result.err and fragment in result.err
    assert "Traceback" not in result.err
    stdin = cli_process("plan", "-", stdin=text.encode())
    assert stdin.code == 2 and f"<stdin>:{_line(text)}:" in stdin.err


def test_every_case_is_distinct() -> None:
    assert len({text for text, _ in CASES.values()}) == len(CASES)


def test_valid_neighbours_of_invalid_cases_parse() -> None:
    """The cases fail for the stated reason, not for a typo: their fixed versions parse."""
    fixed = [
        CASES["qemu-engine-luks2"][0].replace("luks2", "luks"),
        CASES["file-with-dev"][0].replace("type='file'", "type='block'"),
        CASES["virtio-with-drive-address"][0].replace("<address type='drive' unit='1'/>", ""),
        CASES["rbd-name-no-pool"][0].replace("name='image'", "name='rbd/image'"),
        CASES["rbd-auth-iscsi-secret"][0].replace("type='iscsi'", "type='ceph'"),
        CASES["pci-bad-octal"][0].replace("'09'", "'011'"),
        CASES["io-native-without-direct"][0].replace("io='native'", "io='native' cache='none'"),
        CASES["librbd-with-header"][0].replace("<header type='file'><!--HERE-->\n<source file='/h'/>\n</header>", ""),
    ]
    for text in fixed:
        assert Disk.from_xml(text).target_dev in ("vdb", "sdb")
    # libvirt reads a leading 0 as octal
    octal = Disk.from_xml(fixed[5])
    assert octal.address is not None and getattr(octal.address, "slot") == 9
