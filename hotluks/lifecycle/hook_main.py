"""Entry point libvirt runs as ``/etc/libvirt/hooks/qemu.d/50-hotluks NAME OP SUBOP EXTRA`` (XML on stdin).

Kept to the standard library plus lxml: it runs on every domain operation, as root,
and must never call libvirt.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Sequence

QEMU_USER_ENV = "HOTLUKS_QEMU_USER"


def qemu_ids() -> tuple[int, list[int]]:
    """uid and groups of libvirt's QEMU user (``$HOTLUKS_QEMU_USER``, else libvirt-qemu or qemu)."""
    names = [os.environ[QEMU_USER_ENV]] if os.environ.get(QEMU_USER_ENV) else ["libvirt-qemu", "qemu"]
    for name in names:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return user.pw_uid, os.getgrouplist(name, user.pw_gid)
    return 0, [0]  # no such user: QEMU runs as root


def main(argv: Sequence[str]) -> int:
    """Check, and refuse (exit 1, message on stderr) what QEMU could not complete. Prints no XML."""
    from hotluks.lifecycle.hook import CHECKED_OPERATIONS, refusal

    name, operation = (list(argv) + ["-", "-"])[:2]
    xml = sys.stdin.buffer.read()
    if operation not in CHECKED_OPERATIONS or not xml.strip():
        return 0
    uid, gids = qemu_ids()
    try:
        message = refusal(name, operation, xml, uid, gids)
    except (ValueError, SyntaxError) as exc:  # not our XML to judge: let libvirt decide
        print(f"hotluks hook: cannot read the XML of {name}: {exc}", file=sys.stderr)
        return 0
    if message:
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
