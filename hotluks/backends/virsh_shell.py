"""virsh's shell mode as text: quoting input lines, reading its output, a quiet environment.

Pure functions (no processes): :mod:`hotluks.backends.virsh` runs virsh with them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

from hotluks.backends.base import Event, QMPArgs
from hotluks.backends.libvirt_shared import command_json, shape_event
from hotluks.errors import BackendError, InputError

#: environment variables that make virsh or the libvirt client log what they send
LOGGING_VARIABLES = ("VIRSH_LOG_FILE", "VIRSH_DEBUG", "VSH_LOG_FILE", "VSH_DEBUG", "LIBVIRT_DEBUG",
                     "LIBVIRT_LOG_OUTPUTS", "LIBVIRT_LOG_FILTERS", "LIBVIRT_GNUTLS_DEBUG", "LIBVIRT_LIBSSH_DEBUG")


def quiet_environment(cache_dir: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a virsh that keeps no history and logs nothing of what it sends."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in LOGGING_VARIABLES}
    env["XDG_CACHE_HOME"] = cache_dir  # the history file lands here, in a directory we remove
    env["VIRSH_HISTSIZE"] = "0"  # and stays empty
    # a session daemon virsh would spawn would inherit that cache directory: never spawn one
    env["LIBVIRT_AUTOSTART"] = "0"
    return env


def shell_quote(text: str) -> str:
    """Quote one argument for virsh's shell parser (single quotes; ' becomes '\\'').

    virsh reads its input through readline, which would act on control
    characters (TAB completes, DEL erases): those are refused.
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise InputError("a virsh argument cannot contain control characters")
    return "'" + text.replace("'", "'\\''") + "'"


def virsh_json(command: str, arguments: QMPArgs | None) -> str:
    """The command as ASCII JSON without control characters (DEL escaped too), safe for readline."""
    return command_json(command, arguments).replace("\x7f", "\\u007f")


def monitor_line(domain: str, command: str, fds: Sequence[int] = ()) -> str:
    """The shell-mode line that runs one QMP command (passing ``fds`` of virsh's own process)."""
    pass_fds = f" --pass-fds {','.join(str(int(fd)) for fd in fds)}" if fds else ""
    return f"qemu-monitor-command --domain {shell_quote(domain)}{pass_fds} --cmd {shell_quote(command)}\n"


PROMPT = "virsh # "


def command_outputs(stdout: str) -> list[str]:
    """What each shell-mode command printed, in order.

    With stdin not a terminal, virsh still prints its prompt and echoes each input
    line (``virsh # CMD\n``) before the command's output, and the next prompt may
    follow the output on the same line.
    """
    if PROMPT not in stdout:
        return [stdout]
    outputs = []
    for segment in stdout.split(PROMPT)[1:]:
        echo, newline, output = segment.partition("\n")
        if newline and echo.strip():
            outputs.append(output)
    return outputs


def reply_from_output(command: str, stdout: str) -> str:
    """The JSON reply among virsh's shell-mode output."""
    for output in command_outputs(stdout):
        for line in output.splitlines():
            text = line.strip()
            if not text.startswith("{"):
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and ("return" in data or "error" in data):
                return text
    raise BackendError(f"{command}: virsh printed no monitor reply")


def dominfo_fields(text: str) -> dict[str, str]:
    """``Key:   value`` lines of ``virsh dominfo``."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def virsh_error(stderr: str) -> str:
    """virsh's error lines, joined (they never contain our command text)."""
    lines = [ln.removeprefix("error: ").strip() for ln in stderr.splitlines() if ln.startswith("error:")]
    return "; ".join(lines) or stderr.strip()[-500:] or "unknown error"


def parse_event_line(line: str, domain: str) -> Event | None:
    """``event NAME at S.US for domain 'DOM': DATA`` → a QMP-shaped event (None if not one)."""
    match = re.match(r"^event (\S+) at (\d+)\.(\d+) for domain '", line)
    if match is None:
        return None
    rest = line[match.end():]
    prefix = f"{domain}': "
    if not rest.startswith(prefix):
        return None
    return shape_event(match.group(1), int(match.group(2)), int(match.group(3)), rest[len(prefix):].strip())
