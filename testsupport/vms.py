"""Guest-less QEMU VMs, small encrypted test disks and an independent QMP oracle, for runner tests.

- :func:`start_vm` starts a paused q35 VM with spare PCIe root ports (virtio-blk
  unplug completes without a guest), a ``scsi0`` virtio-scsi controller, an
  optional ``masterKey0`` secret and a second QMP socket for the test itself.
- :func:`make_disk` builds one disk of a given shape (detached header with qcow2
  or raw payload, attached LUKS raw, qcow2-native) whose plaintext starts with
  ``PATTERN_LEN`` bytes of ``PATTERN``, plus its ``<disk>`` XML.
- :class:`Monitor` is a tiny blocking QMP client, deliberately independent of
  hotluks' backends, used to snapshot the VM and read plaintext via HMP qemu-io.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotluks.backends.base import MonitorBackend, QMPArgs, QMPCommandError, VMIdentity
from hotluks.demo.qemu.launcher import QemuProcess, start_qemu
from testsupport.qmpproxy import MUTATING

PASSPHRASE = b"hl-Runner-pass-7c1e"
PATTERN = 0xAB
PATTERN_LEN = 64 * 1024
SHAPES = ("detached-header-qcow2", "detached-header-raw", "attached-luks", "qcow2-native")
BUSES = ("virtio", "scsi")


# -- VMs ---------------------------------------------------------------------------------
def vm_args(ports: int = 4, scsi: bool = True, master_key: Path | None = None) -> list[str]:
    """QEMU arguments for a hot-plug-ready guest-less q35 VM."""
    args = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    for i in range(1, ports + 1):
        args += ["-device", f"pcie-root-port,id=rp{i},chassis={i},bus=pcie.0,addr={0x2 + i:#x}"]
    if scsi:
        args += ["-device", "virtio-scsi-pci,id=scsi0,bus=pcie.0,addr=0x2"]
    if master_key is not None:
        args += ["-object", f"secret,id=masterKey0,format=raw,file={master_key}"]
    return args


def start_vm(ports: int = 4, scsi: bool = True, master_key: Path | None = None,
             extra: Sequence[str] = (), qmp_sockets: int = 2) -> QemuProcess:
    """Start the VM; ``qmp_path`` is for hotluks, ``extra_sockets[0]`` for the test's :class:`Monitor`."""
    return start_qemu([*vm_args(ports, scsi, master_key), *extra], qmp_sockets=qmp_sockets)


def write_master_key(path: Path) -> Path:
    """32 random bytes for ``-object secret,id=masterKey0`` and ``--master-key``."""
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


# -- the test's own QMP client --------------------------------------------------------------
class MonitorError(Exception):
    def __init__(self, command: str, error: dict[str, Any]):
        self.error = error
        super().__init__(f"{command}: {error.get('desc')}")


@dataclass(frozen=True)
class Snapshot:
    """Block nodes, user-creatable objects and peripheral devices of a VM."""

    nodes: frozenset[str]
    objects: frozenset[str]
    devices: frozenset[str]

    def names(self) -> frozenset[str]:
        return self.nodes | self.objects | self.devices


class Monitor:
    """Blocking QMP client on one socket (the test's own view of the VM)."""

    def __init__(self, path: str | Path, timeout: float = 15.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("QMP connection closed")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cmd(self, execute: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise MonitorError(execute, reply["error"])
            return reply.get("return")

    def children(self, path: str) -> dict[str, str]:
        listing = self.cmd("qom-list", {"path": path})
        return {e["name"]: e["type"][6:-1] for e in listing if str(e["type"]).startswith("child<")}

    def snapshot(self) -> Snapshot:
        nodes = self.cmd("query-named-block-nodes", {"flat": True})
        return Snapshot(frozenset(n["node-name"] for n in nodes), frozenset(self.children("/objects")),
                        frozenset(self.children("/machine/peripheral")))

    def hmp(self, line: str) -> str:
        return str(self.cmd("human-monitor-command", {"command-line": line}))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def qemu_io_read(monitor: Monitor, vm: QemuProcess, node: str, pattern: int = PATTERN,
                 length: int = PATTERN_LEN, timeout: float = 10.0) -> str:
    """Read ``length`` bytes at 0 of ``node`` through QEMU and check them against ``pattern``.

    Returns ``"ok"``, ``"mismatch"`` or raises. HMP ``qemu-io`` prints its result on
    QEMU's stdout (or returns it), so both are inspected.
    """
    mark = len(vm.output())
    returned = monitor.hmp(f'qemu-io {node} "read -P {pattern:#x} 0 {length}"')
    deadline = time.monotonic() + timeout
    while True:
        text = returned + vm.output()[mark:]
        if "Pattern verification failed" in text:
            return "mismatch"
        if f"read {length}/{length} bytes" in text:
            return "ok"
        if "qemu-io:" in text or "Error" in text or "error" in text:
            raise AssertionError(f"qemu-io on {node} failed: {text.strip()[-500:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"qemu-io on {node}: no result within {timeout}s: {text!r}")
        time.sleep(0.02)


# -- disks -------------------------------------------------------------------------------------
@dataclass
class TestDisk:
    """One encrypted disk image set and the ``<disk>`` XML that attaches it."""

    __test__ = False  # not a pytest test class

    shape: str
    target: str
    bus: str
    xml_path: Path
    secret_key: str
    secret_file: Path
    files: list[Path] = field(default_factory=list)
    passphrase: bytes = PASSPHRASE
    payload: Path | None = None
    header: Path | None = None

    @property
    def xml(self) -> str:
        return self.xml_path.read_text()

    @property
    def device(self) -> str:
        return f"hl-{self.target}"

    def cli_secret(self) -> list[str]:
        return ["--secret", f"{self.secret_key}={self.secret_file}"]

    def secrets(self) -> dict[str, bytes]:
        return {self.secret_key: self.passphrase}

    def disk(self) -> Any:
        from hotluks.model import Disk

        return Disk.from_xml(self.xml_path)


def _run(args: Sequence[str]) -> None:
    proc = subprocess.run(list(args), capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')[-800:]}")


def _plaintext(size: int) -> io.BytesIO:
    return io.BytesIO(bytes([PATTERN]) * PATTERN_LEN + bytes(size - PATTERN_LEN))


def _luks1(payload: Path, passphrase: bytes, header: Path | None) -> None:
    from hotluks import luks

    luks.format_volume(payload, passphrase, type="luks1", header=header,
                       kdf=luks.make_kdf("pbkdf2", iterations=1000), key_size=256)


_TEMPLATES: dict[tuple[str, bytes, int], tuple[Path, str, Path, Path | None]] = {}


def _build_images(where: Path, shape: str, passphrase: bytes, size: int) -> tuple[str, Path, Path | None]:
    """Create the payload (and header) of ``shape`` in ``where``: (format, payload, header)."""
    from hotluks import luks

    secret_file = where / "pass"
    secret_file.write_bytes(passphrase)
    if shape.startswith("detached-header-"):
        header = where / "header.img"
        raw = where / "payload.raw"
        raw.write_bytes(b"")
        os.truncate(raw, size)
        _luks1(raw, passphrase, header)
        luks.encrypt_payload(_plaintext(size), raw, passphrase, header=header)
        if shape == "detached-header-raw":
            return "raw", raw, header
        payload = where / "payload.qcow2"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(payload)])
        raw.unlink()
        return "qcow2", payload, header
    if shape == "attached-luks":
        payload = where / "volume.luks"
        payload.write_bytes(b"")
        os.truncate(payload, 2 * 1024 * 1024 + size)  # LUKS1 header area (2 MiB) + data
        _luks1(payload, passphrase, None)
        luks.encrypt_payload(_plaintext(size), payload, passphrase)
        return "raw", payload, None
    if shape == "qcow2-native":
        payload = where / "encrypted.qcow2"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "--object", f"secret,id=sec0,file={secret_file}",
              "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", str(payload), str(size)])
        _run(["qemu-io", "--object", f"secret,id=sec0,file={secret_file}", "--image-opts",
              f"driver=qcow2,file.filename={payload},encrypt.key-secret=sec0",
              "-c", f"write -P {PATTERN:#x} 0 {PATTERN_LEN}"])
        return "qcow2", payload, None
    raise ValueError(f"unknown shape {shape}")


def _template(shape: str, passphrase: bytes, size: int) -> tuple[Path, str, Path, Path | None]:
    """Images of ``shape`` built once per process (copied for each test disk)."""
    key = (shape, passphrase, size)
    if key not in _TEMPLATES:
        if not _TEMPLATES:
            atexit.register(clear_templates)  # every user of make_disk cleans up, fixture or not
        where = Path(tempfile.mkdtemp(prefix="hotluks-disk-template-"))
        _TEMPLATES[key] = (where, *_build_images(where, shape, passphrase, size))
    return _TEMPLATES[key]


def clear_templates() -> None:
    """Remove the cached template images (call at the end of a test session)."""
    for where, *_ in _TEMPLATES.values():
        shutil.rmtree(where, ignore_errors=True)
    _TEMPLATES.clear()


def make_disk(workdir: Path, shape: str, target: str, bus: str = "virtio", *, passphrase: bytes = PASSPHRASE,
              usage: str | None = None, address: str = "", payload_mb: int = 1,
              overrides: dict[str, Path] | None = None) -> TestDisk:
    """Create the images of ``shape`` under ``workdir`` and return the disk.

    The plaintext starts with ``PATTERN_LEN`` bytes of ``PATTERN``. ``address`` is
    an ``<address …/>`` element for the XML; ``overrides`` replaces the payload or
    header path in the XML only (``{"payload": …}``, ``{"header": …}``), to
    provoke QEMU errors.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    usage = usage or f"pass-{target}-{workdir.name}"
    secret_file = workdir / f"{target}.pass"
    secret_file.write_bytes(passphrase)
    tdir, fmt, tpayload, theader = _template(shape, passphrase, payload_mb * 1024 * 1024)
    payload = workdir / f"{target}.{tpayload.name}"
    shutil.copyfile(tpayload, payload)
    files: list[Path] = [secret_file, payload]
    header: Path | None = None
    if theader is not None:
        header = workdir / f"{target}.{theader.name}"
        shutil.copyfile(theader, header)
        files.append(header)
    overrides = overrides or {}
    payload_xml = overrides.get("payload", payload)
    header_xml = ""
    if header is not None:
        header_xml = (f"<header type='file'><source file='{overrides.get('header', header)}'/>"
                      "<driver type='raw'/></header>")
    encryption = f"<encryption format='luks'><secret type='passphrase' usage='{usage}'/>{header_xml}</encryption>"
    if shape == "qcow2-native":
        source = f"<source file='{payload_xml}'>{encryption}</source>"
        encryption = ""
    else:
        source = f"<source file='{payload_xml}'/>"
    xml = (f"<disk type='file' device='disk'>\n  <driver name='qemu' type='{fmt}'/>\n  {source}\n"
           f"  {encryption}\n  <target dev='{target}' bus='{bus}'/>\n  {address}\n</disk>\n")
    xml_path = workdir / f"{target}.xml"
    xml_path.write_text(xml)
    files.append(xml_path)
    return TestDisk(shape, target, bus, xml_path, usage, secret_file, files, passphrase, payload, header)


def target_for(bus: str, index: int) -> str:
    """vdb, vdc, … for virtio; sdb, sdc, … for scsi."""
    return ("vd" if bus == "virtio" else "sd") + "bcdefghijklmnop"[index]


# -- secrets in text ----------------------------------------------------------------------------
def secret_forms(secret: bytes) -> list[bytes]:
    """Encodings a leaked secret could take: raw, hex, and base64 at each alignment."""
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode()}
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + secret)
        # drop the characters that depend on the neighbouring bytes
        start = (pad * 4 + 2) // 3 if pad else 0
        core = enc[start: len(enc) - 4]
        if len(core) >= 8:
            forms.add(core)
        urlsafe = base64.urlsafe_b64encode(b"\0" * pad + secret)[start: len(enc) - 4]
        if len(urlsafe) >= 8:
            forms.add(urlsafe)
    forms.add(base64.b64encode(secret).rstrip(b"="))
    return sorted(forms)


def leaks(secret: bytes, blobs: Iterable[bytes | str]) -> list[str]:
    """Which secret forms occur in any of ``blobs`` (empty list: no leak)."""
    found = []
    forms = secret_forms(secret)
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        for form in forms:
            if form in data:
                found.append(form.decode(errors="replace"))
    return found


def journal_files(state_dir: Path) -> list[Path]:
    """Journal records and temporaries under a state dir (not locks, not the capability cache)."""
    return sorted(p for p in state_dir.glob("*/*") if p.name != "lock" and p.parent.name != "capabilities")


# -- the CLI ---------------------------------------------------------------------------------------
def hotluks_cmd(*args: str | Path) -> list[str]:
    """argv that runs this interpreter's hotluks CLI."""
    return [sys.executable, "-m", "hotluks", *map(str, args)]


def run_cli(*args: str | Path, timeout: float = 60.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``hotluks ARGS`` and capture its output."""
    return subprocess.run(hotluks_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


# -- fault injection ------------------------------------------------------------------------------
class FaultyBackend(MonitorBackend):
    """Wraps a real backend and fails chosen mutating commands with a :class:`QMPCommandError`.

    ``fail_at`` counts mutating commands (object-add/-del, blockdev-add/-del,
    device_add/-del) from 1; ``after=True`` sends the command to QEMU first and
    then reports the failure (a lost reply). ``fail_undo`` names undo commands
    (e.g. ``{"blockdev-del"}``) that fail whenever they are sent after a failure;
    ``on_fail(inner)`` runs just before the injected failure (e.g. another client acting).
    """

    def __init__(self, inner: MonitorBackend, *, fail_at: int | None = None, after: bool = False,
                 fail_undo: Iterable[str] = (), on_fail: Callable[[MonitorBackend], Awaitable[None]] | None = None):
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.vm = inner.vm
        self.master_key = inner.master_key
        self.passes_fds = inner.passes_fds
        self.stores_secrets = inner.stores_secrets
        self.fail_at = fail_at
        self.after = after
        self.fail_undo = frozenset(fail_undo)
        self.mutations: list[str] = []
        self.failed = False
        self.on_fail = on_fail

    @property
    def vm_key(self) -> str:
        return self.inner.vm_key

    def events(self, names: Iterable[str] = ()) -> Any:
        return self.inner.events(names)

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        if command not in MUTATING:
            return await self.inner.execute(command, arguments)
        self.mutations.append(command)
        if self.failed and command in self.fail_undo:
            raise QMPCommandError(command, "GenericError", f"injected undo failure of {command}")
        if len(self.mutations) == self.fail_at:
            self.failed = True
            if self.after:
                await self.inner.execute(command, arguments)
            if self.on_fail is not None:
                await self.on_fail(self.inner)
            raise QMPCommandError(command, "GenericError", f"injected failure of {command}")
        return await self.inner.execute(command, arguments)

    async def secret_value(self, ref: str) -> bytes | None:
        return await self.inner.secret_value(ref)

    async def identity(self) -> VMIdentity:
        return await self.inner.identity()

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        return await self.inner.execute_with_fds(command, arguments, fds)


# -- reading a libvirt domain through a backend ---------------------------------------------------
async def backend_snapshot(backend: Any) -> tuple[frozenset[str], ...]:
    """Block nodes, objects and peripheral devices of a VM, read through a hotluks backend."""
    nodes = await backend.execute("query-named-block-nodes", {"flat": True})
    objects = await backend.execute("qom-list", {"path": "/objects"})
    devices = await backend.execute("qom-list", {"path": "/machine/peripheral"})
    return (frozenset(n["node-name"] for n in nodes),
            frozenset(o["name"] for o in objects if o["type"].startswith("child<")),
            frozenset(d["name"] for d in devices if d["type"].startswith("child<")))


async def read_pattern_via_log(backend: Any, log: Path, node: str, pattern: int,
                               length: int = PATTERN_LEN, timeout: float = 30.0) -> str:
    """HMP ``qemu-io`` check of ``node`` under libvirt: the result lands in the domain's log.

    Returns ``"ok"`` or ``"mismatch"``; raises on a qemu-io error or no result in time.
    """
    import asyncio

    mark = log.stat().st_size
    returned = await backend.execute("human-monitor-command",
                                     {"command-line": f'qemu-io {node} "read -P {pattern:#x} 0 {length}"'})
    text = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(mark)
            text = str(returned) + f.read().decode(errors="replace")
        if "Pattern verification failed" in text:
            return "mismatch"
        if f"read {length}/{length} bytes" in text:
            return "ok"
        if "qemu-io:" in text:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"qemu-io on {node}: {text.strip()[-300:]}")
