"""Keyslot binding, safe header files and format guards, end to end against cryptsetup (issues 11 and 14)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cryptsetup
FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
CS_FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def hl(*args: str, input: bytes | None = None, umask: int | None = None) -> subprocess.CompletedProcess[bytes]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "hotluks", "luks", *args], input=input, capture_output=True,
                          timeout=300, preexec_fn=set_umask)


@pytest.fixture
def unbound(tmp_path: Path, cryptsetup: Any, keyfile: Path, other_keyfile: Path) -> tuple[Path, Path]:
    """A LUKS2 header (cryptsetup) whose keyslot 1 is unbound (``luksAddKey --unbound``), and a payload."""
    header, payload = tmp_path / "hdr.img", tmp_path / "payload.img"
    payload.write_bytes(os.urandom(1 << 20))
    cryptsetup("luksFormat", "--type", "luks2", *CS_FAST, "--header", str(header), "--key-file", str(keyfile),
               str(payload))
    cryptsetup("luksAddKey", "--unbound", "--key-size", "512", *CS_FAST, "--header", str(header),
               "--key-slot", "1", str(payload), str(other_keyfile))
    dump = cryptsetup("luksDump", "--header", str(header), str(payload)).stdout.decode()
    assert "1: luks2 (unbound)" in dump
    return header, payload


def test_unbound_keyslot_opens_nothing(unbound: tuple[Path, Path], cryptsetup: Any, keyfile: Path,
                                       other_keyfile: Path, tmp_path: Path, other_passphrase: bytes) -> None:
    header, payload = unbound
    assert cryptsetup.test_passphrase(payload, other_keyfile, header) != 0  # the oracle: no key available
    before = header.read_bytes(), payload.read_bytes()
    base = ["--header", str(header), "--key-file", str(other_keyfile)]
    for args in (["verify", str(payload)], ["decrypt", str(payload), str(tmp_path / "out")],
                 ["encrypt", str(keyfile), str(payload)], ["add-key", str(payload), str(keyfile)],
                 ["remove-key", str(payload)]):
        proc = hl(*args, *base)
        assert proc.returncode == 1, (args, proc.stderr)
        assert b"no key available" in proc.stderr.lower(), proc.stderr
        assert other_passphrase not in proc.stdout + proc.stderr
    assert (header.read_bytes(), payload.read_bytes()) == before  # nothing written under the unbound key
    assert hl("verify", str(payload), "--header", str(header), "--key-file", str(keyfile)).returncode == 0


def test_multi_digest_header_opens_only_through_the_segment_digest(unbound: tuple[Path, Path], keyfile: Path) -> None:
    header, payload = unbound
    dump = hl("dump", str(payload), "--header", str(header), "--json")
    assert dump.returncode == 0
    import json

    info = json.loads(dump.stdout)
    assert len(info["digests"]) == 2 and [d["segments"] for d in info["digests"]] == [[0], []]
    proc = hl("verify", str(payload), "--header", str(header), "--key-file", str(keyfile))
    assert proc.stdout.strip() == b"passphrase opens keyslot 0"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_header_files_are_0600_and_replaced_atomically(tmp_path: Path, cryptsetup: Any, keyfile: Path,
                                                       other_keyfile: Path) -> None:
    header, payload = tmp_path / "h.img", tmp_path / "p.img"
    payload.write_bytes(bytes(1 << 20))
    proc = hl("format", str(payload), "--header", str(header), "--key-file", str(keyfile), *FAST, umask=0)
    assert proc.returncode == 0, proc.stderr
    assert _mode(header) == 0o600
    header.chmod(0o644)
    proc = hl("add-key", str(payload), "--header", str(header), "--key-file", str(keyfile), "--key-slot", "5",
              *FAST, str(other_keyfile), umask=0)  # cryptsetup's argument order, options before NEW_KEY_FILE
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"added keyslot 5" and _mode(header) == 0o600
    cs = cryptsetup("luksOpen", "--test-passphrase", "--key-slot", "5", "--key-file", str(other_keyfile),
                    "--header", str(header), str(payload), check=False)
    assert cs.returncode == 0, cs.stderr
    header.chmod(0o644)
    proc = hl("remove-key", str(payload), "--header", str(header), "--key-file", str(other_keyfile), umask=0)
    assert proc.returncode == 0 and _mode(header) == 0o600
    assert cryptsetup.test_passphrase(payload, keyfile, header) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["h.img", "p.img", keyfile.name,
                                                                 other_keyfile.name])  # no temp file left


def test_payload_must_exist_with_a_detached_header(tmp_path: Path, keyfile: Path) -> None:
    header = tmp_path / "h.img"
    missing = tmp_path / "no-such-payload"
    for args in (["format", str(missing), "--header", str(header), *FAST], ["verify", str(missing), "--header",
                                                                             str(header)],
                 ["dump", str(missing), "--header", str(header)]):
        proc = hl(*args, "--key-file", str(keyfile)) if args[0] != "dump" else hl(*args)
        assert proc.returncode == 2 and b"no such payload" in proc.stderr, (args, proc.stderr)
    assert not header.exists()


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="mkfs.ext4 (e2fsprogs) is not installed")
def test_format_refuses_a_filesystem_without_force(tmp_path: Path, keyfile: Path) -> None:
    device = tmp_path / "fs.img"
    device.write_bytes(bytes(8 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(device)], check=True, capture_output=True)
    before = device.read_bytes()
    proc = hl("format", str(device), "--type", "luks1", "--key-file", str(keyfile), *FAST)
    assert proc.returncode == 2 and b"'ext4' superblock signature" in proc.stderr and b"--force" in proc.stderr
    assert device.read_bytes() == before
    assert hl("format", str(device), "--type", "luks1", "--key-file", str(keyfile), *FAST, "--force").returncode == 0


def test_format_refuses_a_non_empty_non_luks_header_file(tmp_path: Path, keyfile: Path) -> None:
    header, payload = tmp_path / "notes.txt", tmp_path / "p.img"
    header.write_text("precious\n")
    payload.write_bytes(bytes(1 << 20))
    proc = hl("format", str(payload), "--header", str(header), "--key-file", str(keyfile), *FAST)
    assert proc.returncode == 2 and b"not a LUKS header" in proc.stderr
    assert header.read_text() == "precious\n"
    proc = hl("format", str(payload), "--header", str(header), "--key-file", str(keyfile), *FAST)
    assert hl("format", str(payload), "--header", str(header), "--key-file", str(keyfile), *FAST,
              "--force").returncode == 0
    proc = hl("format", str(payload), "--header", str(header), "--key-file", str(keyfile), *FAST)
    assert proc.returncode == 2 and b"already holds a LUKS header" in proc.stderr


def test_dump_metadata_size_is_cryptsetups(tmp_path: Path, cryptsetup: Any, keyfile: Path) -> None:
    device = tmp_path / "v.img"
    device.write_bytes(bytes(20 << 20))
    cryptsetup("luksFormat", "--type", "luks2", *CS_FAST, "--luks2-metadata-size", "64k", "--key-file",
               str(keyfile), str(device))
    dump = cryptsetup("luksDump", str(device)).stdout.decode()
    metadata = int(re.search(r"Metadata area:\s*(\d+)", dump).group(1))  # type: ignore[union-attr]
    keyslots = int(re.search(r"Keyslots area:\s*(\d+)", dump).group(1))  # type: ignore[union-attr]
    out = hl("dump", str(device)).stdout.decode()
    assert f"metadata_size:  {metadata}" in out and f"keyslots_size:  {keyslots}" in out


def test_dump_escapes_terminal_sequences_and_flags_weak_headers(tmp_path: Path, cryptsetup: Any,
                                                                keyfile: Path) -> None:
    device = tmp_path / "v.img"
    device.write_bytes(bytes(20 << 20))
    proc = hl("format", str(device), "--type", "luks2", "--key-file", str(keyfile), "--pbkdf", "pbkdf2",
              "--pbkdf-force-iterations", "10")
    assert proc.returncode == 0, proc.stderr
    cryptsetup("config", "--label", "evil\x1b]0;owned\x07\x1b[2J", str(device))
    out = hl("dump", str(device))
    assert out.returncode == 0 and b"\x1b" not in out.stdout and b"\x07" not in out.stdout
    assert b"evil\\x1b]0;owned\\x07" in out.stdout
    assert b"WEAK: keyslot 0: PBKDF2 with 10 iterations" in out.stdout
    weak = hl("verify", str(device), "--key-file", str(keyfile))
    assert weak.returncode == 2 and b"--allow-weak-header" in weak.stderr
    assert hl("verify", str(device), "--key-file", str(keyfile), "--allow-weak-header").returncode == 0


def test_decrypt_into_a_closed_pipe_is_quiet(tmp_path: Path, keyfile: Path) -> None:
    device = tmp_path / "v.img"
    device.write_bytes(bytes(40 << 20))
    assert hl("format", str(device), "--type", "luks1", "--key-file", str(keyfile), *FAST).returncode == 0
    proc = subprocess.run(f"{sys.executable} -m hotluks luks decrypt {device} - --key-file {keyfile} | head -c 10 "
                          ">/dev/null; echo rc=${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, timeout=300)
    assert proc.stdout.strip() == b"rc=0" and proc.stderr == b"", proc.stderr


@pytest.mark.parametrize("answer,written", [(b"YES\n", True), (b"yes\n", False)])
def test_format_asks_on_a_terminal_like_cryptsetup(tmp_path: Path, keyfile: Path, answer: bytes,
                                                   written: bool) -> None:
    """On a terminal, an existing non-LUKS header file is overwritten only after a literal YES."""
    import pty
    import select
    import time

    header, payload = tmp_path / "old.hdr", tmp_path / "p.img"
    header.write_bytes(b"important data\n")
    payload.write_bytes(bytes(1 << 20))
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI with the pty as its terminal
        os.execv(sys.executable, [sys.executable, "-m", "hotluks", "luks", "format", str(payload), "--header",
                                  str(header), "--key-file", str(keyfile), *FAST])
    output, deadline, answered = b"", time.monotonic() + 120, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        if not answered and b"Are you sure? (Type 'yes' in capital letters):" in output:
            os.write(fd, answer)
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert answered, output
    assert b"is a non-empty file that is not a LUKS header" in output
    assert (os.waitstatus_to_exitcode(status) == 0) == written, output
    assert (header.read_bytes()[:6] == b"LUKS\xba\xbe") == written
