"""Sector encryption as dm-crypt does it: cipher specs and vectorised sector crypto.

A cipher spec is ``aes-<chain>[-<ivgen>]`` (``aes-xts-plain64``,
``aes-cbc-essiv:sha256``, ``aes-cbc-plain``, ``aes-cbc-plain64``, ``aes-ecb``).
IVs count 512-byte units whatever the sector size (dm-crypt without
``iv_large_sectors``). Every sector of a buffer is processed in one pass:
AES itself runs in ECB over the whole buffer (``cryptography``) and the
XTS tweaks / CBC chaining are applied with numpy, so the per-sector cost is
a handful of vector operations instead of one cipher object per sector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hotluks.errors import LuksUnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

IV_UNIT = 512
_AES_KEY_BYTES = (16, 24, 32)
_IVGENS = ("plain", "plain64", "essiv:sha256")


@dataclass(frozen=True)
class CipherSpec:
    """A parsed dm-crypt cipher specification."""

    cipher: str
    chain: str
    ivgen: str  # "" for ecb

    @property
    def name(self) -> str:
        """The dm-crypt form, e.g. ``aes-xts-plain64``."""
        mode = f"{self.chain}-{self.ivgen}" if self.ivgen else self.chain
        return f"{self.cipher}-{mode}"

    @property
    def mode(self) -> str:
        """The LUKS1 ``cipher-mode`` field, e.g. ``xts-plain64``."""
        return f"{self.chain}-{self.ivgen}" if self.ivgen else self.chain

    def check_key_size(self, key_bytes: int) -> None:
        """Raise LuksUnsupportedError unless the key length fits this cipher."""
        sizes = tuple(2 * k for k in (16, 32)) if self.chain == "xts" else _AES_KEY_BYTES
        if key_bytes not in sizes:
            raise LuksUnsupportedError(
                f"cipher {self.name} with a {key_bytes * 8}-bit key is not supported "
                f"(sizes: {', '.join(str(s * 8) for s in sizes)} bits)"
            )


def parse_cipher(cipher: str, mode: str | None = None) -> CipherSpec:
    """Parse ``aes-xts-plain64`` (or LUKS1's split ``aes`` + ``xts-plain64``)."""
    if mode is None:
        name, sep, mode = cipher.partition("-")
        if not sep:
            raise LuksUnsupportedError(f"cipher specification {cipher!r} is not supported")
    else:
        name = cipher
    name = name.strip()
    chain, _, ivgen = mode.strip().partition("-")
    if name != "aes":
        raise LuksUnsupportedError(f"cipher {name!r} is not supported (only aes)")
    if chain == "ecb":
        return CipherSpec("aes", "ecb", "")
    if chain == "xts" and ivgen in ("plain", "plain64"):
        return CipherSpec("aes", chain, ivgen)
    if chain == "cbc" and ivgen in _IVGENS:
        return CipherSpec("aes", chain, ivgen)
    raise LuksUnsupportedError(f"cipher mode {mode!r} is not supported")


def _flat(arr: npt.NDArray[Any]) -> memoryview:
    """A flat byte view of an array (no copy when it is C-contiguous)."""
    import numpy as np

    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def _ecb(key: bytes, data: bytes | bytearray | memoryview, encrypt: bool) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(key), modes.ECB())
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def _iv_blocks(spec: CipherSpec, key: bytes, ivs: npt.NDArray[np.uint64]) -> bytes:
    """The 16-byte little-endian IV block of every sector (before tweak encryption)."""
    import numpy as np

    blocks = np.zeros((ivs.shape[0], 2), dtype="<u8")
    blocks[:, 0] = ivs & np.uint64(0xFFFFFFFF) if spec.ivgen == "plain" else ivs
    raw = blocks.tobytes()
    if spec.ivgen == "essiv:sha256":
        from cryptography.hazmat.primitives import hashes

        h = hashes.Hash(hashes.SHA256())
        h.update(key)
        raw = _ecb(h.finalize(), raw, True)
    return raw


def _gf_double(t: npt.NDArray[np.uint64]) -> None:
    """Multiply every 128-bit little-endian XTS tweak in ``t`` (n×2 uint64) by x, in place."""
    import numpy as np

    carry = t[:, 1] >> np.uint64(63)
    t[:, 1] = (t[:, 1] << np.uint64(1)) | (t[:, 0] >> np.uint64(63))
    t[:, 0] = (t[:, 0] << np.uint64(1)) ^ (carry * np.uint64(0x87))


def crypt_sectors(
    spec: CipherSpec,
    key: bytes,
    data: bytes | bytearray | memoryview,
    *,
    sector_size: int,
    first_iv: int,
    encrypt: bool,
) -> bytes:
    """Encrypt or decrypt whole sectors; sector *i* uses IV ``first_iv + i * sector_size/512``."""
    import numpy as np

    if sector_size < IV_UNIT or sector_size % IV_UNIT or len(data) % sector_size:
        raise ValueError("data must be whole sectors of a multiple of 512 bytes")
    if not data:
        return b""
    spec.check_key_size(len(key))
    n = len(data) // sector_size
    bps = sector_size // 16
    if spec.chain == "ecb":
        return _ecb(key, data, encrypt)
    ivs = np.arange(n, dtype=np.uint64) * np.uint64(sector_size // IV_UNIT) + np.uint64(first_iv)
    blocks = np.frombuffer(data, dtype="<u8").reshape(n, bps, 2)
    if spec.chain == "xts":
        half = len(key) // 2
        tweak = np.frombuffer(_ecb(key[half:], _iv_blocks(spec, key, ivs), True), dtype="<u8")
        cur = tweak.reshape(n, 2).copy()
        tweaks = np.empty((n, bps, 2), dtype="<u8")
        for j in range(bps):
            tweaks[:, j] = cur
            if j + 1 < bps:
                _gf_double(cur)
        mixed = blocks ^ tweaks
        out = np.frombuffer(_ecb(key[:half], _flat(mixed), encrypt), dtype="<u8").reshape(n, bps, 2)
        return (out ^ tweaks).tobytes()
    iv = np.frombuffer(_iv_blocks(spec, key, ivs), dtype="<u8").reshape(n, 2)
    if not encrypt:
        plain = np.frombuffer(_ecb(key, data, False), dtype="<u8").reshape(n, bps, 2).copy()
        plain[:, 0] ^= iv
        plain[:, 1:] ^= blocks[:, :-1]
        return plain.tobytes()
    result = np.empty((n, bps, 2), dtype="<u8")
    prev = iv
    for j in range(bps):
        col = np.ascontiguousarray(blocks[:, j] ^ prev)
        prev = np.frombuffer(_ecb(key, _flat(col), True), dtype="<u8").reshape(n, 2)
        result[:, j] = prev
    return result.tobytes()
