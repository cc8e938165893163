#!/usr/bin/env python3
"""Benchmark the bundled LUKS engine against cryptsetup, openssl and qemu-img, in one run.

Usage: .venv/bin/python bench/bench_luks.py [--size-mib 1024] [--repeat 3] [--workdir DIR]

Prints, measured in this run:
- unlock time: engine (open_header + unlock, in process) / ``cryptsetup luksOpen
  --test-passphrase`` (wall time) for LUKS2 pbkdf2 and argon2id keyslots (goal <= 1.10);
- decrypt throughput of an aes-xts-plain64 (512-bit key) volume: engine / ``openssl speed
  -evp aes-256-xts`` (single core, 16 KiB blocks; goal >= 0.3) and engine / ``qemu-img
  convert`` of the same volume (goal >= 3).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import hotluks.luks as luks  # noqa: E402

PASS = b"benchmark passphrase"


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(*args: str, input: bytes | None = None) -> None:
    proc = subprocess.run(list(args), capture_output=True, input=input)
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed: {proc.stderr.decode(errors='replace')}")


def unlock_rows(work: Path, repeat: int) -> list[tuple[str, float, float]]:
    key = work / "pass.key"
    key.write_bytes(PASS)
    configs = {
        "LUKS2 pbkdf2-sha256 1,000,000 it.": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000000"],
        "LUKS2 argon2id t=4 m=256 MiB p=1": ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
                                             "--pbkdf-memory", "262144", "--pbkdf-parallel", "1"],
        "LUKS2 argon2id t=4 m=256 MiB p=2": ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
                                             "--pbkdf-memory", "262144", "--pbkdf-parallel", "2"],
    }
    rows = []
    for name, args in configs.items():
        img = work / "unlock.img"
        with open(img, "wb") as f:
            f.truncate(20 << 20)
        run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *args, "--key-file", str(key), str(img))
        engine = best(lambda: luks.unlock(luks.open_header(img), PASS), repeat)
        cs = best(lambda: run("cryptsetup", "luksOpen", "--test-passphrase", "--key-file", str(key), str(img)), repeat)
        rows.append((name, engine, cs))
        img.unlink()
    return rows


def openssl_xts() -> float:
    """openssl speed -evp aes-256-xts, 16 KiB column, bytes/s."""
    out = subprocess.run(["openssl", "speed", "-evp", "aes-256-xts", "-seconds", "3"],
                         capture_output=True, text=True).stdout
    line = next(ln for ln in out.splitlines() if ln.upper().startswith("AES-256-XTS"))
    value = re.findall(r"([\d.]+)k", line)[-1]
    return float(value) * 1000


def make_volume(work: Path, size: int) -> tuple[Path, Path]:
    """An engine-made LUKS1 aes-xts-plain64 volume whose payload is random ciphertext."""
    img = work / "payload.img"
    with open(img, "wb") as f:
        f.truncate(2 << 20)
    luks.format_luks1(img, PASS, cipher="aes-xts-plain64", key_size=512,
                      kdf=luks.make_kdf("pbkdf2", iterations=1000))
    with open(img, "r+b") as f:
        f.seek(2 << 20)
        left = size
        while left:
            chunk = min(left, 8 << 20)
            f.write(os.urandom(chunk))
            left -= chunk
    key = work / "pass.key"
    key.write_bytes(PASS)
    return img, key


def throughput_rows(work: Path, size: int, repeat: int) -> dict[str, float]:
    img, key = make_volume(work, size)
    vk = luks.unlock(img, PASS)
    out = work / "out.raw"

    def engine_file() -> None:
        with open(out, "wb") as f:
            luks.decrypt_payload(img, f, vk)

    def engine_null() -> None:
        with open(os.devnull, "wb") as f:
            luks.decrypt_payload(img, f, vk)

    def qemu() -> None:
        run("qemu-img", "convert", "--object", f"secret,id=sec0,file={key}", "--image-opts",
            f"driver=luks,key-secret=sec0,file.driver=file,file.filename={img}", "-O", "raw", str(out))

    engine_null()  # warm the page cache
    results = {
        "engine → file": size / best(engine_file, repeat),
        "engine → /dev/null": size / best(engine_null, repeat),
        "qemu-img convert → file": size / best(qemu, repeat),
        "openssl speed aes-256-xts (16 KiB)": openssl_xts(),
    }
    out.unlink(missing_ok=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="payload size for the throughput test")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--workdir", help="where to put the test images (default: a temporary directory)")
    ap.add_argument("--throughput-only", action="store_true", help="skip the unlock rows")
    args = ap.parse_args()
    for tool in ("cryptsetup", "openssl", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="bench-luks-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"# LUKS engine benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} CPUs, best of {args.repeat})\n")
        if not args.throughput_only:
            print("| unlock | engine s | cryptsetup s | engine / cryptsetup (goal <= 1.10) |")
            print("|---|---|---|---|")
            for name, engine, cs in unlock_rows(work, args.repeat):
                print(f"| {name} | {engine:.3f} | {cs:.3f} | {engine / cs:.2f} |")
        size = args.size_mib << 20
        rates = throughput_rows(work, size, args.repeat)
    mb = 1e6
    print(f"\n| decrypt {args.size_mib} MiB aes-xts-plain64 (512-bit key, 512-byte sectors) | MB/s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate / mb:.0f} |")
    engine = rates["engine → file"]
    print(f"\nengine → file / openssl: {engine / rates['openssl speed aes-256-xts (16 KiB)']:.2f} (goal >= 0.3)")
    print(f"engine → /dev/null / openssl: "
          f"{rates['engine → /dev/null'] / rates['openssl speed aes-256-xts (16 KiB)']:.2f}")
    print(f"engine → file / qemu-img convert: {engine / rates['qemu-img convert → file']:.2f} (goal >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
