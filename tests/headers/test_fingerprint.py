"""Header pinning, pure: the fingerprint survives keyslot changes and catches a swapped header."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.errors import WrongPassphraseError
from hotluks.luks.fingerprint import fingerprint, identity_fields, matches, normalise

PASS = b"pin unit pass"
NEW = b"pin unit new pass"


def _header(where: Path, name: str, version: int = 1) -> Path:
    header = where / name
    payload = where / f"{name}.payload"
    payload.write_bytes(bytes(1 << 20))
    luks.format_volume(payload, PASS, type=f"luks{version}", header=header,
                       kdf=luks.make_kdf("pbkdf2", iterations=1000), key_size=256)
    return header


@pytest.mark.parametrize("version", [1, 2])
def test_survives_add_and_remove_key(tmp_path: Path, version: int) -> None:
    header = _header(tmp_path, "h", version)
    pinned = fingerprint(luks.open_header(header)).value
    luks.add_key(header, PASS, NEW, kdf=luks.make_kdf("pbkdf2", iterations=1000))
    after_add = luks.open_header(header)
    assert len(after_add.keyslots) == 2
    assert fingerprint(after_add).value == pinned
    luks.remove_key(header, PASS)
    after_remove = luks.open_header(header)
    assert fingerprint(after_remove).value == pinned
    with pytest.raises(WrongPassphraseError):
        luks.unlock(after_remove, PASS)  # the old keyslot is really gone
    luks.unlock(after_remove, NEW)


@pytest.mark.parametrize("version", [1, 2])
def test_swapped_header_same_passphrase_differs(tmp_path: Path, version: int) -> None:
    first = luks.open_header(_header(tmp_path, "a", version))
    swapped = luks.open_header(_header(tmp_path, "b", version))
    luks.unlock(swapped, PASS)  # the attacker's header opens with the same passphrase …
    assert fingerprint(first).value != fingerprint(swapped).value  # … but is not the pinned one
    assert not matches(swapped, fingerprint(first).value)


def test_fields_name_digest_and_layout_only(tmp_path: Path) -> None:
    header = luks.open_header(_header(tmp_path, "h", 2))
    fields = identity_fields(header)
    assert fields["data_offset"] == 0 and fields["cipher"] == "aes-xts-plain64"
    assert fields["digest"] == header.digests[0].value.hex()
    assert "uuid" not in fields and "keyslots" not in fields


def test_normalise_accepts_prefixes_and_separators() -> None:
    value = os.urandom(32).hex()
    assert normalise(f"sha256:{value.upper()}") == value
    assert normalise(":".join(value[i:i + 2] for i in range(0, 64, 2))) == value
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(ValueError):
            normalise(bad)


def test_cli_prints_the_xml_element_to_paste(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hotluks.cli.main import main
    from hotluks.model import Disk

    header = _header(tmp_path, "h")
    assert main(["luks", "fingerprint", str(header), "--xml"]) == 0
    element = capsys.readouterr().out.strip()
    assert element == f"<fingerprint type='sha256'>{fingerprint(luks.open_header(header)).value}</fingerprint>"
    disk = Disk.from_xml(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/p.raw'/>"
        f"<encryption format='luks'><secret type='passphrase' usage='p'/><header type='file'><source file='{header}'/>"
        f"{element}</header></encryption><target dev='vdb' bus='virtio'/></disk>")
    assert disk.encryption is not None and disk.encryption.header is not None
    assert disk.encryption.header.fingerprint == fingerprint(luks.open_header(header)).value
    assert main(["luks", "fingerprint", str(tmp_path / "h.payload")]) == 2  # no LUKS header: exit 2
