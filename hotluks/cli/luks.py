"""``hotluks luks …``: the bundled LUKS engine on the command line (cryptsetup conventions).

Passphrases come only from ``--key-file FILE`` (used byte for byte, ``-`` is
stdin), a terminal prompt, or the first line of a non-terminal stdin — never argv.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

from hotluks.cli.progress import PROGRESS_MIN_BYTES as PROGRESS_MIN_BYTES
from hotluks.cli.progress import ProgressBar
from hotluks.errors import InputError


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` (see :mod:`hotluks.luks.summary`)."""
    from hotluks.luks.summary import printable as escape

    return escape(text)


def header_summary(hdr: Any) -> dict[str, Any]:
    """The ``luks dump`` summary of a header (imported lazily: CLI start-up stays light)."""
    from hotluks.luks.summary import header_summary as summary

    return summary(hdr)


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals may follow options (``add-key DEV --header H --key-file K NEWKEY``, as cryptsetup takes)."""

    _nested = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._nested:
            return super().parse_known_args(args, namespace)
        self._nested = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._nested = False


def _weak_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-weak-header", action="store_true",
                   help="accept a weak header (cipher_null, ECB, PBKDF2 < 1000 iterations, argon2 below minimum)")


def _payload_must_exist(args: argparse.Namespace) -> None:
    import os

    if args.header and not os.path.exists(args.device):
        raise InputError(f"{args.device}: no such payload file or device (with --header, DEVICE is the payload)")


def _key_file_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--key-file", "-d", metavar="FILE", required=required,
                   help="read the passphrase from FILE, byte for byte ('-' = stdin); "
                        "default: prompt on a terminal, else the first line of stdin")


def _header_arg(p: argparse.ArgumentParser, json_help: str | None = "print a hotluks/1 document") -> None:
    p.add_argument("--header", metavar="H", help="detached LUKS header file or device")
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)


def _progress_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar (also under --json)")


def _bar(args: argparse.Namespace, total: int) -> ProgressBar:
    return ProgressBar(total, force=args.progress, quiet=args.quiet or wants_json(args))


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False) or getattr(args, "global_json", False))


def done(args: argparse.Namespace, text: str | None, payload: dict[str, Any]) -> int:
    """Finish a ``luks`` action: ``text`` on stdout, or under ``--json`` the hotluks/1 document of ``payload``."""
    if wants_json(args):
        from hotluks.cli.output import emit

        emit(f"luks {args.luks_command}", payload)
    elif text is not None:
        print(text)
    return 0


def _kdf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pbkdf", choices=("pbkdf2", "argon2i", "argon2id"), help="keyslot KDF")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iter-time", type=int, metavar="MS", help="PBKDF2 benchmark target in milliseconds")
    g.add_argument("--pbkdf-force-iterations", type=int, metavar="N",
                   help="PBKDF2 iterations / Argon2 time cost, no benchmark")
    p.add_argument("--pbkdf-memory", type=int, metavar="KIB", help="Argon2 memory cost in KiB")
    p.add_argument("--pbkdf-parallel", type=int, metavar="N", help="Argon2 lanes")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("luks", help="inspect, verify, create and convert LUKS volumes (bundled engine)",
                         description="The bundled LUKS1/LUKS2 engine. Exit codes: 0 ok, 1 wrong passphrase, "
                                     "2 invalid or unsupported header / bad input.")
    cmds = top.add_subparsers(dest="luks_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("dump", help="show the header; exit 2 when it is not valid")
    p.add_argument("device", metavar="DEVICE")
    _header_arg(p, "machine-readable output")
    p.set_defaults(func=cmd_dump)

    p = cmds.add_parser("verify", help="check a passphrase: 0 opens, 1 wrong, 2 invalid/unsupported/weak")
    p.add_argument("device", metavar="DEVICE")
    _header_arg(p)
    _key_file_arg(p)
    _weak_arg(p)
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("format", help="write a new LUKS1/LUKS2 header (--header: detached)")
    p.add_argument("device", metavar="DEVICE")
    _header_arg(p)
    _key_file_arg(p)
    p.add_argument("--type", choices=("luks1", "luks2"), default="luks2")
    p.add_argument("--cipher", default="aes-xts-plain64")
    p.add_argument("--key-size", type=int, choices=(128, 192, 256, 384, 512), default=None,
                   help="volume key bits (default 512 for xts, 256 otherwise)")
    p.add_argument("--hash", default="sha256")
    _kdf_args(p)
    p.add_argument("--sector-size", type=int, default=512, choices=(512, 1024, 2048, 4096))
    p.add_argument("--force", "--batch-mode", dest="force", action="store_true",
                   help="overwrite an existing LUKS header, filesystem, partition table or non-empty header file "
                        "without asking")
    p.set_defaults(func=cmd_format)

    p = cmds.add_parser("decrypt", help="write the decrypted data segment to OUT ('-' = stdout)")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("out", metavar="OUT")
    _header_arg(p, "print a hotluks/1 document (bytes written); OUT must be a file")
    _key_file_arg(p)
    _progress_args(p)
    p.set_defaults(func=cmd_decrypt)

    p = cmds.add_parser("encrypt", help="encrypt IN ('-' = stdin) into DEVICE's data segment")
    p.add_argument("input", metavar="IN")
    p.add_argument("device", metavar="DEVICE")
    _header_arg(p)
    _key_file_arg(p)
    _progress_args(p)
    p.set_defaults(func=cmd_encrypt)

    p = cmds.add_parser("add-key", help="add a keyslot (new passphrase from NEW_KEY_FILE or prompt)")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("new_key_file", metavar="NEW_KEY_FILE", nargs="?")
    _header_arg(p)
    _key_file_arg(p)
    p.add_argument("--key-slot", "-S", type=int, metavar="N", help="put the new passphrase in keyslot N")
    _kdf_args(p)
    p.__class__ = _IntermixedParser
    p.set_defaults(func=cmd_add_key)

    p = cmds.add_parser("remove-key", help="remove the keyslot the passphrase opens")
    p.add_argument("device", metavar="DEVICE")
    _header_arg(p)
    _key_file_arg(p)
    p.set_defaults(func=cmd_remove_key)

    from hotluks.cli import headers  # fingerprint, header-backup, header-restore

    headers.register(cmds)


def read_passphrase(key_file: str | None, prompt: str = "Enter passphrase: ") -> bytes:
    """A passphrase from a key file (byte for byte), a prompt, or the first stdin line."""
    if key_file == "-":
        return sys.stdin.buffer.read()
    if key_file is not None:
        try:
            with open(key_file, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InputError(f"cannot read key file {key_file}: {exc.strerror}") from None
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt).encode()
    line = sys.stdin.buffer.readline()
    return line[:-1] if line.endswith(b"\n") else line


def _kdf(args: argparse.Namespace, default: str, hash_name: str, key_bytes: int) -> Any:
    from hotluks.luks import make_kdf

    return make_kdf(args.pbkdf or default, hash_name=hash_name, iterations=args.pbkdf_force_iterations,
                    iter_time_ms=args.iter_time, memory_kib=args.pbkdf_memory, parallel=args.pbkdf_parallel,
                    key_bytes=key_bytes)


def _print_summary(info: dict[str, Any]) -> None:
    print(f"LUKS header information (version {info['version']})")
    for key in ("uuid", "label", "cipher", "key_bits", "hash", "payload_offset", "detached", "sector_size",
                "seqid", "metadata_size", "keyslots_size"):
        if key in info:
            print(f"{key + ':':16}{info[key]}")
    if info["requirements"]:
        print(f"{'requirements:':16}{', '.join(info['requirements'])} (read-only)")
    print("Keyslots:")
    for k in info["keyslots"]:
        kdf = ", ".join(f"{n}={k[n]}" for n in ("hash", "iterations", "time", "memory", "cpus") if n in k)
        print(f"  {k['slot']}: {k['type']} {k['kdf']} ({kdf}) {k['cipher']} {k['key_bits']} bits, "
              f"area {k['area_offset']}+{k['area_size']}")
    print("Segments:")
    for s in info["segments"]:
        print(f"  {s['segment']}: {s['type']} offset {s['offset']} size {s['size']} {s['encryption']} "
              f"sector {s['sector_size']}")
    for w in info["weak"]:
        print(f"WEAK: {w}")
    for w in info["warnings"]:
        print(f"warning: {w}")


def cmd_dump(args: argparse.Namespace) -> int:
    from hotluks.cli.output import emit
    from hotluks.luks import open_header

    _payload_must_exist(args)
    info = header_summary(open_header(args.device, header=args.header))
    if args.json:
        emit("luks dump", info)
    else:
        _print_summary(info)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from hotluks.luks import open_header, unlock
    from hotluks.luks.policy import enforce

    _payload_must_exist(args)
    hdr = open_header(args.device, header=args.header)
    notes = enforce(hdr, allow_weak_header=args.allow_weak_header)
    for note in notes:
        print(f"warning: {printable(note)}", file=sys.stderr)
    vk = unlock(hdr, read_passphrase(args.key_file))
    return done(args, f"passphrase opens keyslot {vk.keyslot}",
                {"version": hdr.version, "keyslot": vk.keyslot, "warnings": [printable(n) for n in notes]})


def _confirm_overwrite(concern: str, target: str, key_file: str | None) -> None:
    """Ask on a terminal, as cryptsetup does; refuse elsewhere (``--force`` skips this)."""
    if key_file == "-" or not sys.stdin.isatty():
        raise InputError(f"{printable(concern)}; add --force to overwrite it")
    sys.stderr.write(f"WARNING: {printable(concern)}.\nThis will overwrite data on {printable(target)} "
                     "irrevocably.\nAre you sure? (Type 'yes' in capital letters): ")
    sys.stderr.flush()
    if sys.stdin.readline().strip() != "YES":
        raise InputError("operation aborted: nothing was written")


def cmd_format(args: argparse.Namespace) -> int:
    from hotluks.luks import format_volume
    from hotluks.luks.signatures import overwrite_concern

    _payload_must_exist(args)
    target = args.header or args.device
    concern = overwrite_concern(target, header_file=bool(args.header))
    if concern and not args.force:
        _confirm_overwrite(concern, target, args.key_file)
    passphrase = read_passphrase(args.key_file)
    if not passphrase:
        raise InputError("empty passphrase")
    bits = args.key_size or (512 if "-xts-" in args.cipher else 256)
    default = "pbkdf2" if args.type == "luks1" else "argon2id"
    kdf = _kdf(args, default, args.hash, bits // 8)
    vk = format_volume(args.device, passphrase, type=args.type, header=args.header, cipher=args.cipher,
                       key_size=bits, hash=args.hash, kdf=kdf, sector_size=args.sector_size)
    where = f"detached header {args.header}" if args.header else args.device
    return done(args, f"{args.type} header written to {where} ({args.cipher}, {bits} bits, keyslot {vk.keyslot})",
                {"type": args.type, "device": args.device, "header": args.header, "cipher": args.cipher,
                 "key_bits": bits, "keyslot": vk.keyslot})


def _open_out(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    try:
        return open(path, "wb")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


def _quiet_broken_pipe() -> int:
    """The reader went away (``decrypt - | head``): stop without a message, exit 1 (not all was written;
    ``cat`` would die of SIGPIPE, also non-zero)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def cmd_decrypt(args: argparse.Namespace) -> int:
    import os

    from hotluks.luks import decrypt_payload, open_header, unlock

    if args.out == "-" and wants_json(args):
        raise InputError("--json prints a document on stdout: give OUT as a file, not '-'")
    hdr = open_header(args.device, header=args.header)
    vk = unlock(hdr, read_passphrase(args.key_file))
    size = os.stat(args.device).st_size if os.path.isfile(args.device) else 0
    bar = _bar(args, max(0, size - hdr.payload_offset))
    out = _open_out(args.out)
    try:
        written = decrypt_payload(args.device, out, vk, header=args.header, progress=bar)
        if out is sys.stdout.buffer:
            out.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    finally:
        bar.finish()
        if out is not sys.stdout.buffer:
            out.close()
    return done(args, None, {"device": args.device, "header": args.header, "out": args.out, "bytes": written})
def cmd_encrypt(args: argparse.Namespace) -> int:
    import os

    from hotluks.luks import encrypt_payload, open_header, unlock

    if args.input == "-" and args.key_file == "-":
        raise InputError("IN and --key-file cannot both be stdin")
    hdr = open_header(args.device, header=args.header)
    vk = unlock(hdr, read_passphrase(args.key_file))
    if args.input == "-":
        src: IO[bytes] = sys.stdin.buffer
        total = 0
    else:
        try:
            src = open(args.input, "rb")
        except OSError as exc:
            raise InputError(f"cannot read {args.input}: {exc.strerror}") from None
        total = os.fstat(src.fileno()).st_size
    bar = _bar(args, total)
    try:
        written = encrypt_payload(src, args.device, vk, header=args.header, progress=bar, total=total)
    finally:
        bar.finish()
        if src is not sys.stdin.buffer:
            src.close()
    return done(args, None, {"device": args.device, "header": args.header, "input": args.input, "bytes": written})


def cmd_add_key(args: argparse.Namespace) -> int:
    from hotluks.luks import add_key, open_header, unlock

    hdr = open_header(args.device, header=args.header)
    passphrase = read_passphrase(args.key_file)
    vk = unlock(hdr, passphrase)
    if args.new_key_file is None and args.key_file in (None, "-") and not sys.stdin.isatty():
        raise InputError("give the new passphrase as NEW_KEY_FILE when stdin is not a terminal")
    new = read_passphrase(args.new_key_file, "Enter new passphrase: ")
    if not new:
        raise InputError("empty new passphrase")
    default = "pbkdf2" if hdr.version == 1 else "argon2id"
    kdf = _kdf(args, default, hdr.hash or "sha256", len(vk.key))
    slot = add_key(args.device, passphrase, new, header=args.header, kdf=kdf, keyslot=args.key_slot)
    return done(args, f"added keyslot {slot}", {"device": args.device, "header": args.header, "keyslot": slot})


def cmd_remove_key(args: argparse.Namespace) -> int:
    from hotluks.luks import remove_key

    slot = remove_key(args.device, read_passphrase(args.key_file), header=args.header)
    return done(args, f"removed keyslot {slot}", {"device": args.device, "header": args.header, "keyslot": slot})
