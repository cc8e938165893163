"""Hostile XML: every attack is a clean, quick exit 2 through the real CLI, never a traceback or a leak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotluks.errors import HotluksError, XMLError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.xmlparse import MAX_XML_BYTES

TIME_BOUND = 3.0
BODY = "<source file='/p'/><target dev='vdb' bus='virtio'/>"
LOL = "".join(f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10))

HOSTILE: dict[str, tuple[bytes, str]] = {
    "xxe-passwd": (f"""<?xml version="1.0"?>
<!DOCTYPE disk [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<disk type='file'>{BODY}<serial>&xxe;</serial></disk>""".encode(), "DOCTYPE"),
    "xxe-in-attribute": ("""<!DOCTYPE disk [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<disk type='file'><source file='/&xxe;'/><target dev='vdb' bus='virtio'/></disk>""".encode(), ""),
    "xxe-parameter-entity": (b"""<!DOCTYPE disk [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<disk type='file'><source file='/p'/><target dev='vdb'/></disk>""", ""),
    "external-dtd": (b"""<!DOCTYPE disk SYSTEM "http://127.0.0.1:9/evil.dtd">
<disk type='file'><source file='/p'/><target dev='vdb'/></disk>""", "DOCTYPE"),
    "billion-laughs": (f"""<?xml version="1.0"?>
<!DOCTYPE disk [<!ENTITY lol0 "lol">{LOL}]>
<disk type='file'>{BODY}<serial>&lol9;</serial></disk>""".encode(), ""),
    "quadratic-blowup": (("<!DOCTYPE disk [<!ENTITY a \"" + "x" * 50000 + "\">]><disk type='file'>" + BODY
                          + "<serial>" + "&a;" * 4000 + "</serial></disk>").encode(), ""),
    "ten-megabytes": (b"<disk type='file'>" + b" " * (10 * 1024 * 1024) + BODY.encode() + b"</disk>",
                      f"must be under {MAX_XML_BYTES} bytes"),
    "ten-megabytes-in-an-attribute": (b"<disk type='file'><source file='/" + b"a" * (10 * 1024 * 1024)
                                      + b"'/><target dev='vdb'/></disk>", "bytes"),
    "deep-nesting": (b"<disk type='file'>" + b"<a>" * 5000 + b"</a>" * 5000 + BODY.encode() + b"</disk>", ""),
    "number-where-string": (b"<disk type='file'><source file='42'/><target dev='7' bus='1'/></disk>", ""),
    "string-where-number": (b"<disk type='file'>" + BODY.encode()
                            + b"<address type='pci' slot='five'/></disk>", "schema"),
    "port-overflow": (b"<disk type='network'><source protocol='nbd' name='x'><host name='h' port='99999'/>"
                      b"</source><target dev='vdb'/></disk>", "schema"),
    "unknown-element": (b"<disk type='file'>" + BODY.encode() + b"<iotune><total_bytes_sec>1</total_bytes_sec>"
                        b"</iotune></disk>", "schema"),
    "unknown-attribute": (b"<disk type='file' snapshot='no'>" + BODY.encode() + b"</disk>", "schema"),
    "namespaced-element": (b"<disk type='file' xmlns:x='urn:x'>" + BODY.encode() + b"<x:evil/></disk>", "schema"),
    "non-utf8-garbage": (bytes(range(128, 256)) * 8, "not well-formed"),
    "latin1-without-declaration": (b"<disk type='file'><source file='/caf\xe9'/><target dev='vdb'/></disk>",
                                   "not well-formed"),
    "nul-bytes": (b"<disk type='file'>\x00\x00" + BODY.encode() + b"</disk>", "not well-formed"),
    "bogus-encoding": (b'<?xml version="1.0" encoding="x-evil"?><disk type="file"/>', "not well-formed"),
    "empty": (b"", "empty"),
    "whitespace-only": (b" \n\t\n", "empty"),
    "domain-root": (b"<domain type='kvm'><name>vm</name><devices><disk type='file'>" + BODY.encode()
                    + b"</disk></devices></domain>", "root element must be <disk>, not <domain>"),
    "two-roots": (b"<disk type='file'>" + BODY.encode() + b"</disk><disk type='file'/>", "not well-formed"),
    "unclosed": (b"<disk type='file'><source file='/p'/>", "not well-formed"),
    "processing-instruction-and-cdata": (b"<?evil x?><disk type='file'>" + BODY.encode()
                                         + b"<serial><![CDATA[a]]]]><![CDATA[>b]]></serial></disk>", "schema"),
    "xinclude": (b"<disk type='file' xmlns:xi='http://www.w3.org/2001/XInclude'>" + BODY.encode()
                 + b"<xi:include href='/etc/passwd' parse='text'/></disk>", "schema"),
}


def _no_leak(text: str) -> None:
    assert "root:x:0:0" not in text and "/bin/bash" not in text and "lollol" not in text
    assert "Traceback" not in text


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_xml_through_the_cli(case: str, cli: Any, write_xml: Any) -> None:
    data, fragment = HOSTILE[case]
    path: Path = write_xml(data)
    result = cli("plan", "--json", str(path))
    assert result.code == 2, result.err
    assert result.out == ""
    assert result.err.startswith("hotluks: error: ") and result.err.count("\n") == 1
    assert fragment in result.err
    _no_leak(result.err)
    assert result.seconds < TIME_BOUND


REAL_PROCESS = ["xxe-passwd", "billion-laughs", "ten-megabytes", "non-utf8-garbage", "empty", "domain-root"]


@pytest.mark.parametrize("case", REAL_PROCESS)
def test_hostile_xml_through_a_real_process(case: str, cli_process: Any, write_xml: Any) -> None:
    """The same, as operators run it: a file argument and stdin, timed including start-up."""
    data, fragment = HOSTILE[case]
    results = [cli_process("plan", str(write_xml(data)))]
    if case in ("xxe-passwd", "ten-megabytes"):
        results.append(cli_process("cold-cmdline", "-", stdin=data))
    for result in results:
        assert (result.code, result.out) == (2, "")
        assert result.err.startswith("hotluks: error: ") and fragment in result.err
        _no_leak(result.err)
        assert result.seconds < TIME_BOUND


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_xml_through_the_api(case: str) -> None:
    with pytest.raises(XMLError):
        Disk.from_xml(HOSTILE[case][0])


def test_endless_device_file_is_bounded(cli: Any) -> None:
    result = cli("plan", "/dev/zero")
    assert result.code == 2 and "not a regular file" in result.err and result.seconds < TIME_BOUND


def test_missing_and_unreadable_inputs(cli: Any, tmp_path: Path) -> None:
    missing = cli("plan", str(tmp_path / "nope.xml"))
    assert missing.code == 2 and "no such file" in missing.err
    directory = cli("plan", str(tmp_path))
    assert directory.code == 2 and "is a directory" in directory.err


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_examples_never_crash(data: st.DataObject) -> None:
    """Random edits of real examples parse, or fail with a typed error — nothing else."""
    examples = sorted((Path(__file__).resolve().parents[2] / "xml" / "examples").glob("*.xml"))
    text = data.draw(st.sampled_from(examples)).read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.sampled_from(["", "'", "<", ">", "/", "0", "x", "\u00e9", "&", "=", "luks2",
                                            "librbd", "<secret type='passphrase' usage='z'/>", "-", " "]))
        text = text[:pos] + insert + text[pos + cut:]
    try:
        build_plan(Disk.from_xml(text))
    except HotluksError as exc:
        assert exc.exit_code == 2
        assert str(exc)


def test_from_xml_text_path_and_empty(golden_dir: Path) -> None:
    example = golden_dir.parents[2] / "xml" / "examples" / "usb-attached.xml"
    assert Disk.from_xml(str(example)) == Disk.from_xml(example) == Disk.from_xml(example.read_text())
    for empty in ("", "  \n", b""):
        with pytest.raises(XMLError, match="empty"):
            Disk.from_xml(empty)
