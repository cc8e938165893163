"""Man page and shell completions generated from the argparse definitions (run at build time by setup.py).

``python -m hotluks.cli.docgen DIR`` writes ``DIR/man/man1/hotluks.1``,
``DIR/bash-completion/completions/hotluks`` and ``DIR/zsh/site-functions/_hotluks``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from hotluks.cli.main import DESCRIPTION, HelpFormatter, build_parser, subparsers

EXIT_STATUS = (
    ("0", "success"),
    ("1", "the operation failed and was fully rolled back (the VM is unchanged), or a wrong passphrase "
          "(luks verify)"),
    ("2", "refused before anything was done: bad input, preflight, capability or conflict"),
    ("3", "failed and not fully rolled back: run hotluks repair VM"),
    ("70", "internal error (a bug: please report it with the -vv output)"),
)


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = HelpFormatter(parser.prog)
    raw = formatter._get_help_string(action) or ""
    params = {**vars(action), "prog": parser.prog}
    params = {k: (", ".join(map(str, v)) if isinstance(v, list | tuple) else v) for k, v in params.items()}
    try:
        return raw % params
    except (KeyError, TypeError, ValueError):
        return raw


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + str(action.metavar or action.dest.upper())
            names = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
            head = f"{names}{_roff(str(metavar))}"
        else:
            head = f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        lines += [".TP", head, _roff(_help(parser, action))]
    return lines


def manpage(parser: argparse.ArgumentParser | None = None) -> str:
    """The ``hotluks(1)`` man page in roff."""
    from hotluks import __version__

    parser = parser or build_parser()
    out = [f'.TH HOTLUKS 1 "" "hotluks {__version__}" "User Commands"', ".SH NAME",
           f"hotluks \\- {_roff(DESCRIPTION.rstrip('.'))}", ".SH SYNOPSIS",
           ".B hotluks", "[\\fB\\-v\\fR] [\\fB\\-\\-json\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]",
           ".SH DESCRIPTION", _roff(DESCRIPTION),
           "Global options may also be given after the command.", ".SH GLOBAL OPTIONS", *_options(parser),
           ".SH COMMANDS"]
    for name, sub, _help_text in subparsers(parser):
        title = sub.prog.removeprefix("hotluks ")
        out += [f'.SS "{_roff(title)}"', ".nf", _roff(" ".join(sub.format_usage().split())), ".fi"]
        if sub.description:
            out += [".PP", _roff(sub.description)]
        out += _options(sub)
        if sub.epilog:
            out += [".PP", _roff(sub.epilog)]
        del name
    out += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out += [".SH FILES", ".TP", "/var/lib/hotluks", "journal of operations (state directory) when run as root",
            ".SH SEE ALSO", "virsh(1), cryptsetup(8), qemu-system-x86_64(1)"]
    return "\n".join(out) + "\n"


def _tree(parser: argparse.ArgumentParser) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """``{"": (options, [(command, help)]), "luks": …, "luks dump": (options, [])}``."""
    def entry(p: argparse.ArgumentParser) -> tuple[list[str], list[tuple[str, str]]]:
        opts = [o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        cmds: list[tuple[str, str]] = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                helps = {c.dest: c.help or "" for c in a._choices_actions}
                cmds = [(n, helps.get(n, "")) for n in a.choices]
        return opts, cmds

    tree = {"": entry(parser)}
    for _name, sub, _help_text in subparsers(parser):
        tree[sub.prog.removeprefix("hotluks ").strip()] = entry(sub)
    return tree


def bash_completion(parser: argparse.ArgumentParser | None = None) -> str:
    tree = _tree(parser or build_parser())
    cases = []
    for path, (opts, cmds) in tree.items():
        words = " ".join(opts + [c for c, _ in cmds])
        cases.append(f'        "{path}") opts="{words}"; subs="{" ".join(c for c, _ in cmds)}" ;;')
    return "\n".join([
        "# bash completion for hotluks (generated from its argparse definitions)",
        "_hotluks() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" hl_path="" w i opts subs',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        [[ "$w" == -* ]] && continue',
        '        case "${hl_path:+$hl_path }$w" in',
        *[f'            "{p}") hl_path="{p}" ;;' for p in tree if p],
        "        esac",
        "    done",
        '    case "$hl_path" in',
        *cases,
        '        *) opts=""; subs="" ;;',
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")',
        '    elif [[ -n "$subs" ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")',
        "    else",
        '        mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
        "    fi",
        "}",
        "complete -o filenames -F _hotluks hotluks",
        "",
    ])


def zsh_completion(parser: argparse.ArgumentParser | None = None) -> str:
    tree = _tree(parser or build_parser())

    def clean(text: str) -> str:
        return re.sub(r"[\[\]:'`$\\]", "", text)[:70]

    cases = []
    for path, (opts, cmds) in tree.items():
        if cmds:
            items = " ".join(f"'{c}:{clean(h)}'" for c, h in cmds)
            body = f"local -a cmds=({items}); _describe command cmds"
        else:
            body = f"_arguments -s {' '.join(repr(o) for o in opts)} '*:file:_files'"
        cases.append(f'    "{path}") {body} ;;')
    return "\n".join([
        "#compdef hotluks",
        "# zsh completion for hotluks (generated from its argparse definitions)",
        "_hotluks() {",
        '    local hl_path="" w',
        "    for w in ${words[2,CURRENT-1]}; do",
        '        [[ "$w" == -* ]] && continue',
        '        case "${hl_path:+$hl_path }$w" in',
        *[f'            "{p}") hl_path="{p}" ;;' for p in tree if p],
        "        esac",
        "    done",
        '    case "$hl_path" in',
        *cases,
        "    *) _files ;;",
        "    esac",
        "}",
        '_hotluks "$@"',
        "",
    ])


def write_all(root: Path) -> list[tuple[str, list[str]]]:
    """Write the man page and completions under ``root``; return setuptools ``data_files`` entries."""
    parser = build_parser()
    files = {
        "share/man/man1": ("hotluks.1", manpage(parser)),
        "share/bash-completion/completions": ("hotluks", bash_completion(parser)),
        "share/zsh/site-functions": ("_hotluks", zsh_completion(parser)),
    }
    entries = []
    for target, (name, text) in files.items():
        path = root / target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        entries.append((target, [str(path)]))
    return entries


if __name__ == "__main__":
    for target, paths in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "build/generated")):
        print(target, *paths)
