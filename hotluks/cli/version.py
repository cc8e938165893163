"""``hotluks --version``: hotluks' version and the versions of the tools it drives, probed in parallel."""

from __future__ import annotations

import re
import shutil
import subprocess

#: (label, command) — the first line matching a version number is shown
PROBES = (
    ("QEMU", ("qemu-system-x86_64", "--version")),
    ("libvirt", ("virsh", "--version")),
    ("cryptsetup", ("cryptsetup", "--version")),
)
PROBE_TIMEOUT = 3.0
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")


def version_lines() -> list[str]:
    """``hotluks X`` then one line per tool: its version, or why it is not shown."""
    from hotluks import __version__

    lines = [f"hotluks {__version__}"]
    running: list[tuple[str, subprocess.Popen[str] | str]] = []
    for label, argv in PROBES:
        path = shutil.which(argv[0])
        if path is None:
            running.append((label, f"not found ({argv[0]} is not on PATH)"))
            continue
        try:
            running.append((label, subprocess.Popen([path, *argv[1:]], stdout=subprocess.PIPE,
                                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)))
        except OSError as exc:
            running.append((label, f"not usable ({exc.strerror})"))
    for label, proc in running:
        if isinstance(proc, str):
            lines.append(f"{label}: {proc}")
            continue
        try:
            out, _ = proc.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            lines.append(f"{label}: no answer within {PROBE_TIMEOUT:g} s")
            continue
        match = _VERSION.search(out or "")
        lines.append(f"{label}: {match.group(0) if match else 'unknown version'}")
    return lines
