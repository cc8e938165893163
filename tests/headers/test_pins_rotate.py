"""Pin records (attach --pin) and the rotation's input checks, without a VM."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.errors import HotluksError, InputError, PreflightError
from hotluks.headers.pins import PinStore, check_pin, location_key
from hotluks.headers.rotate import header_file
from hotluks.luks.fingerprint import fingerprint
from hotluks.model import Disk, Host, Source

PASS = b"pins unit pass"


def _disk(header: Path) -> Disk:
    return Disk.from_xml(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/p.raw'/>"
        f"<encryption format='luks'><secret type='passphrase' usage='p'/><header type='file'><source file='{header}'/>"
        "</header></encryption><target dev='vdb' bus='virtio'/></disk>")


def _header(path: Path) -> Path:
    payload = path.with_suffix(".payload")
    payload.write_bytes(bytes(1 << 20))
    luks.format_volume(payload, PASS, type="luks1", header=path, kdf=luks.make_kdf("pbkdf2", iterations=1000),
                       key_size=256)
    return path


def test_store_records_atomically_private_and_by_location(tmp_path: Path) -> None:
    store = PinStore(tmp_path / "pins")
    a = Source(kind="file", path="/srv/a")
    b = Source(kind="network", protocol="nbd", name="a", hosts=(Host("127.0.0.1", 10809),))
    assert store.lookup(a) is None
    store.record(a, "11" * 32)
    assert store.lookup(a) == "11" * 32 and store.lookup(b) is None
    files = list((tmp_path / "pins").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pins").stat().st_mode) == 0o700
    assert json.loads(files[0].read_text())["location"] == location_key(a)
    files[0].write_text("{not json")
    with pytest.raises(HotluksError, match="unreadable"):
        store.lookup(a)


def test_check_pin_first_use_then_match_then_swap(tmp_path: Path) -> None:
    header = _header(tmp_path / "h.img")
    store = PinStore(tmp_path / "pins")
    first = asyncio.run(check_pin(_disk(header), store))
    assert first.first_use and first.fingerprint == fingerprint(luks.open_header(header)).value
    store.record(first.source, first.fingerprint)
    again = asyncio.run(check_pin(_disk(header), store))
    assert not again.first_use and again.fingerprint == first.fingerprint
    _header(tmp_path / "h.img")  # reformatted in place: same path, same passphrase, new volume key
    with pytest.raises(PreflightError, match="pinned on first use"):
        asyncio.run(check_pin(_disk(header), store))


def test_rotate_needs_a_detached_header_file() -> None:
    with pytest.raises(InputError, match="no detached <header>"):
        header_file(Disk.from_xml("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                                  "<source file='/srv/v.luks'/><encryption format='luks'><secret type='passphrase' "
                                  "usage='p'/></encryption><target dev='vdb' bus='virtio'/></disk>"))
    with pytest.raises(InputError, match="header files only"):
        header_file(Disk.from_xml(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/p.raw'/>"
            "<encryption format='luks'><secret type='passphrase' usage='p'/><header type='network'>"
            "<source protocol='nbd' name='h'><host name='127.0.0.1'/></source></header></encryption>"
            "<target dev='vdb' bus='virtio'/></disk>"))
    assert header_file(_disk(Path("/srv/h.img"))) == Path("/srv/h.img")
