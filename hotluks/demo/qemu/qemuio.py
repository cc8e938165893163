"""Reading ``qemu-io`` output (pure)."""

from __future__ import annotations


def parse_hexdump(dump: str, offset: int, length: int) -> bytes:
    """The bytes of a ``qemu-io read -v`` dump (``OFFSET:  xx xx … ascii`` lines).

    Raises ValueError when lines are out of order or the byte count is not ``length``.
    """
    data = bytearray()
    for line in dump.splitlines():
        head, sep, rest = line.partition(":  ")
        if not sep or len(head) < 8 or any(c not in "0123456789abcdef" for c in head):
            continue
        if int(head, 16) != offset + len(data):
            raise ValueError(f"qemu-io dump out of order at {head}")
        count = (len(rest) - 1) // 4  # "xx xx … xx" + two spaces + one ASCII column per byte
        data += bytes.fromhex(rest[:3 * count - 1])
    if len(data) != length:
        raise ValueError(f"qemu-io returned {len(data)} bytes, expected {length}")
    return bytes(data)
