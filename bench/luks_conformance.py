#!/usr/bin/env python3
"""Conformance run of the bundled LUKS engine over cryptsetup's public test images.

Usage: .venv/bin/python bench/luks_conformance.py [CORPUS_DIR]   (default: ../shared/luks-corpus)

Each image is unpacked into a temporary directory, opened by the engine and, for
comparison, by ``cryptsetup luksDump``; the table shows both verdicts, what the
engine did (unlock, payload checksum) and why it refused.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hotluks.errors import LuksError  # noqa: E402
from hotluks.luks import decrypt_payload, open_header, unlock  # noqa: E402

COMPAT_DIGESTS = {
    "compatimage.img": ("sha256", "7428e8f2436882a07eb32765086f5c899474c08b5576f556b573d2aabdf923e8"),
    "compatv10image.img": ("sha1", "51b48c2471a7593ceaf14dc5e66bca86ed05f6cc"),
}
PASSPHRASES = {"compat": b"compatkey", "test_image_": b"Qx3qn46vq0v"}


@dataclass
class Row:
    name: str
    cryptsetup: str
    engine: str
    detail: str


def unpack(corpus: Path, into: Path) -> None:
    for item in sorted(corpus.iterdir()):
        if item.name.endswith(".tar.xz"):
            with tarfile.open(item, "r:xz") as tar:
                tar.extractall(into, filter="data")
        elif item.suffix == ".xz":
            (into / item.name[:-3]).write_bytes(lzma.decompress(item.read_bytes()))


def cryptsetup_verdict(path: Path) -> str:
    if shutil.which("cryptsetup") is None:
        return "n/a"
    proc = subprocess.run(["cryptsetup", "luksDump", str(path)], capture_output=True)
    return "accepts" if proc.returncode == 0 else "rejects"


def cryptsetup_slot(path: Path, secret: bytes, slot: int) -> str:
    if shutil.which("cryptsetup") is None:
        return "n/a"
    proc = subprocess.run(["cryptsetup", "luksOpen", "--test-passphrase", "--key-slot", str(slot),
                           "--key-file", "-", str(path)], input=secret, capture_output=True)
    return "opens" if proc.returncode == 0 else f"refuses (rc {proc.returncode})"


def passphrase_for(path: Path) -> bytes | None:
    if path.parent.name == "luks1-images":
        return (path.parent / "keyfile1").read_bytes()
    for prefix, secret in PASSPHRASES.items():
        if path.name.startswith(prefix):
            return secret
    return None


def check(path: Path) -> Row:
    verdict = cryptsetup_verdict(path)
    try:
        hdr = open_header(path)
    except LuksError as exc:
        return Row(path.name, verdict, "rejects", f"{type(exc).__name__}: {exc}")
    notes = [f"LUKS{hdr.version} {hdr.cipher} {hdr.hash}"]
    if hdr.read_only:
        notes.append(f"read-only (requirements: {', '.join(hdr.requirements)})")
    secret = passphrase_for(path)
    if secret is None:
        return Row(path.name, verdict, "accepts", "; ".join(notes + ["no passphrase known: header only"]))
    try:
        for slot in hdr.keyslots:
            try:
                unlock(hdr, secret, keyslot=slot.index)
                mine = "opens"
            except LuksError as exc:
                mine = f"{type(exc).__name__}"
            notes.append(f"keyslot {slot.index}: engine {mine}, cryptsetup {cryptsetup_slot(path, secret, slot.index)}")
        if path.name.startswith("compat"):
            wrong = b"rUkL4RUryBom"
            try:
                unlock(hdr, wrong)
                notes.append("WRONG PASSPHRASE OPENED")
            except LuksError:
                notes.append("wrong passphrase refused")
        if path.name in COMPAT_DIGESTS:
            algo, want = COMPAT_DIGESTS[path.name]
            out = io.BytesIO()
            decrypt_payload(path, out, unlock(hdr, secret))
            got = hashlib.new(algo, out.getvalue()).hexdigest()
            notes.append(f"payload {algo} {'matches' if got == want else 'MISMATCH ' + got}")
    except LuksError as exc:
        notes.append(f"unlock: {type(exc).__name__}: {exc}")
    return Row(path.name, verdict, "accepts", "; ".join(notes))


def main(argv: list[str]) -> int:
    corpus = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "luks-corpus"
    if not corpus.is_dir():
        print(f"corpus not found: {corpus}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="luks-corpus-") as tmp:
        root = Path(tmp)
        unpack(corpus, root)
        images = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("README", "keyfile1"))
        rows = [check(p) for p in images]
    print("| image | cryptsetup luksDump | engine | detail |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.cryptsetup} | {r.engine} | {r.detail} |")
    agree = sum(r.cryptsetup == r.engine for r in rows)
    print(f"\n{agree}/{len(rows)} header verdicts agree with cryptsetup luksDump")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
