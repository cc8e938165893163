"""VirshBackend pieces: shell quoting (checked with the real virsh), output parsing, failure paths."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hotluks.backends.base import QMPCommandError
from hotluks.backends.virsh import (
    VirshBackend,
    command_outputs,
    monitor_line,
    parse_event_line,
    reply_from_output,
    shell_quote,
    virsh_error,
    virsh_json,
)
from hotluks.errors import BackendError, InputError

TRICKY = ["plain", "two words", "it's", "''", "a\\b", 'dq"x', "semi;colon", "#hash", "x ; y #z", "caf\u00e9 \u2603",
          json.dumps({"execute": "object-add", "arguments": {"data": "p'a\"s;s #1\\"}})]


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_shell_quote_round_trips_through_real_virsh() -> None:
    """virsh's own parser (test:///default needs no daemon) gives back every argument unchanged."""
    script = "".join(f"echo {shell_quote(arg)}\n" for arg in TRICKY)
    out = subprocess.run(["virsh", "-q", "-c", "test:///default"], input=script, capture_output=True,
                         text=True, check=True).stdout
    assert [o.removesuffix("\n") for o in command_outputs(out)] == TRICKY


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_virsh_json_survives_readline() -> None:
    """Control characters inside QMP strings (TAB, DEL, ESC) reach QEMU unchanged."""
    value = "tab\tdel\x7fesc\x1bnl\n\u00e9"
    text = virsh_json("x", {"data": value})
    out = subprocess.run(["virsh", "-q", "-c", "test:///default"], input=f"echo {shell_quote(text)}\n",
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(command_outputs(out)[0])["arguments"]["data"] == value


@pytest.mark.parametrize("bad", ["a\nb", "a\tb", "a\x7fb", "a\x1b[A", "nul\0"])
def test_shell_quote_refuses_control_characters(bad: str) -> None:
    with pytest.raises(InputError):
        shell_quote(bad)


def test_monitor_line_is_one_line() -> None:
    line = monitor_line("dom 'x'", '{"execute":"query-status"}')
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.startswith("qemu-monitor-command --domain 'dom '\\''x'\\''' --cmd ")


def test_command_outputs_with_and_without_prompts() -> None:
    out = "virsh # echo a\nAvirsh # secret-get-value --secret u\nYWJj\n\nvirsh # \n"  # as virsh 11 prints
    assert command_outputs(out) == ["A", "YWJj\n\n"]
    assert command_outputs("bare output\n") == ["bare output\n"]


def test_reply_from_output_skips_echo_and_prompts() -> None:
    out = ('virsh # qemu-monitor-command --domain d --cmd \'{"execute":"x"}\'\n'
           '{"return":{"a":1},"id":"libvirt-9"}\n\nvirsh # \n')
    assert json.loads(reply_from_output("x", out))["return"] == {"a": 1}


@pytest.mark.parametrize("garbage", ["", "virsh # \n", "{not json\n", "[1,2]\n", '{"id":"x"}\n', "\x00\xff"])
def test_reply_from_output_garbage_is_backend_error(garbage: str) -> None:
    with pytest.raises(BackendError, match="no monitor reply"):
        reply_from_output("query-status", garbage)


def test_virsh_error_keeps_error_lines() -> None:
    assert virsh_error("error: failed to get domain 'x'\nerror: Domain not found\n") == \
        "failed to get domain 'x'; Domain not found"
    assert virsh_error("") == "unknown error"


def test_parse_event_line() -> None:
    line = ("event DEVICE_DELETED at 1795323094.746429 for domain 'my vm': "
            '{"device":"d1","path":"/machine/peripheral/d1"}')
    assert parse_event_line(line, "my vm") == {
        "event": "DEVICE_DELETED", "data": {"device": "d1", "path": "/machine/peripheral/d1"},
        "timestamp": {"seconds": 1795323094, "microseconds": 746429}}
    assert parse_event_line(line, "other") is None
    assert parse_event_line("event STOP at 1.000002 for domain 'v': <null>", "v")["data"] == {}  # type: ignore[index]
    assert parse_event_line("event X at 1.2 for domain 'v': {broken", "v")["data"] == {}  # type: ignore[index]
    assert parse_event_line("events received: 1", "v") is None


def _fake_virsh(tmp_path: Path, body: str) -> str:
    path = tmp_path / "virsh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_missing_virsh_binary_is_backend_error(tmp_path: Path) -> None:
    backend = VirshBackend("vm", virsh=str(tmp_path / "no-such-virsh"))
    with pytest.raises(BackendError, match="cannot run .*libvirt-clients"):
        asyncio.run(backend.execute("query-status"))


def test_garbled_virsh_output_is_backend_error(tmp_path: Path) -> None:
    backend = VirshBackend("vm", virsh=_fake_virsh(tmp_path, "cat >/dev/null; echo 'virsh # hello'; echo '{oops'\n"))
    with pytest.raises(BackendError, match="printed no monitor reply"):
        asyncio.run(backend.execute("query-status"))


def test_error_reply_from_virsh_is_qmp_command_error(tmp_path: Path) -> None:
    reply = '{"id":"libvirt-1","error":{"class":"DeviceNotFound","desc":"Device \'x\' not found"}}'
    backend = VirshBackend("vm", virsh=_fake_virsh(tmp_path, f"cat >/dev/null\ncat <<'EOF'\n{reply}\nEOF\n"))
    with pytest.raises(QMPCommandError) as info:
        asyncio.run(backend.execute("device_del", {"id": "x"}))
    assert (info.value.error_class, info.value.desc) == ("DeviceNotFound", "Device 'x' not found")


def test_virsh_stderr_never_echoes_the_command(tmp_path: Path) -> None:
    """A virsh that repeats its input in an error message must not leak the secret it carried."""
    backend = VirshBackend("vm", virsh=_fake_virsh(tmp_path, 'read line; echo "error: bad input $line" >&2\n'))
    secret = "s3cr3t-passphrase"
    with pytest.raises(BackendError) as info:
        asyncio.run(backend.execute("object-add", {"qom-type": "secret", "id": "s", "data": secret}))
    assert secret not in str(info.value)


def test_hung_virsh_times_out_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    backend = VirshBackend("vm", timeout=0.5, virsh=_fake_virsh(tmp_path, f"echo $$ > {pidfile}; exec sleep 30\n"))
    with pytest.raises(BackendError, match="did not finish"):
        asyncio.run(backend.execute("query-status"))
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh not installed")
def test_unreachable_daemon_is_backend_error() -> None:
    backend = VirshBackend("vm", "qemu+unix:///system?socket=/nonexistent/libvirt-sock", probe_master_key=False)
    with pytest.raises(BackendError, match="virsh cannot reach domain 'vm'") as info:
        asyncio.run(backend.connect())
    assert not isinstance(info.value, InputError)


def test_dominfo_fields() -> None:
    from hotluks.backends.virsh import dominfo_fields

    text = "Id:             5\nName:           web: 1\nState:          paused\nSecurity DOI:   0\n\n"
    assert dominfo_fields(text) == {"Id": "5", "Name": "web: 1", "State": "paused", "Security DOI": "0"}


def test_quiet_environment_drops_logging_and_moves_history() -> None:
    from hotluks.backends.virsh import LOGGING_VARIABLES, quiet_environment

    base = {"HOME": "/root", "PATH": "/usr/bin", **dict.fromkeys(LOGGING_VARIABLES, "/tmp/log")}
    env = quiet_environment("/run/private", base)
    assert env == {"HOME": "/root", "PATH": "/usr/bin", "XDG_CACHE_HOME": "/run/private", "VIRSH_HISTSIZE": "0",
                   "LIBVIRT_AUTOSTART": "0"}
