"""The <fingerprint> extension inside <header>: parsed into the model, validated by the schema,
and checked by preflight (pure parts: no VM)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.errors import PreflightError, XMLError
from hotluks.luks.fingerprint import fingerprint
from hotluks.model import Disk
from hotluks.runner.preflight import check_fingerprint, run_preflight, verify_pin
from hotluks.secrets import SecretValue

PASS = b"pin xml pass"
PIN = "0123456789abcdef" * 4


def _xml(header: str, pin: str | None = PIN, kind: str = "file", source: str | None = None) -> str:
    element = f"<fingerprint type='sha256'>{pin}</fingerprint>" if pin is not None else ""
    source = source or f"<source file='{header}'/>"
    return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/payload.raw'/>"
            f"<encryption format='luks'><secret type='passphrase' usage='p'/><header type='{kind}'>{source}"
            f"<driver type='raw'/>{element}</header></encryption><target dev='vdb' bus='virtio'/></disk>")


def test_fingerprint_parsed_lowercase() -> None:
    disk = Disk.from_xml(_xml("/srv/header.img", f"\n  {PIN.upper()}\n"))
    assert disk.encryption is not None and disk.encryption.header is not None
    assert disk.encryption.header.fingerprint == PIN


def test_no_fingerprint_means_unpinned() -> None:
    disk = Disk.from_xml(_xml("/srv/header.img", None))
    assert disk.encryption is not None and disk.encryption.header is not None
    assert disk.encryption.header.fingerprint is None


@pytest.mark.parametrize("bad", ["abc", "g" * 64, PIN + "00"])
def test_malformed_fingerprint_is_a_schema_error_with_a_line(bad: str) -> None:
    with pytest.raises(XMLError) as info:
        Disk.from_xml(_xml("/srv/header.img", bad))
    assert info.value.line is not None


def test_unknown_fingerprint_type_is_refused() -> None:
    with pytest.raises(XMLError):
        Disk.from_xml(_xml("/srv/header.img").replace("type='sha256'", "type='md5'"))


def _header(tmp_path: Path, name: str) -> Path:
    payload = tmp_path / f"{name}.payload"
    payload.write_bytes(bytes(1 << 20))
    luks.format_volume(payload, PASS, type="luks1", header=tmp_path / name,
                       kdf=luks.make_kdf("pbkdf2", iterations=1000), key_size=256)
    return tmp_path / name


def test_preflight_refuses_swapped_header_with_same_passphrase(tmp_path: Path) -> None:
    pinned = fingerprint(luks.open_header(_header(tmp_path, "good"))).value
    swapped = _header(tmp_path, "swapped")
    check_fingerprint(str(tmp_path / "good"), pinned)
    with pytest.raises(PreflightError, match="not the pinned") as info:
        check_fingerprint(swapped.read_bytes(), pinned)
    assert PASS.decode() not in str(info.value)
    disk = Disk.from_xml(_xml(str(swapped), pinned))
    with pytest.raises(PreflightError, match="nothing was sent to the VM"):
        asyncio.run(run_preflight(disk, SecretValue(PASS)))
    with pytest.raises(PreflightError, match="not the pinned"):
        asyncio.run(verify_pin(disk))  # also without the passphrase preflight
    good = Disk.from_xml(_xml(str(tmp_path / "good"), pinned))
    assert "matches its pinned fingerprint" in asyncio.run(run_preflight(good, SecretValue(PASS)))
    assert "matches" in (asyncio.run(verify_pin(good)) or "")


def test_pinned_header_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    disk = Disk.from_xml(_xml("", PIN, kind="network",
                              source=f"<source protocol='nbd' name='hdr'><host transport='unix' "
                                     f"socket='{tmp_path}/no-such.sock'/></source>"))
    with pytest.raises(PreflightError, match="cannot read nbd hdr"):
        asyncio.run(verify_pin(disk))
