"""``hotluks`` entry point: argument parsing and error-to-exit-code mapping.

Command modules are imported here but must keep their own heavy imports
(lxml, cryptography, qemu.qmp, libvirt) inside their handlers so that start-up
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from hotluks.errors import HotluksError

# Modules that define ``register(subparsers)``; missing ones are skipped so the
# CLI keeps working while a command group is being built.
COMMAND_MODULES = (
    "hotluks.cli.plan",
    "hotluks.cli.vm",
    "hotluks.cli.luks",
    "hotluks.cli.rotate",
    "hotluks.cli.serve",
    "hotluks.cli.demo",
    "hotluks.cli.example",
    "hotluks.cli.hook",
    "hotluks.cli.placement",
    "hotluks.cli.persist",
)
#: which module registers a command, so that running one command imports and builds only its parser
#: (anything not listed, and --help, builds the whole CLI)
COMMAND_OWNERS = {
    "plan": "hotluks.cli.plan", "cold-cmdline": "hotluks.cli.plan", "example": "hotluks.cli.example",
}
#: commands that never log: they skip importing and configuring logging (start-up time)
QUIET_COMMANDS = frozenset({"plan", "cold-cmdline", "example"})
_command_run: str | None = None  # the command main() ran last (entry() decides how to exit)
_json_requested = False  # --json on the command line: argparse's usage errors become JSON too
_argv_words: list[str] = []  # the command line's words that are not options (to name a usage error's command)
DESCRIPTION = "Plug LUKS-encrypted disks (detached headers, librbd) into running QEMU VMs."


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where it is not obvious (``None``/``False`` are not shown)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default in (None, False, [], argparse.SUPPRESS)
                or isinstance(action, argparse._VersionAction)):
            return action.help
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return action.help


    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        # argparse asks shutil for the terminal width (shutil pulls in bz2, lzma, fnmatch): ask os
        super().__init__(prog, indent_increment, max_help_position, width or _terminal_width())


def _terminal_width() -> int:
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
        if not columns and sys.__stdout__ is not None:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (ValueError, OSError):
        columns = 0
    columns = columns or 80
    return max(columns - 2, 20)


class ArgumentParser(argparse.ArgumentParser):
    """hotluks' parsers (and every subparser): :class:`HelpFormatter`, and usage errors as JSON under --json."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if _json_requested:
            from hotluks.cli.output import error_envelope, write

            command = self.prog.removeprefix("hotluks").strip() or _command_words(self) or "hotluks"
            write(error_envelope(command, argparse.ArgumentError(None, message), 2))
        super().error(message)


def _command_words(parser: argparse.ArgumentParser) -> str:
    """``luks dump`` for ``hotluks luks dump DEV --bad``, whose unknown option the top parser reports."""
    words: list[str] = []
    found = True
    while found:
        found = False
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                word = next((a for a in _argv_words if a in action.choices and a not in words), None)
                if word is not None:
                    words.append(word)
                    parser, found = action.choices[word], True
                    break
    return " ".join(words)


class VersionAction(argparse.Action):
    """``--version``: hotluks' version and the QEMU/libvirt/cryptsetup it finds (probed only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print hotluks' version and the QEMU, libvirt and cryptsetup versions found")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from hotluks.cli.version import version_lines

        print("\n".join(version_lines()))
        parser.exit()


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every (sub)command parser below ``parser``: ``(name, parser, help)``, recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)
                yield from subparsers(sub)


def _polish(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand a description, shown defaults, and the global options after it too."""
    parser.formatter_class = HelpFormatter
    for _name, sub, help_text in subparsers(parser):
        sub.formatter_class = HelpFormatter
        if not sub.description and help_text:
            sub.description = help_text[0].upper() + help_text[1:] + "."
        for action in sub._actions:  # an option without help still shows its default
            if action.help is None and action.default not in (None, False, [], argparse.SUPPRESS):
                action.help = "(default: %(default)s)"
        existing = {opt for a in sub._actions for opt in a.option_strings}
        if "-v" not in existing and "--verbose" not in existing:
            sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="more logging (-vv: debug); also accepted before the command")
        if "--json" not in existing:
            sub.add_argument("--json", dest="global_json", action="store_true", default=argparse.SUPPRESS,
                             help=argparse.SUPPRESS)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the ``hotluks`` argument parser: all commands, or only those of module ``only``."""
    parser = ArgumentParser(prog="hotluks", description=DESCRIPTION,
                                     epilog="Run `hotluks COMMAND --help` for a command's options; "
                                            "`man hotluks` for all of them.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("--json", dest="global_json", action="store_true", default=False,
                        help="machine-readable output (format hotluks/1) for commands that have it")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in (only,) if only else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    _polish(parser)
    return parser


#: commands that act on a VM: an interruption outside their event loop (which turns SIGINT/SIGTERM
#: into rollback or repair itself) happens before anything was sent, so it exits 2, never 130
VM_COMMANDS = frozenset({"attach", "detach", "status", "repair", "resize"})


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    from hotluks.cli.common import validate_args

    argv = list(sys.argv[1:] if argv is None else argv)
    global _json_requested, _argv_words
    _json_requested = "--json" in argv
    _argv_words = [a for a in argv if not a.startswith("-")]
    word = next((a for a in argv if not a.startswith("-")), None)
    owner = COMMAND_OWNERS.get(word or "") if "-h" not in argv and "--help" not in argv else None
    parser = build_parser(owner)
    args = parser.parse_args(argv)
    global _command_run
    _command_run = args.command
    if getattr(args, "global_json", False) and hasattr(args, "json"):
        args.json = True
    if args.verbose or args.command not in QUIET_COMMANDS:
        import logging

        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="hotluks: %(levelname)s: %(message)s")
    vm_command = args.command in VM_COMMANDS
    if vm_command:
        try:
            signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        except ValueError:  # main() called from another thread (an embedding program): its signals are its own
            pass
    try:
        validate_args(args)
        code: int = args.func(args)
    except HotluksError as exc:
        return _fail(args, exc, exc.exit_code, f"hotluks: error: {exc}")
    except OSError as exc:  # the environment, not a bug: a clean refusal naming the path
        if isinstance(exc, BrokenPipeError):
            return 1
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, exc, 2, f"hotluks: error: {where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        if vm_command:
            what = KeyboardInterrupt("interrupted before anything was sent to the VM; nothing changed")
            return _fail(args, what, 2, f"hotluks: error: {what}")
        print("hotluks: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so without a traceback unless -vv
        if args.verbose >= 2:
            raise
        return _fail(args, exc, 70, f"hotluks: internal error: {type(exc).__name__}: {exc} "
                                    "(run with -vv for a traceback)")
    return code


def _fail(args: argparse.Namespace, exc: BaseException, code: int, message: str) -> int:
    """Report an error on stderr, and as a ``hotluks/1`` document on stdout under ``--json``."""
    print(message, file=sys.stderr)
    if getattr(args, "json", False) or getattr(args, "global_json", False):
        from hotluks.cli.output import command_name, error_envelope, write

        write(error_envelope(command_name(args), exc, code))
    return code


def entry() -> None:
    """Console-script wrapper.

    The pure commands end with ``os._exit`` once their output is flushed: tearing down the
    interpreter (lxml, the module graph) would cost about a tenth of their run time, and they
    leave no thread, child process or atexit work behind.
    """
    code = main()
    if _command_run in QUIET_COMMANDS:
        import os

        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            code = code or 1
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
