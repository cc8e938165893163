"""bzImage → PVH vmlinux extraction on synthetic images."""

from __future__ import annotations

import gzip
import lzma
import struct

from hotluks.demo.guest.kernelimage import XEN_ELFNOTE_PHYS32_ENTRY, extract_vmlinux, has_pvh_note


def elf_with_note(name: bytes, note_type: int) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding one note."""
    desc = struct.pack("<I", 0x1000000)
    padded = name + b"\0" * (-len(name) % 4)
    note = struct.pack("<III", len(name), len(desc), note_type) + padded + desc
    phoff, phentsize = 64, 56
    note_off = phoff + phentsize
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, 1)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_pvh_note_detection() -> None:
    assert has_pvh_note(elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY))
    assert not has_pvh_note(elf_with_note(b"Xen\0", 5))
    assert not has_pvh_note(elf_with_note(b"GNU\0", XEN_ELFNOTE_PHYS32_ENTRY))
    assert not has_pvh_note(b"MZ not an elf")


def test_extracts_xz_and_gzip_payloads() -> None:
    elf = elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY)
    setup = b"MZ" + b"\0" * 500 + b"HdrS"
    assert extract_vmlinux(setup + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0trailer") == elf
    assert extract_vmlinux(setup + gzip.compress(elf) + b"\0" * 16) == elf


def test_non_pvh_or_garbage_gives_none() -> None:
    plain = elf_with_note(b"GNU\0", 1)
    assert extract_vmlinux(b"MZ" + lzma.compress(plain, format=lzma.FORMAT_XZ)) is None
    assert extract_vmlinux(b"MZ\xfd7zXZ\x00 broken stream") is None
    assert extract_vmlinux(b"") is None
