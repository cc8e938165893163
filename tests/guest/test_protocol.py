"""Agent protocol: request encoding and robust reply parsing."""

from __future__ import annotations

import pytest

from hotluks.demo.guest.protocol import (
    BlockDevice,
    Reply,
    ReplyParser,
    encode_command,
    encode_write,
    parse_block_devices,
    parse_hex,
    parse_sha256,
)


def feed_all(parser: ReplyParser, text: str) -> list[Reply]:
    return [r for r in (parser.feed(line) for line in text.splitlines()) if r is not None]


def test_encode_command() -> None:
    assert encode_command("a1", "read", "vda", 0, 16) == b"a1 read vda 0 16\n"
    assert encode_write("a2", "sdb", 512, b"\x00\xff") == b"a2 write sdb 512 2\n00ff\n"


@pytest.mark.parametrize("bad", ["vda b", "x;rm", "$(id)", "a\nb", "", "*"])
def test_encode_rejects_arguments_that_could_break_the_agent(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_command("a1", "sha256", bad)


def test_encode_rejects_unknown_commands_and_ids() -> None:
    with pytest.raises(ValueError):
        encode_command("a1", "reboot")
    with pytest.raises(ValueError):
        encode_command("a 1", "ping")


def test_reply_framing_survives_noise_and_interleaving() -> None:
    stream = (
        "[    1.2] virtio_blk virtio1: [vda] 8192 512-byte logical blocks\n"
        "@@HL:READY:1\r\n"
        "@@HL:c1:B\n"
        "@@HL:c1:| vda 4194304 0 ser1 -\n"
        "[    1.3] random kernel line\n"
        "[    1.4] sd 0:0:0:0: prefix @@HL:c1:| sda 1048576 1 - 0:0:0:0\n"
        "@@HL:c1:E:0\n"
        "@@HL:c2:| orphan line without begin\n"
        "@@HL:c2:E:2\n"
    )
    parser = ReplyParser()
    replies = feed_all(parser, stream)
    assert parser.ready_versions == ["1"]
    assert replies[0] == Reply("c1", 0, ("vda 4194304 0 ser1 -", "sda 1048576 1 - 0:0:0:0"))
    assert replies[1] == Reply("c2", 2, ("orphan line without begin",))
    assert replies[0].ok and not replies[1].ok


def test_empty_output_and_empty_lines() -> None:
    replies = feed_all(ReplyParser(), "@@HL:x:B\n@@HL:x:| \n@@HL:x:|\n@@HL:x:E:0\n@@HL:y:B\n@@HL:y:E:1\n")
    assert replies == [Reply("x", 0, ("", "")), Reply("y", 1, ())]


def test_partial_marker_is_noise() -> None:
    assert feed_all(ReplyParser(), "@@HL:c1:E:\n@@HL:c1:X\n@@HL::E:0\n") == []


def test_parse_block_devices() -> None:
    devs = parse_block_devices(["vda 4194304 0 hl1 -", "sda 1048576 1 - 0:0:0:1", "garbage", "x y z"])
    assert devs == [BlockDevice("vda", 4194304, False, "hl1", None),
                    BlockDevice("sda", 1048576, True, None, "0:0:0:1")]
    assert devs[0].path == "/dev/vda"


def test_parse_sha256_and_hex() -> None:
    digest = "ab" * 32
    assert parse_sha256((f"{digest}  -",)) == digest
    with pytest.raises(ValueError):
        parse_sha256(("sha256sum: can't open",))
    assert parse_hex(("00ff10", "2030")) == b"\x00\xff\x10\x20\x30"
    assert parse_hex(()) == b""
