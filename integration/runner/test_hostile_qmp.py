"""Hostile QMP replies from a fake server through the real CLI, one process per case (issue 14).

Every script of :data:`SCRIPTS` (a misbehaving monitor: wrong types, missing keys, odd errors,
garbage, wrong ids, bad greetings, hangs, floods, giant lines, plausible lies) is run against
each VM command that reads or writes the monitor, with ``--timeout 5 --json``. Bounds per case:
exit code in {0, 1, 2, 3}, no traceback, under 10 s, peak RSS under 256 MiB, a ``--json``
document that validates against the command's schema, and no passphrase on stdout/stderr.
The server is :class:`testsupport.hostileqmp.HostileQMP`, in this process; no QEMU runs.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testsupport.fakeqemu import FakeQemu
from testsupport.hostileqmp import (
    CLOSE,
    GREETING,
    HANG,
    HostileQMP,
    Rule,
    Step,
    document,
    edit,
    line,
    raw,
    returns,
    then,
)
from testsupport.schemas import validate

MAX_SECONDS = 10.0
MAX_RSS_KIB = 256 * 1024
MIN_CASES = 150
PASSPHRASE = b"hostile qmp corpus passphrase"
SECRET_UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
TARGET = "vde"
ALL_COMMANDS = ("status", "attach-dry", "attach", "detach", "repair", "resize", "placement")
HOTLUKS = [sys.executable, "-m", "hotluks"]

# -- the scripts ------------------------------------------------------------------------------------
#: (query-fdsets is the libvirt backends' only: tests/backends/test_replies.py checks its shape)
QUERIES = ("query-named-block-nodes", "qom-list", "query-pci", "query-version",
           "query-qmp-schema", "query-uuid", "query-cpus-fast", "qom-get")
MUTATIONS = ("object-add", "blockdev-add", "device_add", "device_del", "blockdev-del", "object-del", "block_resize")
WRONG_VALUES: dict[str, Any] = {"int": 5, "str": "x", "null": None, "obj": {"a": 1}}


def _deep(depth: int) -> Rule:
    """A ``return`` nested ``depth`` levels deep (written as text: too deep for json.dumps)."""
    return raw(b'{"return": [' + b'{"a": [' * depth + b"{}" + b"]}" * depth + b"]}\r\n")


def _bridges(depth: int) -> dict[str, Any]:
    """A PCI device behind ``depth`` nested bridges."""
    device: dict[str, Any] = {"slot": 2}
    for _ in range(depth):
        device = {"slot": 1, "pci_bridge": {"devices": [device]}}
    return device


def _drop_key(key: str) -> Callable[[Any], Any]:
    def change(value: Any) -> Any:
        if isinstance(value, list):
            return [{k: v for k, v in e.items() if k != key} if isinstance(e, dict) else e for e in value]
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != key}
        return value
    return change


def _each(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Any], Any]:
    return lambda value: [change(dict(e)) if isinstance(e, dict) else e for e in value] if isinstance(value, list) \
        else value


def _events(count: int) -> list[Step]:
    event = line({"event": "BLOCK_JOB_READY", "data": {"device": "x" * 100}, "timestamp": {"seconds": 0,
                                                                                          "microseconds": 0}})
    return [event * count]


def _many_small(count: int) -> Rule:
    """A ``return`` list of ``count`` tiny nested objects (parsed JSON costs ~30x its size)."""
    def rule(default: dict[str, Any], msg: dict[str, Any]) -> list[Step]:
        return [b'{"return": [' + b'{"a":[{}]},' * count + b'{}], "id": ' + json.dumps(msg.get("id")).encode()
                + b"}\r\n"]
    return rule


def _giant(size: int) -> list[Step]:
    return [b'{"return": "' + b"A" * size + b'"}\r\n']


@dataclass(frozen=True)
class Script:
    name: str
    rules: dict[str, Rule]
    greeting: list[Step] | None = None
    capabilities: Rule | None = None
    #: the commands to run it against (default: all of COMMANDS)
    commands: tuple[str, ...] | None = None


def _scripts() -> list[Script]:
    out: list[Script] = []
    # wrong types for every query hotluks reads
    for query in QUERIES:
        for label, value in WRONG_VALUES.items():
            out.append(Script(f"{query}-returns-{label}", {query: returns(value)}))
    # list where an object is expected and vice versa, inside the answers
    out += [
        Script("nodes-entries-are-lists", {"query-named-block-nodes": edit(lambda v: [[1, 2]] + v)}),
        Script("nodes-name-is-int", {"query-named-block-nodes": edit(_each(lambda e: {**e, "node-name": 7}))}),
        Script("nodes-missing-name", {"query-named-block-nodes": edit(_drop_key("node-name"))}),
        Script("nodes-missing-image", {"query-named-block-nodes": edit(_drop_key("image"))}),
        Script("nodes-image-is-list", {"query-named-block-nodes": edit(_each(lambda e: {**e, "image": [1]}))}),
        Script("nodes-size-is-string", {"query-named-block-nodes": edit(_each(
            lambda e: {**e, "image": {"virtual-size": "big"}}))}),
        Script("nodes-extra-keys", {"query-named-block-nodes": edit(_each(lambda e: {**e, "zz": {"y": [None]}}))}),
        Script("nodes-list-hl-names", {"query-named-block-nodes": edit(lambda v: v + [
            {"node-name": n, "drv": "raw", "image": {"virtual-size": 1}} for n in
            ("hl-vde-proto", "hl-vde-crypt", "hl-vde-fmt", "hl-vde")])}),
        Script("qom-list-entries-are-strings", {"qom-list": returns(["child<x>", "y"])}),
        Script("qom-list-type-is-int", {"qom-list": edit(_each(lambda e: {**e, "type": 3}))}),
        Script("qom-list-missing-type", {"qom-list": edit(_drop_key("type"))}),
        Script("qom-list-odd-children", {"qom-list": returns([{"name": "", "type": "child<"},
                                                              {"name": "rp1", "type": "child<>"},
                                                              {"name": "x" * 5000, "type": "child<pcie-root-port>"}])}),
        Script("pci-duplicate-slots", {"query-pci": edit(lambda v: v + v)}),
        Script("pci-devices-is-object", {"query-pci": returns([{"bus": 0, "devices": {"slot": 1}}])}),
        Script("pci-slot-is-string", {"query-pci": returns([{"bus": 0, "devices": [{"slot": "one", "bus": 0}]}])}),
        Script("pci-bridge-is-list", {"query-pci": returns([{"bus": 0, "devices": [
            {"qdev_id": "rp1", "slot": 1, "pci_bridge": [1]}]}])}),
        Script("pci-deep-nesting", {"query-pci": returns([{"bus": 0, "devices": [
            {"slot": 1, "pci_bridge": {"devices": [{"slot": 1, "pci_bridge": {"devices": []}}] * 2}}] * 50}])}),
        Script("pci-deep-bridges", {"query-pci": returns([{"bus": 0, "devices": [
            _bridges(100)]}])}),
        Script("version-1.0", {"query-version": returns({"qemu": {"major": 1, "minor": 0, "micro": 0},
                                                         "package": ""})}),
        Script("version-fields-strings", {"query-version": returns({"qemu": {"major": "10", "minor": "x"}})}),
        Script("version-huge-package", {"query-version": returns({"qemu": {"major": 10, "minor": 0, "micro": 0},
                                                                  "package": "p" * 2_000_000})}),
        Script("schema-entries-odd", {"query-qmp-schema": returns([{"name": "blockdev-add", "arg-type": 5},
                                                                   {"name": 5}])}),
        Script("schema-variants-object", {"query-qmp-schema": returns([
            {"name": "blockdev-add", "arg-type": "0"}, {"name": "0", "variants": {"case": "luks"}}])}),
        Script("schema-no-blockdev-add", {"query-qmp-schema": returns([])}),
        Script("schema-deep-nesting", {"query-qmp-schema": _deep(100_000)}),
        Script("nodes-deep-nesting", {"query-named-block-nodes": _deep(100_000)}),
        Script("machine-type-is-object", {"qom-get": returns({"type": "q35"})}),
        Script("uuid-not-a-uuid", {"query-uuid": returns({"UUID": "not-a-uuid"})}),
        Script("uuid-zero", {"query-uuid": returns({"UUID": "00000000-0000-0000-0000-000000000000"})}),
        Script("cpus-odd-threads", {"query-cpus-fast": returns([{"thread-id": -1}, {"thread-id": 1},
                                                                {"thread-id": "1"}, 7])}),
    ]
    # wrong replies to the mutations (after the first change: rollback or repair)
    for command in MUTATIONS:
        out.append(Script(f"{command}-returns-5", {command: returns(5)}))
        out.append(Script(f"{command}-odd-error", {command: document({"error": {"class": 5}})}))
    out += [
        Script("device_add-closes", {"device_add": raw(CLOSE)}),
        Script("blockdev-add@2-garbage", {"blockdev-add@2": raw(b"\x00\xff garbage }{\r\n")}),
        Script("device_del-hangs", {"device_del": raw(HANG)}, commands=("detach", "repair")),
        Script("device_del-no-event", {"device_del": returns({})}, commands=("detach",)),
    ]
    # odd errors
    for label, error in {"no-class": {"desc": "d"}, "no-desc": {"class": "GenericError"},
                         "class-int": {"class": 1, "desc": 2}, "error-string": "boom", "error-list": [1],
                         "huge-desc": {"class": "GenericError", "desc": "d" * 1_000_000}}.items():
        out.append(Script(f"error-{label}", {q: document({"error": error}) for q in QUERIES},
                          commands=("status", "attach-dry")))  # the first query fails: the same path for all
    out += [
        Script("both-return-and-error", {"query-uuid": document({"return": {}, "error": {"class": "X", "desc": "y"}})}),
        Script("neither-return-nor-error", {"query-uuid": document({"answer": 42})}),
        Script("reply-is-list", {"query-uuid": document([1, 2], keep_id=False)}),
        Script("reply-is-string", {"query-uuid": document("hello", keep_id=False)}),
        Script("garbage-reply", {"query-uuid": raw(b"this is not json\r\n")}),
        Script("binary-garbage", {"query-version": raw(bytes(range(256)) + b"\r\n")}),
        Script("wrong-id", {"query-uuid": lambda d, m: [line({**d, "id": "not-yours"})]}),
        Script("wrong-id-then-right", {"query-uuid": lambda d, m: [line({**d, "id": "nope"}), line(d)]}),
        Script("no-id", {"query-uuid": lambda d, m: [line({k: v for k, v in d.items() if k != "id"})]}),
        Script("close-mid-reply", {"query-uuid": raw(b'{"return": {"UU', CLOSE)}),
        Script("close-on-query", {"query-named-block-nodes": raw(CLOSE)}),
        Script("hang-on-query", {"query-named-block-nodes": raw(HANG)}),
        Script("hang-on-schema", {"query-qmp-schema": raw(HANG)}, commands=("attach", "attach-dry")),
        Script("slow-replies", {q: then([0.3]) for q in QUERIES}),
        Script("slow-just-in-time", {q: then([1.5]) for q in QUERIES},  # each reply in time, not all
               commands=("status", "attach-dry", "placement")),
        Script("slow-partial-line", {"query-uuid": lambda d, m: [line(d)[:5], 2.0, line(d)[5:]]}),
        Script("event-flood", {"query-uuid": then(_events(20000))}),
        Script("event-garbage", {"query-uuid": then([line({"event": 5}), line({"event": "X", "data": [1]})])}),
        Script("giant-line-50MB", {"query-uuid": raw(*_giant(50 << 20))}, commands=("status", "attach-dry")),
        Script("small-objects-2MB", {"query-named-block-nodes": _many_small(180_000)}),
        Script("small-objects-9MB", {"query-named-block-nodes": _many_small(900_000)}),
        Script("giant-reply-in-list", {"query-named-block-nodes": returns(["n" * 1000] * 20000)}),
        # the greeting and the handshake
        Script("no-greeting", {}, greeting=[HANG], commands=ALL_COMMANDS),  # each --timeout bounds it
        Script("greeting-then-close", {}, greeting=[line(GREETING), CLOSE]),
        Script("close-at-once", {}, greeting=[CLOSE]),
        Script("greeting-garbage", {}, greeting=[b"hello\r\n"]),
        Script("greeting-is-list", {}, greeting=[line([GREETING])]),
        Script("greeting-no-version", {}, greeting=[line({"QMP": {"capabilities": []}})]),
        Script("greeting-version-wrong", {}, greeting=[line({"QMP": {"version": 5, "capabilities": 5}})]),
        Script("capabilities-error", {}, capabilities=document({"error": {"class": "GenericError", "desc": "no"}})),
        Script("capabilities-hang", {}, capabilities=raw(HANG), commands=ALL_COMMANDS),
        Script("capabilities-garbage", {}, capabilities=raw(b"][\r\n")),
        Script("capabilities-returns-5", {}, capabilities=returns(5)),
    ]
    return out


SCRIPTS = _scripts()

# -- running the CLI ---------------------------------------------------------------------------------
COMMANDS: dict[str, Callable[[str, Path], list[str]]] = {
    "status": lambda vm, d: ["status", vm, "--state-dir", str(d / "state"), "--timeout", "5"],
    "attach-dry": lambda vm, d: ["attach", vm, str(d / "disk.xml"), "--secret", f"{SECRET_UUID}={d / 'pass'}",
                                 "--state-dir", str(d / "state"), "--dry-run", "--timeout", "5"],
    "attach": lambda vm, d: ["attach", vm, str(d / "disk.xml"), "--secret", f"{SECRET_UUID}={d / 'pass'}",
                             "--state-dir", str(d / "state"), "--timeout", "5"],
    "detach": lambda vm, d: ["detach", vm, "--target", TARGET, "--state-dir", str(d / "state"), "--timeout", "5"],
    "repair": lambda vm, d: ["repair", vm, "--state-dir", str(d / "state"), "--timeout", "5"],
    "resize": lambda vm, d: ["resize", vm, TARGET, "+1M", "--state-dir", str(d / "state"), "--timeout", "5"],
    "placement": lambda vm, d: ["placement", vm, "--target", TARGET, "--timeout", "5"],
}
#: the commands that start from a VM with the disk attached (and its journal record)
SEEDED = frozenset({"status", "detach", "repair", "resize", "placement"})
SCHEMA_OF = {"attach-dry": "attach"}


@dataclass
class Outcome:
    case: str
    code: int
    seconds: float
    rss_kib: int
    stdout: bytes
    stderr: bytes


#: runs argv (killed after a limit: exit 124) and writes its peak RSS (KiB) to the descriptor argv[2]:
#: measured in a small process, since a child forked from this (large) test process counts the
#: parent's pages in its ru_maxrss
MEASURE = """
import os, resource, subprocess, sys
try:
    code = subprocess.run(sys.argv[3:], stdin=subprocess.DEVNULL, timeout=float(sys.argv[1])).returncode
except subprocess.TimeoutExpired:
    code = 124
os.write(int(sys.argv[2]), str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss).encode())
sys.exit(code if code >= 0 else 128 - code)
"""


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, float, int, bytes, bytes]:
    """Run ``argv``; its exit code (over 128: a signal; 124: killed at the limit), wall time,
    peak RSS (KiB), stdout, stderr."""
    read_end, write_end = os.pipe()
    started = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(MAX_SECONDS + 3), str(write_end), *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                pass_fds=(write_end,))
        os.close(write_end)
        write_end = -1
        out, err = proc.communicate()
        seconds = time.monotonic() - started
        rss = os.read(read_end, 64)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    return proc.returncode, seconds, int(rss or 0), out, err


@dataclass(frozen=True)
class World:
    """A LUKS1 volume, its <disk> XML and passphrase file, and the state of a VM with it attached."""

    files: Path
    vm_state: Any
    state_dir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    files = tmp_path_factory.mktemp("hostile-qmp")
    (files / "pass").write_bytes(PASSPHRASE)
    volume = files / "volume.luks"
    with volume.open("wb") as f:
        f.truncate(20 << 20)
    subprocess.run([*HOTLUKS, "luks", "format", str(volume), "--type", "luks1", "--key-file", str(files / "pass"),
                    "--pbkdf-force-iterations", "1000", "--force"], check=True, capture_output=True)
    xml = Path(__file__).parents[2] / "hotluks" / "examples" / "attached-luks-raw.xml"
    (files / "disk.xml").write_text(xml.read_text().replace("/var/lib/hotluks/volume.luks", str(volume)))
    seeded = files / "seeded"
    (seeded / "state").mkdir(parents=True, mode=0o700)
    shutil.copy(files / "disk.xml", seeded / "disk.xml")
    shutil.copy(files / "pass", seeded / "pass")
    with HostileQMP() as server:
        code, _, _, out, err = _run([*HOTLUKS, *COMMANDS["attach"](f"unix:{server.path}", seeded), "--json"],
                                    _env())
        assert code == 0, (out, err)
        state = copy.deepcopy(server.vm.state)
    yield World(files, state, seeded / "state")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLUKS_")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    return env


def run_case(world: World, script: Script, command: str) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix="hotluks-hq-"))
    try:
        shutil.copy(world.files / "disk.xml", work / "disk.xml")
        shutil.copy(world.files / "pass", work / "pass")
        server = HostileQMP(script.rules, greeting=script.greeting, capabilities=script.capabilities)
        if command in SEEDED:
            shutil.copytree(world.state_dir, work / "state", symlinks=True)
            server.vm.state = copy.deepcopy(world.vm_state)
        else:
            (work / "state").mkdir(mode=0o700)
        with server:
            argv = [*HOTLUKS, *COMMANDS[command](f"unix:{server.path}", work), "--json"]
            code, seconds, rss, out, err = _run(argv, _env())
        return Outcome(f"{script.name} × {command}", code, seconds, rss, out, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def problems(outcome: Outcome, command: str) -> list[str]:
    found = []
    if outcome.code not in (0, 1, 2, 3):
        found.append(f"exit {outcome.code}")
    if b"Traceback" in outcome.stderr or b"Traceback" in outcome.stdout:
        found.append("traceback")
    if outcome.seconds >= MAX_SECONDS:
        found.append(f"took {outcome.seconds:.1f}s")
    if outcome.rss_kib >= MAX_RSS_KIB:
        found.append(f"peak RSS {outcome.rss_kib // 1024} MiB")
    secret_forms = (PASSPHRASE, base64.b64encode(PASSPHRASE))
    if any(s in outcome.stdout or s in outcome.stderr for s in secret_forms):
        found.append("passphrase in the output")
    try:
        validate(SCHEMA_OF.get(command, command), json.loads(outcome.stdout))
    except Exception as exc:  # noqa: BLE001 - any failure to parse or validate is a finding
        found.append(f"--json document: {type(exc).__name__}: {str(exc)[:200]}")
    return found


#: the CLI commands that send each QMP command (against the fake VM, seeded as above); before its first
#: change, attach asks what attach --dry-run asks, with the same code: the dry run stands for both
#: every command connects and asks query-cpus-fast and query-uuid, with the same code: a few suffice
IDENTITY = ("status", "attach-dry", "placement")
SENDS: dict[str, tuple[str, ...]] = {
    "query-named-block-nodes": ("status", "attach-dry", "detach", "resize"),
    "qom-list": ("status", "attach-dry", "detach"),
    "query-pci": ("attach-dry",),
    "query-version": ("attach-dry",),
    "query-qmp-schema": ("attach-dry",),
    "qom-get": ("attach-dry", "placement"),
    "query-uuid": IDENTITY[:2],
    "query-cpus-fast": IDENTITY[:2],
    "object-add": ("attach",), "blockdev-add": ("attach",), "device_add": ("attach",),
    "device_del": ("detach",), "blockdev-del": ("detach",), "object-del": ("detach",),
    "block_resize": ("resize",),
}


def _commands(script: Script) -> tuple[str, ...]:
    """The CLI commands a script is run against: given, else those that send what its rules change."""
    if script.commands is not None:
        return script.commands
    if script.greeting is not None or script.capabilities is not None:
        return IDENTITY
    wanted = {c for key in script.rules for c in SENDS.get(key.split("@")[0], ())}
    return tuple(c for c in COMMANDS if c in wanted)


def _cases() -> list[tuple[Script, str]]:
    """Every (script, command), those that wait for a timeout first (they cost time, not CPU)."""
    cases = [(s, c) for s in SCRIPTS for c in _commands(s)]
    return sorted(cases, key=lambda sc: not any(w in sc[0].name for w in ("hang", "no-greeting", "slow")))


def test_the_corpus_is_large_enough() -> None:
    assert len(_cases()) >= MIN_CASES
    assert len({s.name for s in SCRIPTS}) == len(SCRIPTS)
    assert all(_commands(s) for s in SCRIPTS), [s.name for s in SCRIPTS if not _commands(s)]


def test_every_hostile_monitor_is_bounded(world: World) -> None:
    cases = _cases()
    with ThreadPoolExecutor(max_workers=int(os.environ.get("HOTLUKS_CORPUS_JOBS", "8"))) as pool:
        outcomes = list(pool.map(lambda sc: (sc[1], run_case(world, *sc)), cases))
    slowest = max((o for _, o in outcomes), key=lambda o: o.seconds)
    largest = max((o for _, o in outcomes), key=lambda o: o.rss_kib)
    codes = sorted(collections.Counter(o.code for _, o in outcomes).items())
    print(f"{len(cases)} cases; exit codes {codes}; slowest {slowest.case} {slowest.seconds:.1f}s; "
          f"largest {largest.case} {largest.rss_kib // 1024} MiB")
    log_path = os.environ.get("HOTLUKS_CORPUS_LOG")  # one line per case, for reading what each one did
    if log_path:
        Path(log_path).write_text("".join(
            f"{o.code} {o.seconds:5.1f}s {o.rss_kib // 1024:4d}MiB {o.case}: "
            f"{(o.stderr.decode(errors='replace').strip().splitlines() or [''])[-1][:250]}\n" for _, o in outcomes))
    report = []
    for command, outcome in outcomes:
        found = problems(outcome, command)
        if found:
            tail = outcome.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            report.append(f"{outcome.case}: {', '.join(found)} (exit {outcome.code}; {tail[0][:300]})")
    assert not report, f"{len(report)} of {len(cases)} cases out of bounds:\n" + "\n".join(report)


def test_a_clean_monitor_works(world: World) -> None:
    """The baseline: without rules every command succeeds (the corpus tests the replies, not the setup)."""
    clean = Script("clean", {})
    for command in COMMANDS:
        outcome = run_case(world, clean, command)
        assert outcome.code == 0 and not problems(outcome, command), (command, outcome)


def test_the_server_is_gone_after_a_case() -> None:
    server = HostileQMP({"query-uuid": raw(HANG)})
    with server:
        assert server.path.is_socket()
    assert not server.path.parent.exists()
    assert isinstance(server.vm, FakeQemu)


def test_a_reply_without_return_or_error_is_named(world: World) -> None:
    """qemu.qmp's own protocol errors read as what the monitor did, not as a library class name."""
    by_name = {s.name: s for s in SCRIPTS}
    outcome = run_case(world, by_name["neither-return-nor-error"], "status")
    error = json.loads(outcome.stdout)["error"]["message"]
    assert outcome.code == 2 and not problems(outcome, "status"), outcome
    assert error == ("query-uuid: malformed reply from the monitor: the reply has neither a 'return' member "
                     "nor a well-formed 'error'"), error
