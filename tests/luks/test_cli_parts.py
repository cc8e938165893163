"""Pure parts of ``hotluks luks``: passphrase sources, the progress bar, redaction."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from hotluks.cli.luks import PROGRESS_MIN_BYTES, ProgressBar, header_summary, read_passphrase
from hotluks.luks import create
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.volume import open_header


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_for_long_runs() -> None:
    tty = FakeTty()
    bar = ProgressBar(PROGRESS_MIN_BYTES * 2, tty)
    bar(PROGRESS_MIN_BYTES, 0)
    bar(PROGRESS_MIN_BYTES * 2, 0)
    bar.finish()
    assert "100.0%" in tty.getvalue() and tty.getvalue().endswith("\n")
    short = FakeTty()
    ProgressBar(1 << 20, short)(1 << 20, 1 << 20)
    assert short.getvalue() == ""
    pipe = io.StringIO()
    ProgressBar(PROGRESS_MIN_BYTES * 2, pipe)(PROGRESS_MIN_BYTES * 2, 0)
    assert pipe.getvalue() == ""


def test_key_file_is_read_byte_for_byte(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"a\nb\n\x00")
    assert read_passphrase(str(key)) == b"a\nb\n\x00"


def test_volume_key_and_header_do_not_show_secrets(luks1_blob: bytes, passphrase: bytes) -> None:
    hdr = open_header(luks1_blob)
    vk = unlock_header(hdr, passphrase)
    for text in (repr(vk), str(vk), repr(hdr), str(header_summary(hdr))):
        assert vk.key.hex() not in text and repr(vk.key)[2:-1] not in text
        assert passphrase.decode() not in text


def test_detached_luks2_header_summary(passphrase: bytes) -> None:
    from hotluks.luks.kdf import KdfParams

    meta = create.build_luks2(os.urandom(32), passphrase, cipher="aes-cbc-essiv:sha256",
                              kdf=KdfParams("argon2id", os.urandom(32), time=3, memory=64, cpus=1),
                              digest_hash="sha512", digest_iterations=1000, uuid="u", detached=True,
                              sector_size=2048, rand=os.urandom)
    info = header_summary(open_header(meta.blob))
    assert info["detached"] is True and info["payload_offset"] == 0 and info["sector_size"] == 2048
    assert info["keyslots"][0]["kdf"] == "argon2id" and info["keyslots"][0]["memory"] == 64
    assert info["hash"] == "sha512"


@pytest.mark.parametrize("sector", [500, 8192])
def test_bad_sector_sizes_are_refused(passphrase: bytes, sector: int) -> None:
    from hotluks.errors import LuksUnsupportedError
    from hotluks.luks.kdf import KdfParams

    with pytest.raises(LuksUnsupportedError):
        create.build_luks2(os.urandom(64), passphrase, cipher="aes-xts-plain64",
                           kdf=KdfParams("pbkdf2", b"s" * 32, iterations=1000), digest_hash="sha256",
                           digest_iterations=1000, uuid="u", detached=True, sector_size=sector, rand=os.urandom)
