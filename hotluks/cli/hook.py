"""``hotluks hook install|uninstall``: hotluks' libvirt ``qemu`` hook in ``HOOKS/qemu.d/``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hotluks.errors import InputError

HOOK_NAME = "50-hotluks"
MARKER = "# installed by `hotluks hook install`"
DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = sub.add_parser("hook", help="install or remove hotluks' libvirt qemu hook",
                       description="The hook refuses a domain start, restore or incoming migration whose "
                                   "<qemu:commandline> hotluks disks QEMU could not open. libvirt only runs "
                                   "hooks that existed when the daemon started: restart it after installing.")
    h.add_argument("action", choices=("install", "uninstall"))
    h.add_argument("--hooks-dir", default=DEFAULT_HOOKS_DIR, metavar="DIR",
                   help=f"libvirt's hooks directory (default {DEFAULT_HOOKS_DIR})")
    h.set_defaults(func=cmd_hook)


def hook_script() -> str:
    """The hook: this interpreter, running :mod:`hotluks.lifecycle.hook_main`."""
    return (f"#!{sys.executable}\n{MARKER}; remove with `hotluks hook uninstall`\n"
            "import sys\n\nfrom hotluks.lifecycle.hook_main import main\n\nsys.exit(main(sys.argv[1:]))\n")


def cmd_hook(args: argparse.Namespace) -> int:
    path = Path(args.hooks_dir) / "qemu.d" / HOOK_NAME
    if args.action == "install":
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = path.with_name(f".{HOOK_NAME}.tmp")
        tmp.write_text(hook_script())
        tmp.chmod(0o755)
        os.replace(tmp, path)
        print(f"installed {path}; restart libvirtd (or virtqemud) if it had no qemu hooks when it started")
        return 0
    if not path.exists():
        print(f"{path}: not installed")
        return 0
    if MARKER not in path.read_text(errors="replace"):
        raise InputError(f"{path} was not written by hotluks; not removing it")
    path.unlink()
    print(f"removed {path}")
    return 0
