"""cryptsetup's own test material (Debian source package, fetched at test time) against the engine.

- every header ``tests/generators/generate-luks2-*.sh`` makes from ``luks2_valid_hdr.img``: the engine's
  verdict (valid / invalid) equals cryptsetup's ``luksDump`` and the one ``luks2-validation-test`` documents;
- ``luks2_keyslot_unassigned.img``: a passphrase opens the volume for the engine exactly when it does for
  ``cryptsetup open --test-passphrase`` (the unbound keyslot's passphrase does not);
- ``luks2_mda_images.tar.xz``: every metadata size opens, with cryptsetup's volume key, also with the primary
  header's magic wiped (secondary-header recovery);
- ``luks1-images.tar.xz`` and the compat images: open to the documented plaintext, or are refused with a
  stated reason (a cipher, mode or hash the engine does not implement).
"""

from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import LuksError, LuksUnsupportedError, WrongPassphraseError
from hotluks.luks import blockciphers, decrypt_payload, open_header, unlock

pytestmark = pytest.mark.cryptsetup
PWD0, PWD1, PWD4, PWDW = b"compatkey", b"93R4P4pIqAH8", b"Qx3qn46vq0v", b"rUkL4RUryBom"  # cryptsetup's compat-test2
# What the engine does not implement: the luks1-images that use it must be refused for that reason.
UNSUPPORTED = {"lrw": ("lrw",), "essiv-wp256": ("wp256",)}
if blockciphers.botan() is None:  # serpent, twofish and whirlpool come from Botan (Debian's python3-botan)
    UNSUPPORTED.update({"serpent": ("python3-botan",), "twofish": ("python3-botan",), "whirlpool": ("python3-botan",)})


def _unxz(src: Path, dst: Path) -> Path:
    dst.write_bytes(lzma.decompress(src.read_bytes()))
    return dst


def _engine_verdict(path: Path) -> str:
    try:
        open_header(str(path))
    except LuksError:
        return "F"
    return "R"


def _cryptsetup_verdict(cryptsetup: Any, path: Path, scratch: Path) -> str:
    copy = scratch / f"cs-{path.name}"  # luksDump repairs a damaged copy on disk: never the engine's input
    shutil.copyfile(path, copy)
    ok = cryptsetup("luksDump", str(copy), check=False).returncode == 0
    copy.unlink()
    return "R" if ok else "F"


def _documented(tests: Path) -> dict[str, str]:
    text = (tests / "luks2-validation-test").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r'^RUN\s+(\S+\.img)\s+"([RF])"', text, re.M)}


@pytest.fixture(scope="module")
def generated(cryptsetup_tests: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("luks2-generators")
    gen = work / "generators"
    shutil.copytree(cryptsetup_tests / "generators", gen)
    images = work / "images"
    images.mkdir()
    orig = _unxz(cryptsetup_tests / "luks2_valid_hdr.img.xz", images / "luks2_valid_hdr.img")
    for script in sorted(gen.glob("generate-luks2-*.sh")):
        proc = subprocess.run(["bash", script.name, str(images), str(orig)], cwd=gen, capture_output=True,
                              timeout=120)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr.decode(errors='replace')}"
    return {p.name: p for p in sorted(images.glob("*.img"))}


def test_generated_headers_verdicts_equal_cryptsetups(generated: dict[str, Path], cryptsetup: Any,
                                                      cryptsetup_tests: Path, tmp_path: Path) -> None:
    documented = _documented(cryptsetup_tests)
    rows = []
    for name, path in generated.items():
        engine = _engine_verdict(path)
        oracle = _cryptsetup_verdict(cryptsetup, path, tmp_path)
        rows.append((name, engine, oracle, documented.get(name, "?")))
    wrong = [r for r in rows if r[1] != r[2]]
    assert not wrong, "engine verdict differs from cryptsetup's: " + ", ".join(f"{n} (engine {e}, cryptsetup {o})"
                                                                               for n, e, o, _ in wrong)
    assert all(d in ("?", o) for _, _, o, d in rows), "cryptsetup disagrees with its own documented verdicts"
    assert len(rows) >= 80 and {"R", "F"} <= {r[1] for r in rows}
    assert sum(d != "?" for *_, d in rows) >= 75  # nearly all are listed in luks2-validation-test


def _cs_opens(cryptsetup: Any, image: Path, passphrase: bytes, *extra: str) -> bool:
    proc = subprocess.run([cryptsetup.binary, "open", "--test-passphrase", *extra, str(image)], input=passphrase,
                          capture_output=True, timeout=300)
    return proc.returncode == 0


def _engine_opens(image: Path, passphrase: bytes) -> bool:
    try:
        unlock(str(image), passphrase)
    except WrongPassphraseError:
        return False
    return True


def test_keyslot_unassigned_image(cryptsetup_tests: Path, cryptsetup: Any, tmp_path: Path) -> None:
    image = _unxz(cryptsetup_tests / "luks2_keyslot_unassigned.img.xz", tmp_path / "unassigned.img")
    hdr = open_header(str(image))
    bound = next(d for d in hdr.digests if hdr.data_segment.index in d.segments)
    assert any(k.index not in bound.keyslots for k in hdr.keyslots)  # the image has an unbound keyslot
    assert _cs_opens(cryptsetup, image, PWD1, "--key-slot", "1")  # PWD1 is that keyslot's passphrase …
    for passphrase in (PWD0, PWD1, PWDW):
        assert _engine_opens(image, passphrase) == _cs_opens(cryptsetup, image, passphrase), passphrase
    assert not _engine_opens(image, PWD1)  # … and it never unlocks the data segment


def _cs_volume_key(cryptsetup: Any, image: Path, passphrase: bytes, scratch: Path) -> bytes:
    keyfile = scratch / "cs.key"
    keyfile.write_bytes(passphrase)
    return bytes(cryptsetup.volume_key(image, keyfile))


def test_every_metadata_size_opens_also_from_the_secondary_header(cryptsetup_tests: Path, cryptsetup: Any,
                                                                   tmp_path: Path) -> None:
    with tarfile.open(cryptsetup_tests / "luks2_mda_images.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    images = sorted(tmp_path.glob("test_image_*"), key=lambda p: int(p.name.rsplit("_", 1)[1]))
    assert [int(p.name.rsplit("_", 1)[1]) for p in images] == [16 << i for i in range(9)]
    for image in images:
        want = _cs_volume_key(cryptsetup, image, PWD4, tmp_path)
        assert unlock(str(image), PWD4).key == want
        hdr = open_header(str(image))
        assert hdr.hdr_size == int(image.name.rsplit("_", 1)[1]) << 10
        wiped = tmp_path / f"wiped-{image.name}"
        data = bytearray(image.read_bytes())
        data[:6] = bytes(6)  # primary magic gone: cryptsetup finds the secondary at this metadata size
        wiped.write_bytes(bytes(data))
        assert unlock(str(wiped), PWD4).key == want
        assert _cryptsetup_verdict(cryptsetup, wiped, tmp_path) == "R"


def _blkid_uuid(path: Path) -> str:
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    return subprocess.run([blkid, "-p", "-o", "value", "-s", "UUID", str(path)], capture_output=True,
                          text=True).stdout.strip()


def test_luks1_images_open_to_their_filesystem_or_are_refused_for_a_stated_reason(
        cryptsetup_tests: Path, cryptsetup: Any, tmp_path: Path) -> None:
    with tarfile.open(cryptsetup_tests / "luks1-images.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "luks1-images"
    key = (folder / "keyfile1").read_bytes()
    images = sorted(folder.glob("luks1_*.img"))
    assert len(images) == 12
    opened = []
    for image in images:
        reasons = [why for token, whys in UNSUPPORTED.items() if token in image.name for why in whys]
        try:
            vk = unlock(str(image), key)
        except LuksUnsupportedError as exc:
            assert reasons and any(r in str(exc) for r in reasons), (image.name, str(exc))
            continue
        assert not reasons, f"{image.name} opened although it uses {reasons}"
        plain = tmp_path / f"{image.name}.plain"
        with open(plain, "wb") as out:
            decrypt_payload(str(image), out, vk)
        assert _blkid_uuid(plain) == "DEAD-BABE", image.name  # luks1-compat-test's documented plaintext
        opened.append(image.name)
    assert len(opened) == (10 if blockciphers.botan() else 3), opened  # aes (+ Botan: serpent, twofish, whirlpool)


COMPAT = {  # data-area digests documented with the public corpus (README: compatimage, compatv10image)
    "compatimage.img": ("sha256", "7428e8f2436882a07eb32765086f5c899474c08b5576f556b573d2aabdf923e8"),
    "compatv10image.img": ("sha1", "51b48c2471a7593ceaf14dc5e66bca86ed05f6cc"),
}


@pytest.mark.parametrize("name", list(COMPAT))
def test_compat_images_decrypt_to_the_documented_data(name: str, cryptsetup_tests: Path, tmp_path: Path) -> None:
    image = _unxz(cryptsetup_tests / f"{name}.xz", tmp_path / name)
    with pytest.raises(WrongPassphraseError):
        unlock(str(image), PWDW)
    algorithm, want = COMPAT[name]
    plain = tmp_path / "plain"
    with open(plain, "wb") as out:
        decrypt_payload(str(image), out, PWD0)
    assert hashlib.new(algorithm, plain.read_bytes()).hexdigest() == want


def test_compatimage2_every_keyslot_opens_with_cryptsetups_key(cryptsetup_tests: Path, cryptsetup: Any,
                                                             tmp_path: Path) -> None:
    image = _unxz(cryptsetup_tests / "compatimage2.img.xz", tmp_path / "compatimage2.img")
    want = _cs_volume_key(cryptsetup, image, PWD0, tmp_path)
    hdr = open_header(str(image))
    kdfs = {k.index: k.kdf.type for k in hdr.keyslots}
    for slot in kdfs:
        assert unlock(hdr, PWD0, keyslot=slot).key == want, kdfs
    assert any(t.startswith("argon2") for t in kdfs.values()), kdfs
    with pytest.raises(WrongPassphraseError):
        unlock(hdr, PWDW)
