"""Turn a compressed x86 ``bzImage`` into the ELF ``vmlinux`` QEMU can boot via PVH (pure).

Under TCG, decompressing the kernel inside the guest costs ~2.5 s of every boot.
QEMU boots an uncompressed ELF kernel that carries a PVH entry note directly
(``-kernel vmlinux``), so the builder decompresses once at build time.
"""

from __future__ import annotations

import gzip
import lzma
import zlib

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def has_pvh_note(elf: bytes) -> bool:
    """True when a 64-bit ELF has the ``Xen`` PHYS32_ENTRY note (a PVH entry point)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, phentsize, phnum = _u(elf, 0x20, 8), _u(elf, 0x36, 2), _u(elf, 0x38, 2)
    for i in range(phnum):
        ph = phoff + i * phentsize
        if _u(elf, ph, 4) != PT_NOTE:
            continue
        pos, end = _u(elf, ph + 8, 8), _u(elf, ph + 8, 8) + _u(elf, ph + 32, 8)
        while pos + 12 <= end:
            namesz, descsz, ntype = _u(elf, pos, 4), _u(elf, pos + 4, 4), _u(elf, pos + 8, 4)
            name = elf[pos + 12:pos + 12 + namesz]
            if name == b"Xen\0" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _decompress_at(image: bytes, start: int, kind: str) -> bytes | None:
    try:
        if kind == "xz":
            return lzma.LZMADecompressor().decompress(image[start:])
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(image[start:])
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile):
        return None


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The PVH-bootable ELF inside ``bzimage`` (xz or gzip payload), or ``None``."""
    for magic, kind in ((_XZ_MAGIC, "xz"), (_GZIP_MAGIC, "gzip")):
        start = bzimage.find(magic)
        while start != -1:
            elf = _decompress_at(bzimage, start, kind)
            if elf is not None and has_pvh_note(elf):
                return elf
            start = bzimage.find(magic, start + 1)
    return None
