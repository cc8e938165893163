"""Hashes, key derivation (PBKDF2, Argon2i/Argon2id) and the anti-forensic splitter.

Everything goes through ``cryptography``; nothing here is a hand-written primitive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hotluks.errors import LuksUnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

# Hash names cryptsetup's crypto backend knows; only those with a ``cryptography``
# implementation below can be computed by the engine.
KNOWN_HASHES = frozenset(
    {
        "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160", "whirlpool",
        "sha3-224", "sha3-256", "sha3-384", "sha3-512", "stribog256", "stribog512",
        "sm3", "blake2b-512", "blake2s-256",
    }
)
_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64,
          "ripemd160": 20, "whirlpool": 64, "sha3-224": 28, "sha3-256": 32,
          "sha3-384": 48, "sha3-512": 64, "stribog256": 32, "stribog512": 64,
          "sm3": 32, "blake2b-512": 64, "blake2s-256": 32}


_CRYPTOGRAPHY_HASHES = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512", "sha3-224", "sha3-256",
                                  "sha3-384", "sha3-512"})


def hash_digest_size(name: str) -> int:
    """Digest size of a hash the engine can compute (``cryptography`` or Botan); LuksUnsupportedError otherwise."""
    if _botan_hash(name):
        from hotluks.luks import botanhash

        return botanhash.digest_size(name)
    return hash_algorithm(name).digest_size


def hash_algorithm(name: str) -> HashAlgorithm:
    """Return the ``cryptography`` hash for a LUKS hash name, or raise LuksUnsupportedError."""
    from cryptography.hazmat.primitives import hashes

    table: dict[str, type[HashAlgorithm]] = {
        "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
        "sha384": hashes.SHA384, "sha512": hashes.SHA512, "sha3-224": hashes.SHA3_224,
        "sha3-256": hashes.SHA3_256, "sha3-384": hashes.SHA3_384, "sha3-512": hashes.SHA3_512,
    }
    cls = table.get(name.lower())
    if cls is None:
        raise LuksUnsupportedError(f"hash {name!r} is not supported by the engine")
    return cls()


def _botan_hash(name: str) -> bool:
    from hotluks.luks import botanhash

    return name.lower() not in _CRYPTOGRAPHY_HASHES and botanhash.available(name)


def hash_size(name: str) -> int:
    """Digest size of a hash cryptsetup knows; 0 when unknown."""
    return _SIZES.get(name.lower(), 0)


def digest(name: str, data: bytes) -> bytes:
    """One-shot hash."""
    if _botan_hash(name):
        from hotluks.luks import botanhash

        return botanhash.digest(name, data)
    from cryptography.hazmat.primitives import hashes

    h = hashes.Hash(hash_algorithm(name))
    h.update(data)
    return h.finalize()


#: ``cryptography`` takes a signed 32-bit count (larger values abort inside its Rust core)
MAX_PBKDF2_ITERATIONS = 2**31 - 1
MAX_U32 = 2**32 - 1
#: cryptsetup's own ceiling for argon2 memory (4 GiB) and LUKS2's lane limit
MAX_ARGON2_KIB = 4 * 1024 * 1024
MAX_ARGON2_LANES = 2**24 - 1


def _half_of_ram_kib() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2048
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-Linux
        return MAX_ARGON2_KIB


#: argon2 memory the engine spends on one try: 1 GiB (cryptsetup's default ceiling for the keyslots it
#: creates; its hard limit is 4 GiB) and never more than half of this machine's RAM, so a hostile header
#: cannot push the host into swap or the OOM killer. Larger keyslots are "not supported" (preflight: not checked).
ARGON2_MEMORY_LIMIT_KIB = min(1024 * 1024, _half_of_ram_kib())


def pbkdf2(hash_name: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC."""
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    if iterations < 1:
        raise LuksUnsupportedError("PBKDF2 needs at least one iteration")
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise LuksUnsupportedError(f"PBKDF2 with {iterations} iterations is beyond what the engine supports "
                                   f"(at most {MAX_PBKDF2_ITERATIONS})")
    if _botan_hash(hash_name):
        from hotluks.luks import botanhash

        return botanhash.pbkdf2(hash_name, password, salt, iterations, length)
    return PBKDF2HMAC(hash_algorithm(hash_name), length, salt, iterations).derive(password)


def argon2(kind: str, password: bytes, salt: bytes, *, time: int, memory_kib: int,
           cpus: int, length: int) -> bytes:
    """Argon2i / Argon2id (``kind``), memory in KiB, ``cpus`` lanes."""
    try:
        from cryptography.hazmat.primitives.kdf import argon2 as a2
    except ImportError:  # cryptography < 44 (Debian 12 ships 38.0.4)
        a2 = None  # type: ignore[assignment]

    if kind not in ("argon2i", "argon2id"):
        raise LuksUnsupportedError(f"KDF {kind!r} is not supported")
    if not (1 <= time <= MAX_U32 and 1 <= cpus <= MAX_ARGON2_LANES and 8 * cpus <= memory_kib <= MAX_ARGON2_KIB):
        raise LuksUnsupportedError(f"{kind} parameters are out of range (time {time}, memory {memory_kib} KiB, "
                                   f"{cpus} lanes; memory at most {MAX_ARGON2_KIB} KiB as in cryptsetup)")
    if not hasattr(a2, "Argon2i" if kind == "argon2i" else "Argon2id"):
        import cryptography

        raise LuksUnsupportedError(f"{kind} keyslots need the Python 'cryptography' package >= "
                                   f"{47 if kind == 'argon2i' else 44}; this one is {cryptography.__version__}")
    if memory_kib > ARGON2_MEMORY_LIMIT_KIB:
        raise LuksUnsupportedError(f"{kind} asks for {memory_kib >> 10} MiB; the engine spends at most "
                                   f"{ARGON2_MEMORY_LIMIT_KIB >> 10} MiB per try (at most 1 GiB, cryptsetup's default "
                                   "ceiling, and half of this machine's RAM)")
    try:
        if kind == "argon2i":
            return a2.Argon2i(salt=salt, length=length, iterations=time, lanes=cpus,
                              memory_cost=memory_kib).derive(password)
        return a2.Argon2id(salt=salt, length=length, iterations=time, lanes=cpus,
                           memory_cost=memory_kib).derive(password)
    except (ValueError, TypeError) as exc:
        raise LuksUnsupportedError(f"{kind} parameters are not usable: {exc}") from None


@dataclass(frozen=True)
class KdfParams:
    """A keyslot KDF: ``pbkdf2`` (hash, iterations) or ``argon2i``/``argon2id`` (time, memory, cpus)."""

    type: str
    salt: bytes
    hash: str = "sha256"
    iterations: int = 0
    time: int = 0
    memory: int = 0
    cpus: int = 0

    def derive(self, password: bytes, length: int) -> bytes:
        """Derive ``length`` bytes from ``password``."""
        if self.type == "pbkdf2":
            return pbkdf2(self.hash, password, self.salt, self.iterations, length)
        if self.type in ("argon2i", "argon2id"):
            return argon2(self.type, password, self.salt, time=self.time,
                          memory_kib=self.memory, cpus=self.cpus, length=length)
        raise LuksUnsupportedError(f"KDF {self.type!r} is not supported")


def _diffuser(hash_name: str, length: int) -> Callable[[bytes], bytes]:
    """The LUKS AF diffusion for ``length``-byte buffers: hash each digest-sized block
    with its big-endian index (the index prefixes are hashed once and copied)."""
    if _botan_hash(hash_name):
        from hotluks.luks import botanhash

        bsize = botanhash.digest_size(hash_name)

        def diffuse_botan(data: bytes) -> bytes:
            return b"".join(botanhash.digest(hash_name, i.to_bytes(4, "big"), data[i * bsize:(i + 1) * bsize])
                            [:len(data[i * bsize:(i + 1) * bsize])] for i in range(-(-length // bsize)))
        return diffuse_botan
    from cryptography.hazmat.primitives import hashes

    algo = hash_algorithm(hash_name)
    size = algo.digest_size
    prefixes = []
    for i in range(-(-length // size)):
        h = hashes.Hash(algo)
        h.update(i.to_bytes(4, "big"))
        prefixes.append(h)

    def diffuse(data: bytes) -> bytes:
        out = b""
        for i, prefix in enumerate(prefixes):
            h = prefix.copy()
            block = data[i * size:(i + 1) * size]
            h.update(block)
            out += h.finalize()[:len(block)]
        return out

    return diffuse


def af_merge(material: bytes, key_bytes: int, stripes: int, hash_name: str) -> bytes:
    """Recover a key from ``stripes`` AF stripes of ``key_bytes`` each."""
    if stripes < 1 or len(material) < key_bytes * stripes:
        raise LuksUnsupportedError("anti-forensic material is shorter than its stripes")
    diffuse = _diffuser(hash_name, key_bytes)
    acc = bytes(key_bytes)
    for i in range(stripes - 1):
        stripe = material[i * key_bytes:(i + 1) * key_bytes]
        mixed = (int.from_bytes(acc, "big") ^ int.from_bytes(stripe, "big")).to_bytes(key_bytes, "big")
        acc = diffuse(mixed)
    last = material[(stripes - 1) * key_bytes:stripes * key_bytes]
    return (int.from_bytes(acc, "big") ^ int.from_bytes(last, "big")).to_bytes(key_bytes, "big")


def af_split(key: bytes, stripes: int, hash_name: str, random: bytes) -> bytes:
    """Split ``key`` into ``stripes`` stripes; ``random`` supplies stripes-1 random stripes."""
    n = len(key)
    if len(random) < n * (stripes - 1):
        raise ValueError("not enough random bytes for the AF split")
    diffuse = _diffuser(hash_name, n)
    acc = bytes(n)
    for i in range(stripes - 1):
        stripe = random[i * n:(i + 1) * n]
        mixed = (int.from_bytes(acc, "big") ^ int.from_bytes(stripe, "big")).to_bytes(n, "big")
        acc = diffuse(mixed)
    last = (int.from_bytes(acc, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return random[:n * (stripes - 1)] + last
