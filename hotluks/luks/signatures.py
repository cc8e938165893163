"""What a format would overwrite: filesystem / partition-table signatures (``blkid -p``) and header files.

cryptsetup refuses (or asks) before it writes over a recognisable signature;
hotluks does the same through :func:`overwrite_concern`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from hotluks.luks import luks1, luks2

BLKID_TIMEOUT = 10.0


def _blkid(path: str) -> dict[str, str]:
    """``blkid -p`` low-level probe of ``path`` (superblocks and partition tables); {} when none or no blkid."""
    blkid = shutil.which("blkid") or next((p for p in ("/sbin/blkid", "/usr/sbin/blkid") if os.path.exists(p)), None)
    if blkid is None:
        return {}
    try:
        proc = subprocess.run([blkid, "-p", "-o", "export", "--", path], capture_output=True, text=True,
                              timeout=BLKID_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if proc.returncode != 0:
        return {}
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def _head(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def has_luks_signature(path: str) -> bool:
    """A LUKS1/LUKS2 signature at 0 or a LUKS2 secondary header where cryptsetup looks for one."""
    head = _head(path, 2 * luks2.HDR_SIZES[-1] + 8)
    return head[:6] in (luks1.MAGIC, luks2.MAGIC2) or bool(luks2.secondary_offsets(head))


def overwrite_concern(path: str, *, header_file: bool) -> str | None:
    """Why writing a LUKS header to ``path`` would destroy something other than a LUKS header, or None.

    ``header_file``: ``path`` is a detached header (a regular file there must be
    empty or already LUKS). For devices and volume files, a filesystem or
    partition-table signature found by ``blkid -p`` is the concern.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror})"
    if has_luks_signature(path):
        return f"{path} already holds a LUKS header (its keyslots would be lost)"
    probe = _blkid(path)
    if "PTTYPE" in probe:
        return f"{path} contains a '{probe['PTTYPE']}' partition table"
    if "TYPE" in probe:
        return f"{path} already contains a '{probe['TYPE']}' superblock signature"
    if header_file and stat.S_ISREG(st.st_mode) and st.st_size > 0 and _head(path, 1 << 20).strip(b"\0"):
        return f"{path} is a non-empty file that is not a LUKS header"
    return None
