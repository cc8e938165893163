"""Rendering: cold-boot argv in three formats, secret files vs inline values, redaction, sealing."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hotluks.errors import SecretError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.plan.steps import SecretBinding
from hotluks.render.cmdline import as_shell, cold_boot_args
from hotluks.render.listing import render_listing
from hotluks.render.qmp import bound_command, plan_json, redacted_command
from hotluks.secrets import (
    MAX_SECRET_BYTES,
    REDACTED,
    SecretValue,
    parse_secret_spec,
    read_secret_file,
    seal,
    secret_properties,
)

PASSPHRASE = b"correct horse \xe2\x9c\x93 battery 'staple' $HOME\n"
CEPH_KEY = base64.b64encode(bytes(range(16)))
OPTION = {"object-add": "-object", "blockdev-add": "-blockdev", "device_add": "-device"}


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A directory whose name needs quoting in every shell."""
    d = tmp_path / "it's a $HOME dir, \"quoted\" & `ticked`"
    d.mkdir()
    return d


def secret_args(disk: Disk, directory: Path) -> list[str]:
    """``--secret KEY=FILE`` for every secret of ``disk`` (passphrases and Ceph keys)."""
    args = []
    for i, ref in enumerate(disk.secrets):
        path = directory / f"secret {i}"
        path.write_bytes(CEPH_KEY if ref.kind == "ceph" else PASSPHRASE + bytes([i]))
        args += ["--secret", f"{ref.key}={path}"]
    return args


def _shell_words(text: str) -> list[str]:
    """What a POSIX shell does with the text: line continuations removed, then split."""
    return shlex.split(text.replace("\\\n", ""))


def test_shell_argv_and_json_formats_agree(example: Path, cli: Any, secret_dir: Path) -> None:
    disk = Disk.from_xml(example)
    secrets = secret_args(disk, secret_dir)
    as_json = cli("cold-cmdline", str(example), "--format", "json", *secrets)
    assert as_json.code == 0, as_json.err
    argv: list[str] = json.loads(as_json.out)
    shell = cli("cold-cmdline", str(example), "--format", "shell", *secrets)
    default = cli("cold-cmdline", str(example), *secrets)
    lines = cli("cold-cmdline", str(example), "--format", "argv", *secrets)
    assert shell.out == default.out
    assert _shell_words(shell.out) == argv
    assert lines.out.splitlines() == argv
    # one option per line, every line but the last continued
    assert all(line.endswith(" \\") for line in shell.out.splitlines()[:-1])
    # the argv is the plan: one option per step, in order, with the step's arguments
    plan = build_plan(disk)
    assert argv[0::2] == [OPTION[s.command] for s in plan.steps]
    for step, value in zip(plan.steps, argv[1::2]):
        props = json.loads(value)
        if step.command == "object-add":
            props = {k: v for k, v in props.items() if k not in ("file", "format")}
        assert props == step.arguments
    for text in (as_json.out, shell.out, lines.out):
        assert PASSPHRASE.decode() not in text and CEPH_KEY.decode() not in text


def test_a_real_shell_reads_the_quoted_output(cli: Any, secret_dir: Path, golden_dir: Path) -> None:
    example = golden_dir.parents[2] / "xml" / "examples" / "header-on-rbd.xml"
    secrets = secret_args(Disk.from_xml(example), secret_dir)
    shell = cli("cold-cmdline", str(example), *secrets).out
    argv = json.loads(cli("cold-cmdline", str(example), "--format", "json", *secrets).out)
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + shell], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == argv


def test_secrets_are_referenced_as_files(cli: Any, secret_dir: Path, golden_dir: Path) -> None:
    example = golden_dir.parents[2] / "xml" / "examples" / "librbd-layered.xml"
    disk = Disk.from_xml(example)
    secrets = secret_args(disk, secret_dir)
    argv = json.loads(cli("cold-cmdline", str(example), "--format", "json", *secrets).out)
    objects = [json.loads(v) for o, v in zip(argv[0::2], argv[1::2]) if o == "-object"]
    assert objects == [
        {"qom-type": "secret", "id": "hl-vdi-key0", "file": str(secret_dir / "secret 0")},
        {"qom-type": "secret", "id": "hl-vdi-key1", "file": str(secret_dir / "secret 1")},
        {"qom-type": "secret", "id": "hl-vdi-key2", "file": str(secret_dir / "secret 2")},
        # a Ceph key is held as base64 text (as `ceph auth get-key` prints it)
        {"qom-type": "secret", "id": "hl-vdi-auth", "file": str(secret_dir / "secret 3"), "format": "base64"},
    ]


def test_secret_keys_match_uuid_case_insensitively_and_usage(cli: Any, tmp_path: Path, golden_dir: Path) -> None:
    example = golden_dir.parents[2] / "xml" / "examples" / "attached-luks-raw.xml"
    (tmp_path / "p").write_bytes(PASSPHRASE)
    upper = cli("cold-cmdline", str(example), "--format", "json",
                "--secret", f"0A81F5B2-8403-7B23-C8D6-21CCC2F80D6F={tmp_path / 'p'}")
    assert upper.code == 0 and json.loads(json.loads(upper.out)[1])["file"] == str(tmp_path / "p")
    usb = golden_dir.parents[2] / "xml" / "examples" / "usb-attached.xml"
    usage = cli("cold-cmdline", str(usb), "--format", "argv", "--secret", f"usb-stick={tmp_path / 'p'}")
    assert usage.code == 0 and str(tmp_path / "p") in usage.out


def test_missing_secret_names_the_option_to_pass(cli: Any, tmp_path: Path, golden_dir: Path) -> None:
    example = golden_dir.parents[2] / "xml" / "examples" / "header-on-rbd.xml"
    (tmp_path / "p").write_bytes(PASSPHRASE)
    none = cli("cold-cmdline", str(example))
    assert none.code == 2 and none.out == "" and "Traceback" not in none.err
    assert ("--secret 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f=FILE --secret 3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e=FILE"
            in none.err)
    one = cli("cold-cmdline", str(example), "--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={tmp_path / 'p'}")
    assert one.code == 2 and "--secret 3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e=FILE" in one.err
    assert "0a81f5b2" not in one.err


def test_bad_secret_options(cli: Any, tmp_path: Path, golden_dir: Path) -> None:
    example = str(golden_dir.parents[2] / "xml" / "examples" / "usb-attached.xml")
    bad = cli("cold-cmdline", example, "--secret", "usb-stick")
    assert bad.code == 2 and "--secret expects KEY=FILE" in bad.err
    gone = cli("cold-cmdline", example, "--inline-secrets", "--secret", f"usb-stick={tmp_path / 'gone'}")
    assert gone.code == 2 and "cannot read secret file" in gone.err and str(tmp_path / "gone") in gone.err
    (tmp_path / "empty").write_bytes(b"")
    empty = cli("cold-cmdline", example, "--inline-secrets", "--secret", f"usb-stick={tmp_path / 'empty'}")
    assert empty.code == 2 and "is empty" in empty.err


def test_inline_secrets_only_when_asked(cli: Any, tmp_path: Path, golden_dir: Path) -> None:
    example = str(golden_dir.parents[2] / "xml" / "examples" / "header-on-rbd.xml")
    (tmp_path / "p").write_bytes(PASSPHRASE)
    (tmp_path / "k").write_bytes(CEPH_KEY + b"\n")
    secrets = ["--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={tmp_path / 'p'}",
               "--secret", f"3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e={tmp_path / 'k'}"]
    by_file = cli("cold-cmdline", example, "--format", "json", *secrets).out
    assert base64.b64encode(PASSPHRASE).decode() not in by_file and '"data"' not in by_file
    inline = json.loads(cli("cold-cmdline", example, "--format", "json", "--inline-secrets", *secrets).out)
    key, auth = json.loads(inline[1]), json.loads(inline[3])
    assert key == {"qom-type": "secret", "id": "hl-vdd-key", "data": base64.b64encode(PASSPHRASE).decode(),
                   "format": "base64"}
    # the Ceph key file holds base64 text; QEMU gets the decoded key bytes (base64 on the wire)
    assert auth == {"qom-type": "secret", "id": "hl-vdd-auth", "data": CEPH_KEY.decode(), "format": "base64"}
    assert "file" not in key


def test_plan_never_prints_secrets(example: Path, cli: Any) -> None:
    as_json = cli("plan", "--json", str(example))
    listing = cli("plan", str(example))
    doc = json.loads(as_json.out)
    objects = [s["arguments"] for s in doc["steps"] if s["execute"] == "object-add"]
    assert objects and all(o["data"] == REDACTED for o in objects)
    assert all(set(o) == {"qom-type", "id", "data", "format"} for o in objects)
    assert "\"data\"" not in listing.out and REDACTED not in listing.out


def test_listing_names_every_step(example: Path) -> None:
    plan = build_plan(Disk.from_xml(example))
    text = render_listing(plan)
    assert f"{len(plan.steps)} steps" in text
    for step in plan.steps:
        assert step.name in text


# -- QMP binding and sealing ---------------------------------------------------------------------

def _decrypt(props: dict[str, Any], key: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(base64.b64decode(props["iv"]))).decryptor()
    padded = dec.update(base64.b64decode(props["data"])) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


@pytest.mark.parametrize("plaintext", [b"x", PASSPHRASE, b"\0" * 16, bytes(range(256)) * 3])
def test_seal_round_trip(plaintext: bytes) -> None:
    key = bytes(range(32))
    props = seal(plaintext, key, "masterKey0")
    assert set(props) == {"data", "keyid", "iv", "format"}
    assert (props["keyid"], props["format"]) == ("masterKey0", "base64")
    assert len(base64.b64decode(props["iv"])) == 16
    assert _decrypt(props, key) == plaintext
    if len(plaintext) >= 8:  # a shorter one's base64 ("eA==") can occur in random ciphertext by chance
        assert base64.b64encode(plaintext).decode() not in props["data"]
    assert seal(plaintext, key, "k")["iv"] != props["iv"]  # a fresh IV every time
    fixed_iv = bytes(16)
    assert seal(plaintext, key, "k", fixed_iv) == seal(plaintext, key, "k", fixed_iv)


def test_seal_refuses_a_short_key() -> None:
    with pytest.raises(SecretError, match="32 bytes"):
        seal(b"x", b"short", "k")


def test_bound_and_redacted_commands(golden_dir: Path) -> None:
    plan = build_plan(Disk.from_xml(golden_dir.parents[2] / "xml" / "examples" / "rbd-qemu-engine.xml"))
    key_step, auth_step = plan.steps[0], plan.steps[1]
    values = {"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f": SecretValue(PASSPHRASE),
              "3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e": SecretValue(CEPH_KEY + b"\n")}
    plain = bound_command(key_step, values, None)
    assert plain == {"execute": "object-add", "arguments": {
        "qom-type": "secret", "id": "hl-vdg-key", "data": base64.b64encode(PASSPHRASE).decode(), "format": "base64"}}
    master = bytes(range(100, 132))
    sealed = bound_command(auth_step, values, ("masterKey0", master))
    assert sealed["arguments"]["keyid"] == "masterKey0"
    assert _decrypt(sealed["arguments"], master) == bytes(range(16))  # the decoded Ceph key
    assert redacted_command(key_step)["arguments"]["data"] == REDACTED
    assert key_step.arguments == {"qom-type": "secret", "id": "hl-vdg-key"}  # binding never mutates the plan
    with pytest.raises(SecretError, match="--secret 3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e=FILE"):
        bound_command(auth_step, {}, None)
    assert bound_command(plan.steps[2], {}, None) == plan.steps[2].qmp()


def test_bad_ceph_key_is_a_secret_error() -> None:
    from hotluks.model import SecretRef

    binding = SecretBinding(SecretRef("ceph", usage="c"), "base64")
    with pytest.raises(SecretError, match="base64") as info:
        secret_properties(binding, SecretValue(b"not base64 !!" + PASSPHRASE), None)
    assert PASSPHRASE.decode() not in str(info.value)


def test_cold_boot_args_api(golden_dir: Path) -> None:
    plan = build_plan(Disk.from_xml(golden_dir.parents[2] / "xml" / "examples" / "usb-attached.xml"))
    argv = cold_boot_args(plan, {"usb-stick": "/run/k"})
    assert json.loads(argv[1]) == {"qom-type": "secret", "id": "hl-sdc-key", "file": "/run/k"}
    assert json.loads(argv[-1]) == {"driver": "usb-storage", "id": "hl-sdc", "drive": "hl-sdc-luks",
                                    "removable": True}
    inline = cold_boot_args(plan, {}, {"usb-stick": SecretValue(b"pw")})
    assert json.loads(inline[1])["data"] == base64.b64encode(b"pw").decode()
    assert as_shell(["-a", "b c"]) == "-a 'b c'"


def test_iscsi_password_file_is_used_as_is(cli: Any, tmp_path: Path) -> None:
    xml = tmp_path / "iscsi.xml"
    xml.write_text("""<disk type='network'><source protocol='iscsi' name='iqn.2013-07.com.example:t/0'>
      <host name='portal'/><auth username='u'><secret type='iscsi' usage='chap'/></auth></source>
      <target dev='sdb' bus='scsi'/></disk>""")
    (tmp_path / "pw").write_bytes(b"not base64 !")
    argv = json.loads(cli("cold-cmdline", str(xml), "--format", "json", "--inline-secrets",
                          "--secret", f"chap={tmp_path / 'pw'}").out)
    assert json.loads(argv[1])["data"] == base64.b64encode(b"not base64 !").decode()
    by_file = json.loads(cli("cold-cmdline", str(xml), "--format", "json", "--secret", f"chap={tmp_path / 'pw'}").out)
    assert json.loads(by_file[1]) == {"qom-type": "secret", "id": "hl-sdb-auth", "file": str(tmp_path / "pw")}


def test_secret_values_never_print_themselves(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_bytes(PASSPHRASE)
    value = read_secret_file(path)
    assert value.value == PASSPHRASE  # byte for byte, trailing newline kept (as cryptsetup --key-file)
    for text in (repr(value), str(value), f"{value}", repr([value])):
        assert "horse" not in text and str(len(PASSPHRASE)) in repr(value)
    path.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretError, match="larger than"):
        read_secret_file(path)


@pytest.mark.parametrize("spec,expected", [
    ("0A81F5B2-8403-7B23-C8D6-21CCC2F80D6F=/k", ("0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f", "/k")),
    ("0A81F5B284037B23C8D621CCC2F80D6F=/k", ("0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f", "/k")),
    ("My-Usage=/a=b", ("My-Usage", "/a=b")),
])
def test_parse_secret_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_secret_spec(spec) == expected


@pytest.mark.parametrize("spec", ["nokey", "=/file", "key="])
def test_parse_secret_spec_rejects(spec: str) -> None:
    with pytest.raises(SecretError, match="KEY=FILE"):
        parse_secret_spec(spec)


def test_plan_json_shape(golden_dir: Path) -> None:
    doc = plan_json(build_plan(Disk.from_xml(golden_dir.parents[2] / "xml" / "examples" / "librbd-layered.xml")))
    assert (doc["target"], doc["bus"], doc["shape"], doc["device"], doc["top_node"]) == (
        "vdi", "virtio", "librbd-layered", "hl-vdi", "hl-vdi-fmt")
    assert [s["kind"] for s in doc["secrets"]] == ["passphrase"] * 3 + ["ceph"]
    assert all(set(s) == {"execute", "arguments", "role", "undo"} for s in doc["steps"])


def test_pci_root_bus_option(cli: Any, golden_dir: Path) -> None:
    example = str(golden_dir.parents[2] / "xml" / "examples" / "readonly-detached.xml")
    secret = ["--secret", "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f=/run/k", "--format", "json"]
    default = json.loads(json.loads(cli("cold-cmdline", example, *secret).out)[-1])
    q35 = json.loads(json.loads(cli("cold-cmdline", example, "--pci-root-bus", "pcie.0", *secret).out)[-1])
    assert (default["bus"], default["addr"]) == ("pci.0", "0xa")
    assert (q35["bus"], q35["addr"]) == ("pcie.0", "0xa")
    assert "pcie.0" in cli("cold-cmdline", example, "--pci-root-bus", "pcie.0", *secret[:2]).out
