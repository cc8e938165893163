"""Pure helpers of the guest builder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hotluks.demo.guest.build import (
    build_guest,
    cache_root,
    decompressed_module,
    elf_is_static,
    initramfs_entries,
    versioned_kernel_package,
)
from hotluks.demo.guest.cpio import Entry
from hotluks.demo.guest.errors import GuestUnavailableError

APT_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""


def test_versioned_kernel_package() -> None:
    assert versioned_kernel_package(APT_DEPENDS) == "linux-image-6.1.0-56-amd64"
    assert versioned_kernel_package(" |Depends: linux-image-6.12.9-amd64\n") == "linux-image-6.12.9-amd64"
    assert versioned_kernel_package("linux-image-amd64\n  Depends: kmod\n") is None
    assert versioned_kernel_package("") is None


def test_cache_root_follows_hotluks_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOTLUKS_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "guest"
    monkeypatch.delenv("HOTLUKS_CACHE")
    assert cache_root() == Path.home() / ".cache" / "hotluks" / "guest"


def test_elf_is_static() -> None:
    busybox = Path("/bin/busybox")
    if busybox.exists():
        assert elf_is_static(busybox.read_bytes()[:4096])
    assert not elf_is_static(Path(sys.executable).resolve().read_bytes()[:4096])  # dynamically linked
    assert not elf_is_static(b"#!/bin/sh\n")


def test_initramfs_entries_layout() -> None:
    entries = initramfs_entries(b"BB", [("virtio.ko", b"MOD")], "#!/bin/busybox sh\n")
    by_path = {e.path: e for e in entries}
    assert by_path["init"].data.startswith(b"#!")
    assert by_path["init"].mode & 0o111
    assert by_path["bin/busybox"].data == b"BB"
    assert by_path["bin/sh"] == Entry.symlink("bin/sh", "busybox")
    assert by_path["lib/modules/hotluks/virtio.ko"].data == b"MOD"
    assert by_path["dev/console"].rdev == (5, 1)
    paths = [e.path for e in entries]
    assert paths.index("lib/modules/hotluks") < paths.index("lib/modules/hotluks/virtio.ko")


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.gz"])
def test_modules_are_stored_decompressed(tmp_path: Path, suffix: str) -> None:
    import gzip
    import lzma

    raw = b"\x7fELF module bytes" * 50
    packed = {".ko": raw, ".ko.xz": lzma.compress(raw, format=lzma.FORMAT_XZ), ".ko.gz": gzip.compress(raw)}[suffix]
    path = tmp_path / f"crc-t10dif{suffix}"
    path.write_bytes(packed)
    assert decompressed_module(path) == ("crc-t10dif.ko", raw)


def test_bad_kernel_package_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuestUnavailableError, match="not a versioned"):
        build_guest(cache=tmp_path, kernel_package="linux-image-amd64; rm -rf /")
    assert not any(tmp_path.iterdir())


def test_no_apt_and_no_cache_is_a_typed_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no apt-cache, no apt-get
    with pytest.raises(GuestUnavailableError, match="apt-cache") as info:
        build_guest(cache=tmp_path / "cache")
    assert info.value.exit_code == 2


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed")
def test_offline_build_reuses_a_cached_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kdir = cache / "6.1.0-99-amd64"
    (kdir / "modules").mkdir(parents=True)
    (kdir / "modules" / "virtio.ko").write_bytes(b"module")
    (kdir / "modules.load").write_text("virtio.ko\n")
    (kdir / "modules.wanted").write_text("virtio\n")
    (kdir / "vmlinuz").write_bytes(b"MZ not really a kernel")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    built = build_guest(cache=cache, wanted_modules=["virtio"])
    assert built.kernel_version == "6.1.0-99-amd64"
    assert built.kernel == kdir / "vmlinuz"  # no PVH ELF inside: the bzImage is used as is
    assert built.initrd.exists() and built.modules == ("virtio.ko",)
    first = built.initrd.read_bytes()
    assert build_guest(cache=cache, wanted_modules=["virtio"]).initrd.read_bytes() == first  # deterministic, cached
