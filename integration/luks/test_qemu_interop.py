"""Engine ↔ QEMU: engine-made LUKS1 headers (attached and detached) open in QEMU's luks
driver, data QEMU writes decrypts in the engine, and data the engine encrypts reads back
as plaintext through QEMU."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

import hotluks.luks as luks

pytestmark = pytest.mark.qemu

SIZE = 4 << 20


def _secret(keyfile: Path) -> str:
    return f"secret,id=sec0,file={keyfile}"


def _engine_volume(files: Any, passphrase: bytes, detached: bool, cipher: str, bits: int) -> tuple[Path, Path | None]:
    payload = files.blank("payload.img", SIZE + (0 if detached else 2 << 20))
    header = files.root / "header.img" if detached else None
    luks.format_luks1(payload, passphrase, header=header, cipher=cipher, key_size=bits,
                      kdf=luks.make_kdf("pbkdf2", iterations=1000))
    return payload, header


CIPHERS = [("aes-xts-plain64", 512), ("aes-cbc-essiv:sha256", 256), ("aes-cbc-plain64", 256),
           # issue 11: every cipher QEMU's LUKS driver opens (Botan for serpent/twofish, cryptography for cast5)
           ("aes-xts-essiv:sha256", 512), ("aes-xts-plain64", 384), ("aes-cbc-plain", 256), ("aes-xts-plain", 256),
           ("serpent-xts-plain64", 512), ("serpent-cbc-essiv:sha256", 256), ("twofish-xts-plain64", 256),
           ("twofish-cbc-plain64", 128), ("cast5-cbc-plain64", 128), ("cast5-cbc-plain", 128)]


@pytest.mark.parametrize("cipher,bits", CIPHERS, ids=[c for c, _ in CIPHERS])
@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_qemu_writes_engine_decrypts(qemu_io: str, files: Any, keyfile: Path, passphrase: bytes,
                                     detached: bool, cipher: str, bits: int) -> None:
    payload, header = _engine_volume(files, passphrase, detached, cipher, bits)
    files.run([qemu_io, "--object", _secret(keyfile), "--image-opts", files.image_opts(payload, header),
               "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa7 1048064 4608", "-c", f"write -P 0x11 {SIZE - 512} 512"])
    out = io.BytesIO()
    assert luks.decrypt_payload(payload, out, passphrase, header=header) == SIZE
    plain = out.getvalue()
    assert len(plain) == SIZE
    # Unwritten sectors hold zero ciphertext, which decrypts to noise: compare what QEMU wrote.
    assert plain[0:65536] == b"\x5a" * 65536
    assert plain[1048064:1048064 + 4608] == b"\xa7" * 4608
    assert plain[SIZE - 512:] == b"\x11" * 512
    assert plain[65536:66048] != bytes(512)


@pytest.mark.parametrize("cipher,bits", CIPHERS, ids=[c for c, _ in CIPHERS])
@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_engine_encrypts_qemu_reads_plaintext(qemu_img: str, files: Any, keyfile: Path, passphrase: bytes,
                                              detached: bool, cipher: str, bits: int) -> None:
    payload, header = _engine_volume(files, passphrase, detached, cipher, bits)
    data = os.urandom(SIZE)
    assert luks.encrypt_payload(io.BytesIO(data), payload, passphrase, header=header) == SIZE
    raw = files.root / "out.raw"
    files.run([qemu_img, "convert", "--object", _secret(keyfile), "--image-opts",
               files.image_opts(payload, header), "-O", "raw", str(raw)])
    assert raw.read_bytes() == data


def test_qemu_made_luks_unlocks_and_decrypts_in_engine(qemu_img: str, qemu_io: str, files: Any, keyfile: Path,
                                                        passphrase: bytes, cryptsetup: Any) -> None:
    image = files.root / "qemu.luks"
    files.run([qemu_img, "create", "--object", _secret(keyfile), "-f", "luks", "-o",
               "key-secret=sec0,iter-time=10", str(image), "4M"])
    files.run([qemu_io, "--object", _secret(keyfile), "--image-opts",
               f"driver=luks,key-secret=sec0,file.driver=file,file.filename={image}", "-c", "write -P 0x3c 4096 8192"])
    vk = luks.unlock(image, passphrase)
    assert vk.key == cryptsetup.volume_key(image, keyfile)
    out = io.BytesIO()
    luks.decrypt_payload(image, out, vk)
    plain = out.getvalue()
    assert len(plain) == 4 << 20
    assert plain[4096:4096 + 8192] == b"\x3c" * 8192


QEMU_MADE = [("serpent-256", "xts", "plain64"), ("twofish-128", "cbc", "essiv"), ("cast5-128", "cbc", "plain64"),
             ("aes-192", "xts", "plain64"), ("aes-256", "xts", "essiv"), ("twofish-256", "xts", "plain64")]


@pytest.mark.parametrize("alg,mode,ivgen", QEMU_MADE, ids=["-".join(c) for c in QEMU_MADE])
def test_qemu_made_ciphers_decrypt_in_engine(qemu_img: str, qemu_io: str, files: Any, keyfile: Path,
                                             passphrase: bytes, alg: str, mode: str, ivgen: str) -> None:
    image = files.root / "qemu.luks"
    hash_opt = ",ivgen-hash-alg=sha256" if ivgen == "essiv" else ""
    files.run([qemu_img, "create", "--object", _secret(keyfile), "-f", "luks", "-o",
               f"key-secret=sec0,iter-time=10,cipher-alg={alg},cipher-mode={mode},ivgen-alg={ivgen}{hash_opt}",
               str(image), "4M"])
    files.run([qemu_io, "--object", _secret(keyfile), "--image-opts",
               f"driver=luks,key-secret=sec0,file.driver=file,file.filename={image}",
               "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x33 3M 4096"])
    out = io.BytesIO()
    luks.decrypt_payload(image, out, passphrase)
    plain = out.getvalue()
    assert plain[:1 << 20] == b"\x5a" * (1 << 20) and plain[3 << 20:(3 << 20) + 4096] == b"\x33" * 4096


@pytest.mark.parametrize("hash_alg", ["ripemd160", "sha512"])
def test_qemu_made_hash_algorithms_unlock_in_engine(qemu_img: str, qemu_io: str, files: Any, keyfile: Path,
                                                    passphrase: bytes, hash_alg: str) -> None:
    """QEMU's LUKS1 hash-alg choices (ripemd160 comes from Botan) unlock and decrypt in the engine."""
    image = files.root / "qemu.luks"
    files.run([qemu_img, "create", "--object", _secret(keyfile), "-f", "luks", "-o",
               f"key-secret=sec0,iter-time=10,hash-alg={hash_alg}", str(image), "4M"])
    files.run([qemu_io, "--object", _secret(keyfile), "--image-opts",
               f"driver=luks,key-secret=sec0,file.driver=file,file.filename={image}", "-c", "write -P 0x6b 0 64k"])
    out = io.BytesIO()
    luks.decrypt_payload(image, out, passphrase)
    assert luks.open_header(image).hash == hash_alg and out.getvalue()[:65536] == b"\x6b" * 65536
