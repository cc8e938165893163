"""``hotluks luks …`` end to end: exit codes, cryptsetup interop, and no secret in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cryptsetup


class Cli:
    def __init__(self, secrets: list[bytes]) -> None:
        self.secrets = secrets

    def __call__(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([sys.executable, "-m", "hotluks", "luks", *args], input=input,
                              capture_output=True, timeout=300)
        for secret in self.secrets:
            assert secret not in proc.stdout and secret not in proc.stderr, "secret leaked into output"
        return proc


@pytest.fixture
def cli(passphrase: bytes, other_passphrase: bytes) -> Cli:
    return Cli([passphrase, other_passphrase])


FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def test_format_verify_dump_exit_codes(cli: Cli, cryptsetup: Any, files: Any, keyfile: Path,
                                       other_keyfile: Path) -> None:
    device = files.blank("disk.img", 20 << 20)
    r = cli("format", str(device), "--type", "luks2", "--key-file", str(keyfile), *FAST, "--sector-size", "4096")
    assert r.returncode == 0, r.stderr
    assert cryptsetup.test_passphrase(device, keyfile) == 0
    again = cli("format", str(device), "--key-file", str(other_keyfile), *FAST)
    assert again.returncode == 2 and b"--force" in again.stderr
    assert cli("verify", str(device), "--key-file", str(keyfile)).returncode == 0
    wrong = cli("verify", str(device), "--key-file", str(other_keyfile))
    assert wrong.returncode == 1 and b"passphrase" in wrong.stderr
    info = json.loads(cli("dump", str(device), "--json").stdout)
    assert info["version"] == 2 and info["sector_size"] == 4096 and info["keyslots"][0]["kdf"] == "pbkdf2"
    junk = files.root / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    bad = cli("dump", str(junk))
    assert bad.returncode == 2 and b"not a LUKS device" in bad.stderr and b"Traceback" not in bad.stderr
    assert cli("verify", str(junk), "--key-file", str(keyfile)).returncode == 2
    missing = cli("dump", str(files.root / "nope"))
    assert missing.returncode == 2 and b"Traceback" not in missing.stderr


def test_unsupported_cipher_is_exit_2(cli: Cli, cryptsetup: Any, files: Any, keyfile: Path) -> None:
    device = files.blank("disk.img", 20 << 20)
    cryptsetup("luksFormat", "--type", "luks1", *FAST[2:], "--key-file", str(keyfile), str(device))
    # luksFormat checks ciphers through device-mapper, so rename the cipher in place (offset 8, 32 bytes)
    with open(device, "r+b") as f:
        f.seek(8)
        f.write(b"camellia".ljust(32, b"\0"))
    assert cryptsetup("luksDump", str(device)).returncode == 0
    assert cli("dump", str(device)).returncode == 0
    r = cli("verify", str(device), "--key-file", str(keyfile))
    assert r.returncode == 2 and b"camellia" in r.stderr and b"Traceback" not in r.stderr


def test_detached_luks1_roundtrip_through_stdin_and_stdout(cli: Cli, cryptsetup: Any, files: Any, keyfile: Path,
                                                           passphrase: bytes) -> None:
    payload = files.blank("payload.img", 1 << 20)
    header = files.root / "header.img"
    r = cli("format", str(payload), "--header", str(header), "--type", "luks1", "--key-file", "-", *FAST,
            input=passphrase)
    assert r.returncode == 0, r.stderr
    assert cryptsetup.test_passphrase(payload, keyfile, header) == 0
    data = os.urandom(1 << 20)
    r = cli("encrypt", "-", str(payload), "--header", str(header), "--key-file", str(keyfile), input=data)
    assert r.returncode == 0, r.stderr
    assert payload.read_bytes() != data
    r = cli("decrypt", str(payload), "-", "--header", str(header), "--key-file", str(keyfile))
    assert r.returncode == 0 and r.stdout == data


def test_key_file_is_used_byte_for_byte(cli: Cli, cryptsetup: Any, files: Any) -> None:
    device = files.blank("disk.img", 20 << 20)
    key = files.root / "nl.key"
    key.write_bytes(b"with newline\n")
    assert cli("format", str(device), "--type", "luks1", "--key-file", str(key), *FAST).returncode == 0
    assert cryptsetup.test_passphrase(device, key) == 0
    stripped = files.root / "stripped.key"
    stripped.write_bytes(b"with newline")
    assert cli("verify", str(device), "--key-file", str(stripped)).returncode == 1
    # without --key-file, a non-terminal stdin gives its first line (newline excluded)
    assert cli("verify", str(device), input=b"with newline\n").returncode == 1
    assert cli("verify", str(device), "--key-file", "-", input=b"with newline\n").returncode == 0


def test_add_and_remove_key(cli: Cli, cryptsetup: Any, files: Any, keyfile: Path, other_keyfile: Path) -> None:
    device = files.blank("disk.img", 20 << 20)
    cryptsetup("luksFormat", "--type", "luks2", *FAST, "--key-file", str(keyfile), str(device))
    r = cli("add-key", str(device), str(other_keyfile), "--key-file", str(keyfile), *FAST)
    assert r.returncode == 0 and b"keyslot 1" in r.stdout
    assert cryptsetup.test_passphrase(device, other_keyfile) == 0
    assert cli("remove-key", str(device), "--key-file", str(keyfile)).returncode == 0
    assert cryptsetup.test_passphrase(device, keyfile) != 0
    assert cli("verify", str(device), "--key-file", str(keyfile)).returncode == 1
