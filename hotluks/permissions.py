"""Unix permission bits as the kernel applies them to one user: who may read, write or enter a file."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Credentials:
    """Who a process is for file access: uid, primary gid and supplementary groups."""

    uid: int
    gids: frozenset[int]


def permits(info: os.stat_result, who: Credentials, want: int) -> bool:
    """May ``who`` have the access bits ``want`` (4 read, 2 write, 1 search) on ``info``?"""
    if who.uid == 0:
        return True
    if info.st_uid == who.uid:
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in who.gids:
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    return bits & want == want
