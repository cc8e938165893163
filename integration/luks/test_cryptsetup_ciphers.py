"""serpent / twofish / cast5 / aes-xts-essiv volumes made by cryptsetup open in the engine, and engine-made ones in
cryptsetup. cryptsetup needs the kernel's crypto API (AF_ALG) for these ciphers on image files; where this
kernel lacks it the test is skipped with cryptsetup's own words (QEMU-made volumes cover the ciphers then:
test_qemu_interop.py, and cryptsetup's own luks1-images: test_cryptsetup_material.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hotluks.luks as luks

pytestmark = pytest.mark.cryptsetup
CASES = [("luks1", "serpent-xts-plain64", 512), ("luks1", "twofish-cbc-essiv:sha256", 256),
         ("luks1", "cast5-cbc-plain64", 128), ("luks2", "aes-xts-essiv:sha256", 512),
         ("luks2", "serpent-cbc-plain64", 256), ("luks2", "aes-xts-plain64", 384)]


@pytest.mark.parametrize("version,cipher,bits", CASES, ids=[f"{v}-{c}-{b}" for v, c, b in CASES])
def test_cipher_interop_with_cryptsetup(cryptsetup: Any, tmp_path: Path, keyfile: Path, passphrase: bytes,
                                        version: str, cipher: str, bits: int) -> None:
    made = tmp_path / "cs.img"
    made.write_bytes(bytes(20 << 20))
    proc = cryptsetup("luksFormat", "--type", version, "--cipher", cipher, "--key-size", str(bits), "--pbkdf",
                      "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", str(keyfile), str(made), check=False)
    if proc.returncode != 0:  # no kernel crypto API (AF_ALG) and no userspace fallback for this cipher
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        pytest.skip(f"cryptsetup cannot use {cipher} here: {lines[-1] if lines else proc.returncode}")
    assert luks.unlock(made, passphrase).key == cryptsetup.volume_key(made, keyfile)
    ours = tmp_path / "engine.img"
    ours.write_bytes(bytes(20 << 20))
    vk = luks.format_volume(ours, passphrase, type=version, cipher=cipher, key_size=bits,
                            kdf=luks.make_kdf("pbkdf2", iterations=1000))
    assert cryptsetup.volume_key(ours, keyfile) == vk.key
