"""Sector encryption as dm-crypt does it: cipher specs and vectorised sector crypto.

A cipher spec is ``aes-<chain>[-<ivgen>]`` (``aes-xts-plain64``,
``aes-cbc-essiv:sha256``, ``aes-cbc-plain``, ``aes-cbc-plain64``, ``aes-ecb``).
IVs count 512-byte units whatever the sector size (dm-crypt without
``iv_large_sectors``). Every sector of a buffer is processed in one pass:
AES itself runs in ECB over the whole buffer (``cryptography``) and the
XTS tweaks / CBC chaining are applied with numpy, so the per-sector cost is
a handful of vector operations instead of one cipher object per sector.
Small buffers (keyslot material) take the per-sector path through
``cryptography``'s own XTS/CBC and never import numpy.
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


def _mul_x_power(lo: npt.NDArray[np.uint64], hi: npt.NDArray[np.uint64], k: int
                 ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Multiply 128-bit XTS tweaks (little-endian halves) by x**k in GF(2^128), 1 <= k <= 56.

    The k bits shifted out of the top are reduced with x^128 = x^7 + x^2 + x + 1;
    k <= 56 keeps that reduction inside the low half.
    """
    import numpy as np

    shift, back = np.uint64(k), np.uint64(64 - k)
    over = hi >> back
    new_hi = (hi << shift) | (lo >> back)
    new_lo = (lo << shift) ^ over ^ (over << np.uint64(1)) ^ (over << np.uint64(2)) ^ (over << np.uint64(7))
    return new_lo, new_hi


def _xts_tweaks(first: npt.NDArray[np.uint64], blocks: int) -> npt.NDArray[np.uint64]:
    """All block tweaks of every sector: T[s, j] = first[s] * x**j, built by repeated doubling of the filled prefix."""
    import numpy as np

    n = first.shape[0]
    tweaks = np.empty((n, blocks, 2), dtype="<u8")
    tweaks[:, 0] = first
    filled = 1
    while filled < blocks:
        count = min(filled, blocks - filled)
        lo, hi = tweaks[:, :count, 0], tweaks[:, :count, 1]
        k = filled
        while k > 56:
            lo, hi = _mul_x_power(lo, hi, 56)
            k -= 56
        lo, hi = _mul_x_power(lo, hi, k)
        tweaks[:, filled:filled + count, 0] = lo
        tweaks[:, filled:filled + count, 1] = hi
        filled += count
    return tweaks


def _xts(spec: CipherSpec, key: bytes, data: bytes | bytearray | memoryview, n: int, bps: int,
         ivs: npt.NDArray[np.uint64], encrypt: bool) -> bytearray:
    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    half = len(key) // 2
    first = np.frombuffer(_ecb(key[half:], _iv_blocks(spec, key, ivs), True), dtype="<u8").reshape(n, 2)
    tweaks = _xts_tweaks(first, bps)
    mixed = np.bitwise_xor(np.frombuffer(data, dtype="<u8").reshape(n, bps, 2), tweaks)
    cipher = Cipher(algorithms.AES(key[:half]), modes.ECB())
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    out = bytearray(len(data) + 16)
    written = ctx.update_into(_flat(mixed), out)
    view = np.frombuffer(out, dtype="<u8", count=written // 8).reshape(n, bps, 2)
    np.bitwise_xor(view, tweaks, out=view)
    del view
    del out[written:]
    return out


#: below this many sectors (keyslot material, small reads) one cipher object per sector
#: is cheaper than importing numpy and vectorising
VECTOR_MIN_SECTORS = 64


def _sector_iv(spec: CipherSpec, key: bytes, iv: int) -> bytes:
    block = (iv & 0xFFFFFFFF if spec.ivgen == "plain" else iv).to_bytes(16, "little")
    if spec.ivgen == "essiv:sha256":
        from cryptography.hazmat.primitives import hashes

        h = hashes.Hash(hashes.SHA256())
        h.update(key)
        block = _ecb(h.finalize(), block, True)
    return block


def _per_sector(spec: CipherSpec, key: bytes, data: bytes | bytearray | memoryview, sector_size: int,
                first_iv: int, encrypt: bool) -> bytes:
    """The textbook path: ``cryptography``'s own XTS/CBC, one cipher object per sector."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    step = sector_size // IV_UNIT
    view = memoryview(data)
    out = bytearray()
    for i in range(len(data) // sector_size):
        iv = _sector_iv(spec, key, first_iv + i * step)
        if spec.chain == "xts":
            xts = Cipher(algorithms.AES(key), modes.XTS(iv))
            ctx = xts.encryptor() if encrypt else xts.decryptor()
        else:
            cbc = Cipher(algorithms.AES(key), modes.CBC(iv))
            ctx = cbc.encryptor() if encrypt else cbc.decryptor()
        out += ctx.update(view[i * sector_size:(i + 1) * sector_size]) + ctx.finalize()
    return bytes(out)


def crypt_sectors(
    spec: CipherSpec,
    key: bytes,
    data: bytes | bytearray | memoryview,
    *,
    sector_size: int,
    first_iv: int,
    encrypt: bool,
) -> bytes | bytearray:
    """Encrypt or decrypt whole sectors; sector *i* uses IV ``first_iv + i * sector_size/512``."""
    if sector_size < IV_UNIT or sector_size % IV_UNIT or len(data) % sector_size:
        raise ValueError("data must be whole sectors of a multiple of 512 bytes")
    if not data:
        return b""
    spec.check_key_size(len(key))
    n = len(data) // sector_size
    bps = sector_size // 16
    if spec.chain == "ecb":
        return _ecb(key, data, encrypt)
    if n < VECTOR_MIN_SECTORS:
        return _per_sector(spec, key, data, sector_size, first_iv, encrypt)
    import numpy as np

    ivs = np.arange(n, dtype=np.uint64) * np.uint64(sector_size // IV_UNIT) + np.uint64(first_iv)
    if spec.chain == "xts":
        return _xts(spec, key, data, n, bps, ivs, encrypt)
    blocks = np.frombuffer(data, dtype="<u8").reshape(n, bps, 2)
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
