"""The one check of the values every entry point takes: a VM's name and a number of seconds.

The CLI (:mod:`hotluks.cli.common`), the Python API (:mod:`hotluks.api`) and backend
selection (:mod:`hotluks.backends.select`) all call these, so a value refused in one is
refused in all, with exit 2 (:class:`~hotluks.errors.InputError`) before any work.
"""

from __future__ import annotations

import math

from hotluks.errors import InputError

#: longest wait any command accepts (a day): a typo like 3e9 is refused, not slept on
MAX_TIMEOUT = 86400.0
#: a libvirt domain name, in UTF-8 bytes. libvirt keeps a domain in files named after it
#: (``/etc/libvirt/qemu/NAME.xml``, ``NAME.log``), so a name is bounded by NAME_MAX (255 bytes
#: on Linux file systems); a longer one cannot name a domain, defined or not
MAX_VM_NAME = 255
#: a QMP socket path, in bytes: ``struct sockaddr_un.sun_path`` holds 108 bytes with the
#: terminating NUL on Linux, so no UNIX socket has a longer path to connect to
MAX_SOCKET_PATH = 107


def check_vm(vm: object) -> str:
    """``vm`` when it can name a VM: a libvirt domain name, or a QMP socket path (``unix:PATH`` or
    anything with a ``/``) that fits in a UNIX socket address; else :class:`InputError`."""
    if not isinstance(vm, str):
        raise InputError(f"a VM is named by a string (libvirt domain or QMP socket), not {type(vm).__name__}")
    if not vm:
        raise InputError("a VM name cannot be empty")
    if not vm.isprintable():  # control characters, and lone surrogates (not valid Unicode)
        raise InputError(f"VM {shown(vm)!r}: a VM name cannot contain control or unprintable characters")
    size = len(vm.encode())
    if vm.startswith("unix:") or "/" in vm:
        path = vm.removeprefix("unix:")
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise InputError(f"QMP socket path {shown(path)} is longer than a UNIX socket address can be "
                             f"({MAX_SOCKET_PATH} bytes)")
    elif size > MAX_VM_NAME:
        raise InputError(f"VM name is {size} bytes; a libvirt domain name is at most {MAX_VM_NAME}")
    return vm


def check_seconds(value: object, what: str = "timeout") -> float:
    """``value`` as seconds when it is a finite number above 0 and at most :data:`MAX_TIMEOUT`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= MAX_TIMEOUT:
        raise InputError(f"{what} {value!r}: give a number of seconds above 0 and at most {MAX_TIMEOUT:g}")
    return float(value)


def shown(text: str) -> str:
    """``text`` bounded and printable, for a message (a name or a path as given)."""
    text = "".join(c if c.isprintable() else "?" for c in text.encode("utf-8", "backslashreplace").decode())
    return text if len(text) <= 200 else text[:120] + "…" + text[-60:]
