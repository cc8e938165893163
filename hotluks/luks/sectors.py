"""Sector encryption as dm-crypt does it: cipher specs and vectorised sector crypto.

A cipher spec is ``<cipher>-<chain>[-<ivgen>]``: cipher ``aes``, ``serpent``,
``twofish`` (16-byte blocks) or ``cast5``; chain ``xts``, ``cbc`` or ``ecb``;
IV generator ``plain``, ``plain64`` or ``essiv:<hash>`` (``aes-xts-plain64``,
``aes-xts-essiv:sha256``, ``serpent-cbc-essiv:sha256``, ``cast5-cbc-plain``).
IVs count 512-byte units whatever the sector size (dm-crypt without
``iv_large_sectors``). The block ciphers come from libraries
(:mod:`hotluks.luks.blockciphers`); for 16-byte-block ciphers every sector of
a buffer is processed in one pass: the cipher runs in ECB over the whole
buffer and the XTS tweaks / CBC chaining are applied with numpy. Small
buffers (keyslot material) of AES and CAST5 take the per-sector path through
``cryptography``'s own XTS/CBC and never import numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hotluks.errors import LuksUnsupportedError
from hotluks.luks import blockciphers

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

IV_UNIT = 512


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

    @property
    def essiv_hash(self) -> str:
        return self.ivgen.partition(":")[2] if self.ivgen.startswith("essiv:") else ""

    def key_sizes(self) -> tuple[int, ...]:
        sizes = blockciphers.CIPHERS[self.cipher][1]
        return tuple(2 * k for k in sizes) if self.chain == "xts" else sizes

    def check_key_size(self, key_bytes: int) -> None:
        """Raise LuksUnsupportedError unless the key length fits this cipher."""
        sizes = self.key_sizes()
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
    name = name.strip().lower()
    chain, _, ivgen = mode.strip().partition("-")
    blockciphers.check(name)
    if chain == "ecb":
        return CipherSpec(name, "ecb", "")
    if chain not in ("xts", "cbc") or (chain == "xts" and blockciphers.block_size(name) != 16):
        raise LuksUnsupportedError(f"cipher mode {mode!r} is not supported for {name}")
    if ivgen in ("plain", "plain64"):
        return CipherSpec(name, chain, ivgen)
    if ivgen.startswith("essiv:"):
        from hotluks.luks.kdf import hash_digest_size

        size = hash_digest_size(ivgen[6:])  # LuksUnsupportedError for a hash the engine lacks
        if size not in blockciphers.CIPHERS[name][1]:
            raise LuksUnsupportedError(f"ESSIV hash {ivgen[6:]!r} makes a {size * 8}-bit key, unusable with {name}")
        return CipherSpec(name, chain, ivgen)
    raise LuksUnsupportedError(f"cipher mode {mode!r} is not supported (IV generators: plain, plain64, essiv:<hash>)")


def _flat(arr: npt.NDArray[Any]) -> memoryview:
    """A flat byte view of an array (no copy when it is C-contiguous)."""
    import numpy as np

    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def _ecb(spec: CipherSpec, key: bytes, data: bytes | bytearray | memoryview, encrypt: bool) -> bytes:
    return blockciphers.ecb(spec.cipher, key, data, encrypt)


def _essiv_key(spec: CipherSpec, key: bytes) -> bytes:
    from hotluks.luks.kdf import digest

    return digest(spec.essiv_hash, key)


def _iv_blocks(spec: CipherSpec, key: bytes, ivs: npt.NDArray[np.uint64]) -> bytes:
    """The 16-byte little-endian IV block of every sector (before tweak encryption)."""
    import numpy as np

    blocks = np.zeros((ivs.shape[0], 2), dtype="<u8")
    blocks[:, 0] = ivs & np.uint64(0xFFFFFFFF) if spec.ivgen == "plain" else ivs
    raw = blocks.tobytes()
    if spec.essiv_hash:
        raw = _ecb(spec, _essiv_key(spec, key), raw, True)
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
    first = np.frombuffer(_ecb(spec, key[half:], _iv_blocks(spec, key, ivs), True), dtype="<u8").reshape(n, 2)
    tweaks = _xts_tweaks(first, bps)
    mixed = np.bitwise_xor(np.frombuffer(data, dtype="<u8").reshape(n, bps, 2), tweaks)
    out = bytearray(len(data) + 16)
    if spec.cipher == "aes":  # straight into the output buffer
        cipher = Cipher(algorithms.AES(key[:half]), modes.ECB())
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        written = ctx.update_into(_flat(mixed), out)
    else:
        written = len(data)
        out[:written] = _ecb(spec, key[:half], _flat(mixed), encrypt)
    view = np.frombuffer(out, dtype="<u8", count=written // 8).reshape(n, bps, 2)
    np.bitwise_xor(view, tweaks, out=view)
    del view
    del out[written:]
    return out


#: below this many sectors (keyslot material, small reads) one cipher object per sector
#: is cheaper than importing numpy and vectorising
VECTOR_MIN_SECTORS = 64


def _sector_iv(spec: CipherSpec, key: bytes, iv: int) -> bytes:
    size = blockciphers.block_size(spec.cipher)
    block = (iv & 0xFFFFFFFF if spec.ivgen == "plain" else iv & ((1 << 64) - 1)).to_bytes(size, "little")
    if spec.essiv_hash:
        block = _ecb(spec, _essiv_key(spec, key), block, True)
    return block


def _per_sector(spec: CipherSpec, key: bytes, data: bytes | bytearray | memoryview, sector_size: int,
                first_iv: int, encrypt: bool) -> bytes:
    """The textbook path (aes, cast5): ``cryptography``'s own XTS/CBC, one cipher object per sector."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    step = sector_size // IV_UNIT
    view = memoryview(data)
    out = bytearray()
    for i in range(len(data) // sector_size):
        iv = _sector_iv(spec, key, first_iv + i * step)
        chunk = view[i * sector_size:(i + 1) * sector_size]
        if spec.chain == "xts":
            xts = Cipher(algorithms.AES(key), modes.XTS(iv))
            ctx = xts.encryptor() if encrypt else xts.decryptor()
            out += ctx.update(chunk) + ctx.finalize()
        else:
            out += blockciphers.cbc(spec.cipher, key, iv, chunk, encrypt)
    return bytes(out)


def _vectorised(spec: CipherSpec, key_bytes: int, sectors: int) -> bool:
    """numpy for 16-byte-block ciphers on many sectors, and where ``cryptography`` has no XTS (192-bit AES,
    Botan's ciphers); CAST5 (8-byte blocks) always per sector."""
    if spec.cipher == "cast5":
        return False
    if spec.cipher != "aes" or (spec.chain == "xts" and key_bytes == 48):
        return True
    return sectors >= VECTOR_MIN_SECTORS


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
        return _ecb(spec, key, data, encrypt)
    if not _vectorised(spec, len(key), n):
        return _per_sector(spec, key, data, sector_size, first_iv, encrypt)
    import numpy as np

    ivs = np.arange(n, dtype=np.uint64) * np.uint64(sector_size // IV_UNIT) + np.uint64(first_iv)
    if spec.chain == "xts":
        return _xts(spec, key, data, n, bps, ivs, encrypt)
    blocks = np.frombuffer(data, dtype="<u8").reshape(n, bps, 2)
    iv = np.frombuffer(_iv_blocks(spec, key, ivs), dtype="<u8").reshape(n, 2)
    if not encrypt:
        plain = np.frombuffer(_ecb(spec, key, data, False), dtype="<u8").reshape(n, bps, 2).copy()
        plain[:, 0] ^= iv
        plain[:, 1:] ^= blocks[:, :-1]
        return plain.tobytes()
    result = np.empty((n, bps, 2), dtype="<u8")
    prev = iv
    for j in range(bps):
        col = np.ascontiguousarray(blocks[:, j] ^ prev)
        prev = np.frombuffer(_ecb(spec, key, _flat(col), True), dtype="<u8").reshape(n, 2)
        result[:, j] = prev
    return result.tobytes()
